#!/usr/bin/env bash
# The local AWS emulator for flightdeck's local mode and integration tests: moto_server with
# deploy/local/emulator_ext.py's additions (wait conditions, Secrets Manager secrets in stacks).
#
#   deploy/local/emulator.sh start       start it in the background (or reuse it), bootstrap it,
#                                        and print the endpoint URL as the last line
#   deploy/local/emulator.sh stop        stop it (nothing to do if it is not running)
#   deploy/local/emulator.sh status      exit 0 when it is up and answering
#   deploy/local/emulator.sh bootstrap   (re)create the demo buckets, network, parameters and
#                                        identity in the running emulator (or at
#                                        $FLIGHTDECK_ENDPOINT_URL if set)
#
# Environment:
#   VENV                       Python venv with deploy/local/requirements.txt (default .venv,
#                              relative to the repository root)
#   FLIGHTDECK_EMULATOR_PORT   port on 127.0.0.1 (default 5050)
#
# State: .run/emulator.pid, .run/emulator.endpoint and .run/emulator.log (rewritten at each start)
# in the repository; .run/ is git-ignored.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VENV="${VENV:-.venv}"
PORT="${FLIGHTDECK_EMULATOR_PORT:-5050}"
HOST=127.0.0.1
RUN_DIR=.run
PID_FILE="$RUN_DIR/emulator.pid"
ENDPOINT_FILE="$RUN_DIR/emulator.endpoint"
LOG_FILE="$RUN_DIR/emulator.log"
START_TIMEOUT=20

die() {
    echo "emulator: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|status|bootstrap" >&2
    exit 2
}

# True when the endpoint answers the moto API.
answers() {
    curl --silent --fail --max-time 2 --output /dev/null "$1/moto-api/"
}

# True while the process runs (a zombie, exited but not yet reaped, counts as gone).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ "$state" != Z* ]]
}

# The pid in the pid file, if that process is alive and is the emulator (not a reused pid).
live_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid=$(<"$PID_FILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    [[ "$(ps -o args= -p "$pid" 2>/dev/null)" == *emulator_ext.py* ]] || return 1
    echo "$pid"
}

recorded_endpoint() {
    if [[ -f "$ENDPOINT_FILE" ]]; then
        cat "$ENDPOINT_FILE"
    else
        echo "http://$HOST:$PORT"
    fi
}

forget() {
    rm -f "$PID_FILE" "$ENDPOINT_FILE"
}

bootstrap() {
    local endpoint=$1
    [[ -x "$VENV/bin/python" ]] || die "no Python in $VENV (set VENV, or create it with deploy/local/requirements.txt)"
    "$VENV/bin/python" deploy/local/bootstrap.py "$endpoint"
}

start() {
    local endpoint="http://$HOST:$PORT" pid waited=0

    if pid=$(live_pid); then
        local running
        running=$(recorded_endpoint)
        answers "$running" || die "pid $pid is alive but $running does not answer; see $LOG_FILE, or run '$0 stop'"
        [[ "$running" == "$endpoint" ]] || die "already running at $running (pid $pid); stop it first to use port $PORT"
        echo "emulator: already running at $endpoint (pid $pid)"
        bootstrap "$endpoint"
        echo "$endpoint"
        return
    fi
    forget

    [[ -x "$VENV/bin/python" ]] || die "no Python in $VENV (set VENV, or create it with deploy/local/requirements.txt)"
    command -v curl >/dev/null || die "curl is needed to check that the emulator answers"
    if answers "$endpoint"; then
        die "something not started by this script already answers at $endpoint; choose another FLIGHTDECK_EMULATOR_PORT"
    fi

    mkdir -p "$RUN_DIR"
    echo "emulator: starting moto (deploy/local/emulator_ext.py) on $endpoint (log: $LOG_FILE)"
    : >"$LOG_FILE"
    # No instance boots here to signal a wait condition: they complete at once. The local
    # test box (make cluster-test) starts its own emulator with real signals.
    FLIGHTDECK_EMULATOR_WAIT_CONDITIONS="${FLIGHTDECK_EMULATOR_WAIT_CONDITIONS:-complete}" \
        nohup "$VENV/bin/python" deploy/local/emulator_ext.py -H "$HOST" -p "$PORT" >>"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$endpoint" >"$ENDPOINT_FILE"

    until answers "$endpoint"; do
        if ! alive "$pid"; then
            forget
            tail -n 20 "$LOG_FILE" >&2 || true
            die "the emulator exited during start-up (last lines of $LOG_FILE above)"
        fi
        if ((waited >= START_TIMEOUT * 4)); then
            kill "$pid" 2>/dev/null || true
            forget
            tail -n 20 "$LOG_FILE" >&2 || true
            die "the emulator did not answer at $endpoint/moto-api/ within ${START_TIMEOUT}s (last lines of $LOG_FILE above)"
        fi
        sleep 0.25
        waited=$((waited + 1))
    done
    echo "emulator: up at $endpoint (pid $pid)"
    bootstrap "$endpoint"
    echo "$endpoint"
}

stop() {
    local pid i
    if ! pid=$(live_pid); then
        forget
        echo "emulator: not running"
        return
    fi
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        alive "$pid" || break
        sleep 0.25
    done
    if alive "$pid"; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    forget
    echo "emulator: stopped (pid $pid)"
}

status() {
    local pid endpoint
    endpoint=$(recorded_endpoint)
    if pid=$(live_pid); then
        if answers "$endpoint"; then
            echo "emulator: running at $endpoint (pid $pid)"
            return 0
        fi
        echo "emulator: pid $pid is alive but $endpoint does not answer"
        return 1
    fi
    echo "emulator: not running"
    return 1
}

[[ $# -eq 1 ]] || usage
case "$1" in
start) start ;;
stop) stop ;;
status) status ;;
bootstrap)
    target="${FLIGHTDECK_ENDPOINT_URL:-$(recorded_endpoint)}"
    answers "$target" || die "nothing answers at $target; use '$0 start' (it bootstraps too)"
    bootstrap "$target"
    ;;
*) usage ;;
esac
