#!/usr/bin/env bash
# Lint every IAM policy document in policies/ with parliament.
# Fails (exit 1) when any finding is above LOW; LOW findings are printed and allowed
# (each one we keep is explained in policies/README.md).
#
# Usage, from the repository root:   policies/check.sh
# Environment: VENV   the Python venv holding parliament (default .venv)
set -euo pipefail

VENV="${VENV:-.venv}"
PARLIAMENT="$VENV/bin/parliament"
PYTHON="$VENV/bin/python"

if [[ ! -x "$PARLIAMENT" || ! -x "$PYTHON" ]]; then
    echo "check.sh: no parliament in $VENV (set VENV, or install deploy/local/requirements.txt into it)" >&2
    exit 2
fi

shopt -s nullglob
files=(policies/*.json)
if ((${#files[@]} == 0)); then
    echo "check.sh: no policies/*.json here; run it from the repository root" >&2
    exit 2
fi

# Reads one policy file; prints the document parliament should see.
# A role trust policy (every statement has a Principal, none has a Resource) may not carry a
# Resource element in IAM, while parliament only understands identity policies and reports the
# missing Resource as MALFORMED. Such a file is analysed with "Resource" set to the role it is
# attached to (any role), so every other check (actions, principals, conditions) still runs.
prepare='
import json, sys
try:
    with open(sys.argv[1], encoding="utf-8") as fh:
        doc = json.load(fh)
except (OSError, ValueError) as e:
    sys.exit(f"    {e}")
stmts = doc.get("Statement", [])
stmts = stmts if isinstance(stmts, list) else [stmts]
trust = bool(stmts) and all("Principal" in s and "Resource" not in s and "NotResource" not in s for s in stmts)
if trust:
    for s in stmts:
        s["Resource"] = "arn:aws:iam::*:role/*"
print("trust" if trust else "identity")
print(json.dumps(doc))
'

# Reads parliament --json output on stdin; prints one line per finding and, last, the verdict.
judge='
import json, sys
bad = low = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    f = json.loads(line)
    sev = f.get("severity", "?")
    if sev in ("LOW", "INFO"):
        low += 1
    else:
        bad += 1
    detail = f.get("detail", "")
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    if len(detail) > 240:
        detail = detail[:240] + f"... ({len(detail)} characters)"
    issue, title = f.get("issue"), f.get("title")
    print(f"    {sev} {issue}: {title} {detail}")
print(f"VERDICT {bad} {low}")
'

status=0
for f in "${files[@]}"; do
    if ! prepared=$("$PYTHON" -c "$prepare" "$f" 2>&1); then
        echo "$f: FAIL (not a JSON policy)"
        printf '%s\n' "$prepared"
        status=1
        continue
    fi
    kind=${prepared%%$'\n'*}
    document=${prepared#*$'\n'}

    rc=0
    output=$("$PARLIAMENT" --json --minimum_severity INFO <<<"$document") || rc=$?
    if ((rc != 0 && rc != 1)); then
        echo "$f: FAIL (parliament exited with $rc)"
        printf '%s\n' "$output" | sed 's/^/    /'
        status=1
        continue
    fi

    report=$(printf '%s\n' "$output" | "$PYTHON" -c "$judge")
    verdict=${report##*$'\n'}
    findings=${report%"$verdict"}
    read -r _ bad low <<<"$verdict"

    note=""
    [[ "$kind" == trust ]] && note=", trust policy"
    if ((bad > 0)); then
        echo "$f: FAIL ($bad above LOW, $low LOW or INFO$note)"
        status=1
    else
        echo "$f: ok ($low LOW or INFO$note)"
    fi
    [[ -n "$findings" ]] && printf '%s' "$findings"
done

if ((status == 0)); then
    echo "checked ${#files[@]} policies: nothing above LOW"
else
    echo "checked ${#files[@]} policies: findings above LOW (see above)"
fi
exit "$status"
