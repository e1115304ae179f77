#!/usr/bin/env bash
# cargo-deny against deny.toml: bans (banned and duplicate crates), licenses and sources
# always; advisories (RustSec) against the local advisory database, never fetching it.
#
#   deploy/deny-check.sh                        what `make deny` runs
#   deploy/deny-check.sh --require-advisories   what `make deny-advisories` runs
#
# Without a current database (none fetched, or its newest advisory older than
# ADVISORY_DB_MAX_AGE_DAYS) the advisories are NOT checked: the plain run says so in a
# banner and still passes, --require-advisories fails. `make advisory-db` fetches the
# database; it needs to reach the RustSec git repository, which not every build host can.
#
# Environment:
#   CARGO_DENY                the cargo-deny binary (default $VENV/bin/cargo-deny)
#   VENV                      the Python venv holding it (default .venv)
#   CARGO_HOME                where cargo-deny keeps the database, in advisory-dbs/
#                             (default ~/.cargo)
#   ADVISORY_DB_MAX_AGE_DAYS  the oldest newest-advisory accepted (default 30)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

require=false
case "${1:-}" in
    "") ;;
    --require-advisories) require=true ;;
    *)
        echo "usage: $0 [--require-advisories]" >&2
        exit 2
        ;;
esac

VENV="${VENV:-.venv}"
CARGO_DENY="${CARGO_DENY:-$VENV/bin/cargo-deny}"
DB_ROOT="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
MAX_AGE_DAYS="${ADVISORY_DB_MAX_AGE_DAYS:-30}"

if [[ ! -x "$CARGO_DENY" ]]; then
    echo "deny-check: no cargo-deny at $CARGO_DENY (make venv installs it from deploy/local/requirements.txt)" >&2
    exit 2
fi

"$CARGO_DENY" --locked check bans licenses sources

# Why the advisories cannot be checked, or empty when they can.
db="" reason=""
shopt -s nullglob
for candidate in "$DB_ROOT"/advisory-db-*; do
    [[ -d "$candidate/.git" ]] && db="$candidate"
done
if [[ -z "$db" ]]; then
    reason="no RustSec advisory database in $DB_ROOT (make advisory-db fetches it)"
else
    newest=$(git -C "$db" log -1 --format=%ct 2>/dev/null || echo 0)
    age_days=$((($(date +%s) - newest) / 86400))
    if ((age_days > MAX_AGE_DAYS)); then
        reason="the advisory database in $db is $age_days days old (limit $MAX_AGE_DAYS; make advisory-db updates it)"
    fi
fi

if [[ -n "$reason" ]]; then
    if $require; then
        echo "deny-check: advisories cannot be checked: $reason" >&2
        exit 1
    fi
    {
        echo "################################################################################"
        echo "# ADVISORIES NOT CHECKED: $reason."
        echo "# Bans, licenses and sources passed; known vulnerabilities, unsound and"
        echo "# unmaintained crates and yanked versions were NOT looked for."
        echo "# make deny-advisories fails until a current database is there."
        echo "################################################################################"
    } >&2
    exit 0
fi

echo "advisories: RustSec database $(git -C "$db" log -1 --format='%h of %cs') ($age_days days old)"
"$CARGO_DENY" --locked --offline check advisories
