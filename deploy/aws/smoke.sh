#!/usr/bin/env bash
# Installs deploy/aws/flightdeck.yaml on the local emulator with the aws CLI, as an operator
# would on AWS, and checks what the emulator can show of the result. deploy/aws/README.md
# lists what the emulator does not create or does not keep, which is not checked here.
#
#   deploy/aws/smoke.sh
#
# Steps: start deploy/aws/smoke_emulator.py (moto with the project's additions) on a free
# port; create what a site already has (the users' bucket with a notification of its own,
# the customizer bucket, a VPC with three subnets, an image parameter) and a bucket with
# the functions' zip; create the stack with the aws CLI; run the bucket notification
# function on the request CloudFormation sends it (the emulator cannot run Lambda
# functions); wait for the stack with the aws CLI; check (deploy/aws/smoke_check.py).
#
# Environment:
#   VENV                    Python venv with deploy/local/requirements.txt (default .venv)
#   FLIGHTDECK_SMOKE_PORT   the emulator's port on 127.0.0.1 (default: a free one)
#   FLIGHTDECK_BIN          optional: a built flightdeck binary; then the controller also
#                           checks the task definition's environment as its configuration
#                           (`flightdeck plan --config /dev/null` with those variables)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
AWS="$VENV/bin/aws"
STACK=flightdeck   # smoke_check.py expects this name
# us-east-1: moto takes a custom resource's response for a stack in its default region only.
REGION=us-east-1

die() {
    echo "aws smoke: $*" >&2
    exit 1
}

[[ -x "$PY" && -x "$AWS" ]] || die "no python or aws CLI in $VENV (make venv)"
command -v curl >/dev/null || die "curl is needed"

WORK=$(mktemp -d)
EMULATOR_PID=""
cleanup() {
    if [[ -n "$EMULATOR_PID" ]]; then
        kill "$EMULATOR_PID" 2>/dev/null || true
        wait "$EMULATOR_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT="${FLIGHTDECK_SMOKE_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
ENDPOINT="http://127.0.0.1:$PORT"
if curl --silent --max-time 2 --output /dev/null "$ENDPOINT/moto-api/"; then
    die "something already answers at $ENDPOINT; set FLIGHTDECK_SMOKE_PORT to a free port"
fi

# The aws CLI and boto3 talk to the emulator only, with throw-away credentials.
export AWS_ENDPOINT_URL="$ENDPOINT" AWS_DEFAULT_REGION="$REGION" AWS_REGION="$REGION"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_PROFILE AWS_SESSION_TOKEN

mkdir "$WORK/events"
echo "aws smoke: starting the emulator on $ENDPOINT"
FLIGHTDECK_EMULATOR_WAIT_CONDITIONS=complete FLIGHTDECK_SMOKE_EVENTS="$WORK/events" \
    FLIGHTDECK_SMOKE_ENDPOINT="$ENDPOINT" \
    "$PY" deploy/aws/smoke_emulator.py -H 127.0.0.1 -p "$PORT" >"$WORK/emulator.log" 2>&1 &
EMULATOR_PID=$!
for ((i = 0; i < 80; i++)); do
    curl --silent --max-time 2 --output /dev/null "$ENDPOINT/moto-api/" && break
    kill -0 "$EMULATOR_PID" 2>/dev/null || { cat "$WORK/emulator.log" >&2; die "the emulator exited"; }
    sleep 0.25
done
curl --silent --max-time 2 --output /dev/null "$ENDPOINT/moto-api/" || die "the emulator did not answer within 20 s"

aws() { "$AWS" --endpoint-url "$ENDPOINT" "$@"; }

# What a site already has, and the functions' zip (deploy/aws/smoke_check.py prepare).
"$PY" deploy/aws/smoke_check.py prepare "$WORK"

echo "aws smoke: aws cloudformation create-stack --stack-name $STACK"
aws cloudformation create-stack --stack-name "$STACK" --template-body file://deploy/aws/flightdeck.yaml \
    --capabilities CAPABILITY_NAMED_IAM --parameters "file://$WORK/parameters.json" >/dev/null

# Lambda's part: run the custom resource's function on CloudFormation's request.
request="$WORK/events/BucketNotification-Create.json"
for ((i = 0; i < 40; i++)); do
    [[ -f "$request" ]] && break
    sleep 0.25
done
[[ -f "$request" ]] || { tail -n 20 "$WORK/emulator.log" >&2; die "CloudFormation never invoked the bucket notification function"; }
"$PY" -c '
import json, sys
sys.path.insert(0, "deploy/aws")
import bucket_notification
result = bucket_notification.handler(json.load(open(sys.argv[1])), None)
print("aws smoke: bucket notification function:", result["Status"], "-", result["Reason"])
' "$request"

echo "aws smoke: aws cloudformation wait stack-create-complete --stack-name $STACK"
if ! aws cloudformation wait stack-create-complete --stack-name "$STACK"; then
    tail -n 30 "$WORK/emulator.log" >&2
    die "the stack did not complete"
fi

status=0
"$PY" deploy/aws/smoke_check.py check "$WORK" || status=1

# The controller's own start-up checks, on the task definition's environment.
if [[ -n "${FLIGHTDECK_BIN:-}" && -f "$WORK/task-env.json" ]]; then
    mapfile -t task_env < <("$PY" -c 'import json, sys; [print(f"{k}={v}") for k, v in json.load(open(sys.argv[1])).items()]' "$WORK/task-env.json")
    # The image's template and policy exist only in the image: the repository's copies instead.
    if env -i PATH="$PATH" "${task_env[@]}" FLIGHTDECK_HINT_TOKEN="$(<"$WORK/token")" \
        AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing FLIGHTDECK_ENDPOINT_URL="$ENDPOINT" \
        FLIGHTDECK_REGION="$REGION" FLIGHTDECK_STACKS_TEMPLATE=templates/cluster.yaml \
        FLIGHTDECK_POLICY=policies/limits.toml \
        "$FLIGHTDECK_BIN" plan --config /dev/null >"$WORK/plan.log" 2>&1; then
        echo "ok    flightdeck plan --config /dev/null accepts the task's environment: $(tail -n 1 "$WORK/plan.log")"
    else
        echo "FAIL  flightdeck plan --config /dev/null with the task's environment:"
        sed 's/^/      /' "$WORK/plan.log" | tail -n 15
        status=1
    fi
elif [[ -z "${FLIGHTDECK_BIN:-}" ]]; then
    echo "skip  the controller's own check of the task's environment (set FLIGHTDECK_BIN to a built flightdeck)"
fi
((status == 0))
