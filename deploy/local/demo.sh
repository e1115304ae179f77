#!/usr/bin/env bash
# The main job, end to end, on the local AWS emulator: a user writes the example request
# with the aws CLI, flightdeck creates the cluster and writes back its login address, the
# user asks for deletion, flightdeck deletes it and says so.
#
# Run by `make demo` (which builds the controller and the venv first), from the repository
# root. Leaves the emulator running if it was running before.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VENV="${VENV:-.venv}"
BIN="${CARGO_TARGET_DIR:-target}/debug/flightdeck"
BUCKET=flightdeck-users
KEY=home/alice/demo
WAIT_SECONDS=60

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-2
unset AWS_PROFILE AWS_SESSION_TOKEN

[[ -x "$BIN" ]] || { echo "demo: no controller at $BIN; run 'make demo'" >&2; exit 1; }

was_running=no
deploy/local/emulator.sh status && was_running=yes
endpoint=$(deploy/local/emulator.sh start | tail -n 1)
export FLIGHTDECK_ENDPOINT_URL="$endpoint"
aws=("$VENV/bin/aws" --endpoint-url "$endpoint")

echo "== flightdeck doctor (the emulator cannot simulate IAM policies: --allow-unchecked)"
"$BIN" doctor --config deploy/local/flightdeck.toml --allow-unchecked | sed 's/^/   /'

mkdir -p .run
"$BIN" run --config deploy/local/flightdeck.toml >.run/demo-controller.log 2>&1 &
controller=$!

finish() {
    kill "$controller" 2>/dev/null && wait "$controller" 2>/dev/null
    if [[ $was_running == no ]]; then
        deploy/local/emulator.sh stop
    fi
}
trap finish EXIT

# Prints an object of the users' bucket, or fails when it is not there.
show() {
    "${aws[@]}" s3 cp "s3://$BUCKET/$1" - 2>/dev/null
}

# Waits until an object exists; on time-out shows the controller's log and fails.
wait_for() {
    local i
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        if "${aws[@]}" s3api head-object --bucket "$BUCKET" --key "$1" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    echo "demo: $1 did not appear within ${WAIT_SECONDS}s; controller log:" >&2
    tail -n 40 .run/demo-controller.log >&2
    return 1
}

echo "== alice asks for a cluster: aws s3 cp examples/cluster.cf-create s3://$BUCKET/$KEY.cf-create"
"${aws[@]}" s3 cp examples/cluster.cf-create "s3://$BUCKET/$KEY.cf-create" >/dev/null
wait_for "$KEY.cf-created"
ip=$(show "$KEY.cf-created" | head -n 1)
echo "== demo.cf-created is there; login IP: $ip"
show "$KEY.cf-created" | sed 's/^/   /'
echo "== demo.cf-status:"
show "$KEY.cf-status" | sed 's/^/   /'
echo "== the stack:"
# shellcheck disable=SC2016 # backquotes are JMESPath literals, not shell
"${aws[@]}" cloudformation describe-stacks --stack-name fd-alice-demo \
    --query 'Stacks[0].[StackName,StackStatus,Tags[?Key==`USER`].Value|[0]]' --output text | sed 's/^/   /'

echo "== alice asks for deletion: aws s3 cp - s3://$BUCKET/$KEY.cf-delete"
: | "${aws[@]}" s3 cp - "s3://$BUCKET/$KEY.cf-delete"
wait_for "$KEY.cf-deleted"
echo "== demo.cf-deleted is there:"
show "$KEY.cf-deleted" | sed 's/^/   /'
echo "== alice's folder now:"
"${aws[@]}" s3 ls "s3://$BUCKET/home/alice/" | sed 's/^/   /'
echo "== login IP was $ip; the cluster is deleted"
