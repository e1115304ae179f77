#!/usr/bin/env bash
# Tests the container image (deploy/image/build.sh) against the local AWS emulator:
#
#   1. the image: non-root user, entrypoint and command, labels, the CA bundle, the
#      default template and policy inside; `--help` runs in it; the production
#      configuration (deploy/k8s/configmap.yaml) passes the controller's start-up checks;
#   2. the controller in it, as Kubernetes runs it (read-only root filesystem, no
#      capabilities, uid 65532), with deploy/local/flightdeck.toml, the template and the
#      policy mounted read-only: /healthz and /readyz answer, /metrics is Prometheus
#      text, POST /hints takes the token and refuses without it, and takes what the hint
#      forwarder (deploy/lambda/forward.py) sends;
#   3. a request with the aws CLI: examples/cluster.cf-create as home/alice/img.cf-create
#      gives img.cf-created with a login IP; then img.cf-delete gives img.cf-deleted;
#   4. SIGTERM (podman stop): the container exits 0 within 10 s.
#
#   deploy/image/test.sh
#
# Environment:
#   FLIGHTDECK_IMAGE   the image (default localhost/flightdeck:dev)
#   VENV               the venv with the emulator and the aws CLI (default .venv)
#
# The emulator is started with deploy/local/emulator.sh if it is not running, and stopped
# at the end only then. The container uses the host's network (to reach 127.0.0.1) and
# owner tag "image-test", so a controller of another instance on the same emulator keeps
# its stacks. Everything it made is removed at the end, on failure too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

IMAGE="${FLIGHTDECK_IMAGE:-localhost/flightdeck:dev}"
VENV="${VENV:-.venv}"
export VENV
AWS="$VENV/bin/aws"
BUCKET=flightdeck-users
KEY=home/alice/img
NAME="flightdeck-image-test-$$"
WORK=.run/image-test
READY_TIMEOUT=60
CLUSTER_TIMEOUT=90
STOP_LIMIT=10
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-2

passed=0
started_emulator=false
container_started=false
endpoint=""

say() {
    echo "image test: $*"
}

ok() {
    passed=$((passed + 1))
    echo "ok    $*"
}

fail() {
    echo "FAIL  $*" >&2
    if $container_started; then
        echo "--- container log (last 40 lines) ---" >&2
        podman logs --tail 40 "$NAME" >&2 || true
        echo "---" >&2
    fi
    echo "$passed passed, 1 failed"
    exit 1
}

s3() {
    "$AWS" --endpoint-url "$endpoint" s3 "$@"
}

remove_objects() {
    local suffix
    for suffix in cf-create cf-delete cf-created cf-deleted cf-failed cf-status; do
        s3 rm --quiet "s3://$BUCKET/$KEY.$suffix" >/dev/null 2>&1 || true
    done
}

cleanup() {
    if $container_started; then
        podman rm --force --time 2 "$NAME" >/dev/null 2>&1 || true
    fi
    if [[ -n "$endpoint" ]]; then
        remove_objects
    fi
    if $started_emulator; then
        deploy/local/emulator.sh stop >/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until s3://BUCKET/KEY.SUFFIX exists; prints its content.
wait_object() {
    local suffix=$1 timeout=$2 waited=0
    until s3 cp --quiet "s3://$BUCKET/$KEY.$suffix" - 2>/dev/null; do
        ((waited < timeout * 2)) || return 1
        if [[ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]]; then
            echo "the container stopped" >&2
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

# The HTTP status of a request to the controller (curl options after the path).
status_of() {
    local path=$1
    shift
    curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 "$@" \
        "http://127.0.0.1:$port$path" || true
}

command -v podman >/dev/null || fail "podman is not installed (deploy/image/setup.sh)"
command -v curl >/dev/null || fail "curl is not installed"
[[ -x "$AWS" ]] || fail "no aws CLI in $VENV (make venv)"
podman image exists "$IMAGE" || fail "no image $IMAGE (deploy/image/build.sh)"
mkdir -p "$WORK"

# 1. The image.
config=$(podman image inspect --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}' "$IMAGE")
[[ "$config" == '65532:65532|["/flightdeck"]|["run","--config","/etc/flightdeck/flightdeck.toml"]' ]] ||
    fail "image config: user, entrypoint, command are $config"
ok "image runs /flightdeck run --config /etc/flightdeck/flightdeck.toml as 65532:65532"
for label in title description licenses source version revision created; do
    value=$(podman image inspect --format "{{index .Labels \"org.opencontainers.image.$label\"}}" "$IMAGE")
    [[ -n "$value" && "$value" != "<no value>" ]] || fail "label org.opencontainers.image.$label is missing"
done
ok "OCI labels (version $(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE"))"

podman create --name "$NAME-files" "$IMAGE" >/dev/null
files_ok=true
podman cp "$NAME-files:/usr/share/flightdeck/templates/cluster.yaml" "$WORK/cluster.yaml" &&
    podman cp "$NAME-files:/usr/share/flightdeck/policies/limits.toml" "$WORK/limits.toml" &&
    podman cp "$NAME-files:/etc/ssl/certs/ca-certificates.crt" "$WORK/ca.crt" || files_ok=false
podman rm "$NAME-files" >/dev/null
$files_ok || fail "the image lacks the template, the policy or the CA bundle"
cmp -s "$WORK/cluster.yaml" templates/cluster.yaml || fail "the image's template differs from templates/cluster.yaml (rebuild it)"
cmp -s "$WORK/limits.toml" policies/limits.toml || fail "the image's policy differs from policies/limits.toml (rebuild it)"
grep -q "BEGIN CERTIFICATE" "$WORK/ca.crt" || fail "the image's CA bundle holds no certificate"
ok "the image holds the CA bundle, templates/cluster.yaml and policies/limits.toml"

help=$(podman run --rm --init "$IMAGE" --help 2>&1) || fail "--help failed: $help"
[[ "$help" == *"Usage: flightdeck"* && "$help" == *run* ]] || fail "--help printed: $help"
ok "flightdeck --help runs in the image"

# 2. The controller against the emulator.
if deploy/local/emulator.sh status >/dev/null 2>&1; then
    say "reusing the running emulator"
else
    started_emulator=true
fi
endpoint=$(deploy/local/emulator.sh start | tail -n 1) || fail "the emulator did not start"
[[ "$endpoint" == http://* ]] || fail "the emulator printed no endpoint"
remove_objects

# The production configuration of deploy/k8s/configmap.yaml, with the image's own
# template and policy, is accepted by the controller (unknown keys are mistakes), pointed at the
# emulator: one plan pass.
"$VENV/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["flightdeck.toml"], end="")' \
    deploy/k8s/configmap.yaml >"$WORK/production.toml" || fail "cannot read deploy/k8s/configmap.yaml"
plan=$(podman run --rm --init --network host --read-only --cap-drop ALL \
    --volume "$ROOT/$WORK/production.toml:/etc/flightdeck/flightdeck.toml:ro" \
    --env FLIGHTDECK_ENDPOINT_URL="$endpoint" \
    --env FLIGHTDECK_HINT_TOKEN=0123456789abcdef0123 \
    --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY --env AWS_REGION=eu-west-2 \
    "$IMAGE" plan --config /etc/flightdeck/flightdeck.toml 2>&1) ||
    fail "the configuration of deploy/k8s/configmap.yaml was refused: $plan"
ok "deploy/k8s/configmap.yaml's configuration, the image's template and policy pass start-up (plan)"

port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')

# As deploy/k8s/deployment.yaml runs it: read-only root, no capabilities, no privilege
# escalation, the image's non-root user. --init forwards SIGTERM to the controller. The
# emulator is named "localhost" so that name lookup in the static binary is exercised.
container_started=true
podman run --detach --name "$NAME" --init --network host \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    --volume "$ROOT/deploy/local/flightdeck.toml:/etc/flightdeck/flightdeck.toml:ro" \
    --volume "$ROOT/templates/cluster.yaml:/etc/flightdeck-templates/cluster.yaml:ro" \
    --volume "$ROOT/policies/limits.toml:/etc/flightdeck-policies/limits.toml:ro" \
    --env FLIGHTDECK_ENDPOINT_URL="${endpoint/127.0.0.1/localhost}" \
    --env FLIGHTDECK_STACKS_TEMPLATE=/etc/flightdeck-templates/cluster.yaml \
    --env FLIGHTDECK_POLICY=/etc/flightdeck-policies/limits.toml \
    --env FLIGHTDECK_HTTP_LISTEN="127.0.0.1:$port" \
    --env FLIGHTDECK_HINT_TOKEN="$token" \
    --env FLIGHTDECK_INSTANCE=image-test \
    --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY --env AWS_REGION=eu-west-2 \
    --env RUST_LOG=info \
    "$IMAGE" >/dev/null || fail "podman run failed"
say "container $NAME started, HTTP on 127.0.0.1:$port"

for ((i = 0; i < READY_TIMEOUT * 2; i++)); do
    [[ "$(status_of /healthz)" == 200 ]] && break
    [[ "$(podman inspect --format '{{.State.Running}}' "$NAME")" == true ]] || fail "the container exited during start-up"
    sleep 0.5
done
[[ "$(curl --silent --max-time 5 "http://127.0.0.1:$port/healthz")" == ok ]] || fail "/healthz did not answer 200 \"ok\" within ${READY_TIMEOUT}s"
ok "/healthz answers 200 ok"
for ((i = 0; i < READY_TIMEOUT * 2; i++)); do
    [[ "$(status_of /readyz)" == 200 ]] && break
    sleep 0.5
done
[[ "$(status_of /readyz)" == 200 ]] || fail "/readyz did not answer 200 within ${READY_TIMEOUT}s"
ok "/readyz answers 200 after the first resync"
curl --silent --fail --max-time 5 "http://127.0.0.1:$port/metrics" >"$WORK/metrics" || fail "/metrics did not answer 200"
grep -q '^# TYPE ' "$WORK/metrics" || fail "/metrics is not Prometheus text"
ok "/metrics answers Prometheus text ($(grep -c '^# TYPE ' "$WORK/metrics") metrics)"

# 3. A cluster, created and deleted with the aws CLI.
s3 cp --quiet examples/cluster.cf-create "s3://$BUCKET/$KEY.cf-create" || fail "cannot write $KEY.cf-create"
hint=$(printf '{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"%s"},"object":{"key":"%s"}}}]}' \
    "$BUCKET" "$KEY.cf-create")
code=$(status_of /hints --request POST --data "$hint" --header 'Content-Type: application/json')
[[ "$code" == 401 ]] || fail "POST /hints without the token answered $code, not 401"
code=$(status_of /hints --request POST --data "$hint" --header 'Content-Type: application/json' \
    --header "Authorization: Bearer $token")
[[ "$code" == 202 ]] || fail "POST /hints with the token answered $code, not 202"
ok "POST /hints: 401 without the token, 202 with it"
forwarded=$(FLIGHTDECK_HINTS_URL="http://127.0.0.1:$port/hints" FLIGHTDECK_HINT_TOKEN="$token" \
    python3 -c 'import json, sys; sys.path.insert(0, "deploy/lambda"); import forward
event = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-2",
    "eventName": "ObjectCreated:Put", "s3": {"s3SchemaVersion": "1.0",
    "bucket": {"name": sys.argv[1], "arn": "arn:aws:s3:::" + sys.argv[1]},
    "object": {"key": sys.argv[2], "size": 297}}}]}
print(json.dumps(forward.handler({"Records": [{"eventSource": "aws:sqs", "body": json.dumps(event)}]}, None)))' \
    "$BUCKET" "$KEY.cf-create" 2>&1) || fail "the hint forwarder (deploy/lambda/forward.py) failed: $forwarded"
[[ "$forwarded" == *'"status": 202'* ]] || fail "the hint forwarder got: $forwarded"
ok "the hint forwarder's POST (deploy/lambda/forward.py, SQS-wrapped event) is accepted: 202"

created=$(wait_object cf-created "$CLUSTER_TIMEOUT") || fail "no $KEY.cf-created within ${CLUSTER_TIMEOUT}s"
login_ip=$(head -n 1 <<<"$created")
[[ "$login_ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "$KEY.cf-created does not start with an IP address: $created"
ok "$KEY.cf-create -> $KEY.cf-created (login $login_ip)"

echo delete | s3 cp --quiet - "s3://$BUCKET/$KEY.cf-delete" || fail "cannot write $KEY.cf-delete"
wait_object cf-deleted "$CLUSTER_TIMEOUT" >/dev/null || fail "no $KEY.cf-deleted within ${CLUSTER_TIMEOUT}s"
ok "$KEY.cf-delete -> $KEY.cf-deleted"

# 4. SIGTERM.
start=$SECONDS
podman stop --time "$STOP_LIMIT" "$NAME" >/dev/null
elapsed=$((SECONDS - start))
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[[ "$code" == 0 ]] || fail "after SIGTERM the container exited with $code (after ${elapsed}s; $STOP_LIMIT s means it was killed)"
((elapsed < STOP_LIMIT)) || fail "the container took ${elapsed}s to stop"
ok "SIGTERM: exit 0 after ${elapsed}s"

echo "$passed passed, 0 failed"
