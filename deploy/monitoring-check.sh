#!/usr/bin/env bash
# Checks the monitoring against a live controller (or a metrics file):
#   (a) GET /metrics passes `promtool check metrics`;
#   (b) a real Prometheus on loopback scrapes it every second (job flightdeck) with the
#       alert rules of deploy/prometheus/alerts.yml loaded;
#   (c) every query of every panel of deploy/grafana/flightdeck.json is valid and returns
#       data, except the targets listed in MAY_BE_EMPTY below; every alert expression
#       evaluates without error (empty is fine: the alert is not firing);
#   (d) Prometheus (and the file server) are stopped and the temporary files removed on exit.
# One line per check: ok, empty-allowed or FAIL. Exit status 1 if anything failed.
#
# Usage:
#   deploy/monitoring-check.sh [--expect-per-user] HOST:PORT
#       the controller's /metrics listener ([http] metrics_listen, else listen), e.g.
#       127.0.0.1:18080
#   deploy/monitoring-check.sh [--expect-per-user] --metrics-file FILE
#       serve FILE as /metrics on loopback instead (e.g.
#       deploy/prometheus/testdata/healthy-small-run.prom)
# --expect-per-user: the controller runs with [metrics] per_user = true, so the per-user
#       panels must have data too.
#
# Needs curl, python3, and prometheus and promtool (Debian package prometheus).
# Environment: MONITORING_CHECK_SCRAPES (default 5) scrapes to wait for before querying.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dashboard=$here/grafana/flightdeck.json
rules=$here/prometheus/alerts.yml
job=flightdeck
scrapes=${MONITORING_CHECK_SCRAPES:-5}

# Panel targets that may return no data on a healthy small run, with the reason. A key is
# a panel title (all its targets) or "title/refId". Everything else must return data.
declare -A MAY_BE_EMPTY=(
  ["Failures/A"]="counts actions that failed or were refused: none on a healthy run"
  ["Failures/B"]="counts refused requests: a run may refuse none"
  ["AWS errors by operation"]="counts failed AWS calls: none on a healthy run"
  ["AWS throttling by operation"]="counts throttled AWS calls: none on a healthy run"
  ["Requests refused by reason"]="a run may refuse no request"
  ["Hints by outcome"]="hints are optional (the resync alone converges): a run may send none"
  ["Notifications"]="notify.enabled is false by default, and a run may reach no ready/failed/deleted event"
  ["Clusters by user"]="exported only with [metrics] per_user = true (--expect-per-user requires it)"
  ["Compute node ceiling by user"]="exported only with [metrics] per_user = true (--expect-per-user requires it)"
)

usage() {
  sed -n '/^# Usage:/,/^# Environment:/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

metrics_file=""
addr=""
expect_per_user=false
while (($#)); do
  case $1 in
    --expect-per-user) expect_per_user=true ;;
    --metrics-file)
      (($# >= 2)) || usage
      metrics_file=$2
      shift
      ;;
    -h | --help) usage ;;
    -*) usage ;;
    *)
      [[ -z $addr ]] || usage
      addr=$1
      ;;
  esac
  shift
done
if [[ -n $metrics_file && -n $addr ]] || [[ -z $metrics_file && -z $addr ]]; then
  usage
fi
if $expect_per_user; then
  unset 'MAY_BE_EMPTY[Clusters by user]' 'MAY_BE_EMPTY[Compute node ceiling by user]'
fi

for tool in curl python3 prometheus promtool; do
  if ! command -v "$tool" >/dev/null; then
    echo "monitoring-check: $tool not found (prometheus and promtool: apt-get install prometheus)" >&2
    exit 2
  fi
done
# The interpreter itself, not a version manager's shim: it runs once per query.
py=$(python3 -c 'import sys; print(sys.executable)')

tmp=$(mktemp -d "${TMPDIR:-/tmp}/flightdeck-monitoring.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failures=0
report() { # STATUS WHAT [DETAIL]
  printf '%-14s %s%s\n' "$1" "$2" "${3:+  ($3)}"
  if [[ $1 == FAIL ]]; then failures=$((failures + 1)); fi
}

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # SECONDS COMMAND...: retry COMMAND every 0.2 s until it succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# --- the metrics endpoint ------------------------------------------------------------
if [[ -n $metrics_file ]]; then
  [[ -r $metrics_file ]] || {
    echo "monitoring-check: cannot read $metrics_file" >&2
    exit 2
  }
  mkdir "$tmp/serve"
  cp "$metrics_file" "$tmp/serve/metrics"
  port=$(free_port)
  "$py" -m http.server --bind 127.0.0.1 --directory "$tmp/serve" "$port" >"$tmp/http.log" 2>&1 &
  pids+=($!)
  addr=127.0.0.1:$port
  wait_for 10 curl -fs -o /dev/null "http://$addr/metrics" || {
    cat "$tmp/http.log" >&2
    echo "monitoring-check: the file server did not start" >&2
    exit 1
  }
fi
echo "metrics: http://$addr/metrics"

# (a) promtool check metrics: any problem fails, whatever the exit status says.
if ! curl -fsS --max-time 10 "http://$addr/metrics" >"$tmp/metrics.txt"; then
  report FAIL "GET http://$addr/metrics"
  exit 1
fi
if lint=$(promtool check metrics <"$tmp/metrics.txt" 2>&1) && [[ -z $lint ]]; then
  report ok "promtool check metrics" "$(grep -cv '^#' "$tmp/metrics.txt") samples"
else
  report FAIL "promtool check metrics"
  printf '%s\n' "$lint" | sed 's/^/    /'
fi

# (b) a real Prometheus scraping it.
prom_port=$(free_port)
prom=http://127.0.0.1:$prom_port
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - "$rules"
scrape_configs:
  - job_name: $job
    static_configs:
      - targets: ["$addr"]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)

if ! wait_for 30 curl -fs -o /dev/null "$prom/-/ready"; then
  cat "$tmp/prometheus.log" >&2
  echo "monitoring-check: prometheus did not become ready" >&2
  exit 1
fi

# query EXPR: prints the /api/v1/query answer (JSON); never fails on a PromQL error
query() {
  curl -sS --max-time 10 -G --data-urlencode "query=$1" "$prom/api/v1/query"
}

# classify: reads a query answer, prints "ok N", "empty" or "error MESSAGE"
classify() {
  "$py" -c '
import json, sys
try:
    r = json.load(sys.stdin)
except ValueError as e:
    print("error not JSON:", e); sys.exit()
if r.get("status") != "success":
    print("error", r.get("errorType", ""), r.get("error", "")); sys.exit()
d = r["data"]
n = len(d["result"]) if d["resultType"] in ("vector", "matrix") else 1
print("ok", n) if n else print("empty")
'
}

scraped() {
  local got
  got=$(query "count_over_time(up{job=\"$job\"}[1m])" | "$py" -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(int(float(r[0]["value"][1])) if r else 0)')
  ((got >= scrapes))
}
if ! wait_for $((scrapes * 3 + 20)) scraped; then
  report FAIL "prometheus scraped $addr $scrapes times"
  exit 1
fi
target=$(curl -fsS "$prom/api/v1/targets" | "$py" -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"][0]
print(t["health"], t.get("lastError", ""))')
if [[ $target == up* ]]; then
  report ok "prometheus scraped $addr" "$scrapes+ scrapes, target up"
else
  report FAIL "prometheus scrape of $addr" "$target"
fi
# let the rule manager evaluate every rule at least once after the scrapes
sleep 2

# (c) every panel target of the dashboard: TITLE<TAB>REFID<TAB>EXPR, variables replaced.
# A problem found while reading the dashboard comes out as a target with refId "!".
extract_targets() {
  "$py" - "$dashboard" "$job" <<'PY'
import json, re, sys

dash = json.load(open(sys.argv[1]))
values = {
    # Grafana's built-in variables, as it would set them for a short range
    "__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
    "__range": "5m", "__range_s": "300", "__range_ms": "300000",
}
for v in dash.get("templating", {}).get("list", []):
    if v["type"] == "datasource":
        continue
    cur = v.get("current", {}).get("value", "")
    cur = cur if isinstance(cur, list) else [cur]
    if "$__all" in cur:
        values[v["name"]] = v.get("allValue") or ".*"
    else:
        values[v["name"]] = "|".join(cur)
values["job"] = sys.argv[2]  # the scrape job of this check, whatever the saved value

var = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
def substitute(expr):
    def one(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]
    return var.sub(one, expr)

def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))

for p in panels(dash.get("panels", [])):
    if p.get("type") == "row":
        continue
    title = p.get("title", "(no title)")
    for t in p.get("targets", []):
        ref = t.get("refId", "?")
        if t.get("datasource", {}).get("uid") != "${datasource}":
            print(f"{title}\t!\ttarget {ref} does not use the ${{datasource}} variable")
            continue
        try:
            expr = substitute(t["expr"])
        except KeyError as e:
            print(f"{title}\t!\ttarget {ref}: unknown variable ${e.args[0]}")
            continue
        print(f"{title}\t{ref}\t{' '.join(expr.split())}")
PY
}

declare -A matched=()
targets=0
while IFS=$'\t' read -r title ref expr; do
  if [[ $ref == "!" ]]; then
    report FAIL "panel \"$title\"" "$expr"
    continue
  fi
  targets=$((targets + 1))
  what="panel \"$title\" $ref"
  read -r status detail < <(query "$expr" | classify)
  reason=""
  for key in "$title/$ref" "$title"; do
    if [[ -n ${MAY_BE_EMPTY[$key]+set} ]]; then
      reason=${MAY_BE_EMPTY[$key]}
      matched[$key]=1
      break
    fi
  done
  case $status in
    ok) report ok "$what" "$detail series" ;;
    empty)
      if [[ -n $reason ]]; then
        report empty-allowed "$what" "$reason"
      else
        report FAIL "$what" "no data: $expr"
      fi
      ;;
    *) report FAIL "$what" "$detail: $expr" ;;
  esac
done < <(extract_targets)

((targets > 0)) || report FAIL "dashboard targets" "none found in $dashboard"
for key in "${!MAY_BE_EMPTY[@]}"; do
  [[ -n ${matched[$key]+set} ]] || report FAIL "MAY_BE_EMPTY entry \"$key\"" "matches no panel target"
done

# Every alert rule as Prometheus loaded it: NAME<TAB>HEALTH<TAB>STATE<TAB>LAST ERROR<TAB>EXPR
rules_loaded=0
while IFS=$'\t' read -r name health state last_error expr; do
  rules_loaded=$((rules_loaded + 1))
  what="alert $name"
  read -r status detail < <(query "$expr" | classify)
  if [[ $status != ok && $status != empty ]]; then
    report FAIL "$what" "$detail: $expr"
  elif [[ $health != ok ]]; then
    report FAIL "$what" "rule health $health: $last_error"
  elif [[ $status == empty ]]; then
    report ok "$what" "evaluates, not firing"
  else
    report ok "$what" "evaluates, $detail series, state $state"
  fi
done < <(curl -fsS "$prom/api/v1/rules?type=alert" | "$py" -c '
import json, sys
for g in json.load(sys.stdin)["data"]["groups"]:
    for r in g["rules"]:
        err = " ".join(r.get("lastError", "").split())
        print("\t".join([r["name"], r["health"], r["state"], err or "-", " ".join(r["query"].split())]))
')
((rules_loaded > 0)) || report FAIL "alert rules" "prometheus loaded none from $rules"

if ((failures)); then
  echo "monitoring-check: $failures FAILED"
  exit 1
fi
echo "monitoring-check: all passed ($targets panel targets, $rules_loaded alert rules)"
