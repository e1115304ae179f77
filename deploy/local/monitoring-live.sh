#!/usr/bin/env bash
# The monitoring, checked live: the controller runs against the local emulator with a few
# clusters (ready, deleted, refused), then deploy/monitoring-check.sh scrapes it with a real
# Prometheus and runs every dashboard query and alert expression against what it recorded.
#
# Run by `make monitoring-live` from the repository root. Uses its own bucket, stack prefix
# and owner tag, so it leaves the demo's data alone; stops what it started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VENV="${VENV:-.venv}"
BIN="${CARGO_TARGET_DIR:-target}/debug/flightdeck"
RUN=".run/monitoring-$$"
BUCKET="flightdeck-monitoring-$$"
WAIT_SECONDS=90

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-2
unset AWS_PROFILE AWS_SESSION_TOKEN
[[ -x "$BIN" ]] || { echo "monitoring-live: no controller at $BIN; run 'make build'" >&2; exit 1; }
mkdir -p "$RUN"

was_running=no
deploy/local/emulator.sh status && was_running=yes
endpoint=$(deploy/local/emulator.sh start | tail -n 1)
aws=("$VENV/bin/aws" --endpoint-url "$endpoint")
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"${aws[@]}" s3 mb "s3://$BUCKET" >/dev/null
FLIGHTDECK_ENDPOINT_URL="$endpoint" \
FLIGHTDECK_BUCKET_NAME="$BUCKET" \
FLIGHTDECK_INSTANCE="monitoring-$$" \
FLIGHTDECK_STACKS_PREFIX="mon$$" \
FLIGHTDECK_HTTP_LISTEN="127.0.0.1:$port" \
FLIGHTDECK_HINT_TOKEN="monitoring-check-token-$$" \
FLIGHTDECK_RECONCILE_RESYNC_INTERVAL=1s \
FLIGHTDECK_RECONCILE_BUSY_INTERVAL=1s \
FLIGHTDECK_METRICS_PER_USER=true \
    "$BIN" run --config deploy/local/flightdeck.toml >"$RUN/controller.log" 2>&1 &
controller=$!

finish() {
    kill "$controller" 2>/dev/null && wait "$controller" 2>/dev/null
    "${aws[@]}" s3 rb --force "s3://$BUCKET" >/dev/null 2>&1 || true
    [[ $was_running == no ]] && deploy/local/emulator.sh stop >/dev/null
    rm -rf "$RUN"
}
trap finish EXIT

wait_for() {
    local i
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        "${aws[@]}" s3api head-object --bucket "$BUCKET" --key "home/$1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "monitoring-live: $1 did not appear; controller log:" >&2
    tail -n 40 "$RUN/controller.log" >&2
    return 1
}

put() {
    "${aws[@]}" s3 cp "$1" "s3://$BUCKET/home/$2" >/dev/null
}

put examples/cluster.cf-create alice/x.cf-create
put examples/cluster.cf-create alice/gone.cf-create
put examples/cluster.cf-create bob/y.cf-create
put examples/cluster.cf-create carol/z.cf-create   # not enrolled: refused
wait_for alice/x.cf-created
wait_for bob/y.cf-created
wait_for carol/z.cf-failed
wait_for alice/gone.cf-created
: | "${aws[@]}" s3 cp - "s3://$BUCKET/home/alice/gone.cf-delete"
wait_for alice/gone.cf-deleted
curl --silent --fail "http://127.0.0.1:$port/readyz" >/dev/null
echo "monitoring-live: controller on 127.0.0.1:$port with 2 ready, 1 deleted, 1 refused cluster"
deploy/monitoring-check.sh --expect-per-user "127.0.0.1:$port"
