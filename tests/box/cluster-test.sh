#!/usr/bin/env bash
# make cluster-test: the cluster template booted as a real Slurm cluster, in the box.
#
# The controller, the emulator (with real wait conditions) and the box run here; each EC2
# instance the emulator reports is booted as a Debian 12 host (tests/box/README.md), running
# its own UserData: the template's bootstrap and the customizer scripts, unchanged. Users act
# with the aws CLI and ssh, as they would on AWS. Scenarios:
#   job     alice's seed request (ComputeMaxNodes lowered to 2, idle time 30 s): ready means
#           ssh works; `sbatch -N2 --wrap 'srun hostname'` makes Slurm launch two instances;
#           the output lists two hosts; idle nodes are terminated and shown powered down;
#           .cf-delete leaves no stack and no instance.
#   iso     bob's cluster, up at the same time: neither reaches the other's slurmctld, NFS
#           or munge key.
#   fixed   AutoscalingPolicy disabled, ComputeInitialNodes 2: two nodes from boot, never a
#           third; deleted with its compute nodes running.
#   broken  dave's customizer folder has a script that exits 1: the stack fails, .cf-failed
#           names the script, no .cf-created, nothing left running; and bob asks for a fixed
#           cluster of no nodes, which fails saying why.
# Prints the figures it measured, and 'N passed, 0 failed' at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VENV="${VENV:-.venv}"
BIN="${CARGO_TARGET_DIR:-target}/debug/flightdeck"
STATE="$ROOT/.run/cluster-test"
PORT="${FLIGHTDECK_CLUSTER_TEST_PORT:-5090}"
ENDPOINT="http://127.0.0.1:$PORT"
BUCKET=flightdeck-users
CUSTOMIZER=flightdeck-customizer
CONFIG=deploy/local/flightdeck.toml

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=eu-west-2
unset AWS_PROFILE AWS_SESSION_TOKEN
aws=("$VENV/bin/aws" --endpoint-url "$ENDPOINT")

passed=0
failed=0
pids=()

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
figure() { printf 'figure: %s\n' "$*" | tee -a "$STATE/figures.txt"; }
ok() {
    passed=$((passed + 1))
    say "ok: $*"
}
diagnose() {
    say "--- controller log (last 30 lines)"
    tail -n 30 "$STATE/controller.log" 2>/dev/null || true
    say "--- box log (last 30 lines)"
    tail -n 30 "$STATE/box.log" 2>/dev/null || true
    local host
    for host in "$STATE"/box/hosts/*/; do
        [ -d "$host" ] || continue
        say "--- $host: user-data output (last 15 lines)"
        tail -n 15 "$host/root/var/log/cloud-init-output.log" 2>/dev/null || true
    done
}
fail() {
    failed=$((failed + 1))
    say "FAILED: $*" >&2
    diagnose >&2
    say "$passed passed, $failed failed"
    exit 1
}

finish() {
    local pid
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap finish EXIT

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 2 s.
wait_until() {
    local limit=$1 what=$2 start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - start < limit)) || fail "$what: not within ${limit}s"
        sleep 2
    done
}
exists() { "${aws[@]}" s3api head-object --bucket "$BUCKET" --key "$1" >/dev/null 2>&1; }
absent() { ! exists "$1"; }
show() { "${aws[@]}" s3 cp "s3://$BUCKET/$1" - 2>/dev/null; }

# instances STACK [ROLE]: ids of the stack's live instances (pending or running).
instances() {
    local filters=("Name=tag:flightdeck:stack,Values=$1" "Name=instance-state-name,Values=pending,running")
    [ -n "${2:-}" ] && filters+=("Name=tag:flightdeck:role,Values=$2")
    "${aws[@]}" ec2 describe-instances --filters "${filters[@]}" \
        --query 'Reservations[].Instances[].InstanceId' --output text | tr '\t' '\n' | grep -c '^i-' || true
}
count_is() { [ "$(instances "$1" "${3:-}")" = "$2" ]; }
stack_gone() {
    local status
    status=$("${aws[@]}" cloudformation describe-stacks --stack-name "$1" \
        --query 'Stacks[0].StackStatus' --output text 2>/dev/null) || return 0
    [ "$status" = DELETE_COMPLETE ]
}

# as USER IP COMMAND...: runs COMMAND over ssh as USER with their enrolled key (each word
# quoted, since ssh hands the remote shell one string).
as() {
    local user=$1 ip=$2
    shift 2
    ssh -i "$STATE/$user.key" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 "$user@$ip" \
        "$(printf '%q ' "$@")"
}
# nodes_are IP STATE N: sinfo (as alice, on the login node at IP) shows N nodes in STATE
# (Slurm's short state: "idle~" is powered down, "idle" is up and free).
nodes_are() {
    local states
    states=$(as alice "$1" sinfo -h -N -o '%t') || return 1
    [ "$(printf '%s\n' "$states" | grep -cxF "$2")" = "$3" ]
}
# job_done IP JOB: the job has left the queue.
job_done() {
    local queue
    queue=$(as alice "$1" squeue -h -j "$2" 2>&1) || grep -q 'Invalid job id' <<<"$queue" || return 1
    ! grep -q "$2" <<<"$queue"
}
no_hosts() { [ "$(tr -d ' \n' <"$STATE/box/hosts.json")" = "[]" ]; }

# on STACK COMMAND: runs COMMAND as root on the stack's master, inside the box.
on() {
    local id
    id=$("${aws[@]}" cloudformation describe-stacks --stack-name "$1" \
        --query "Stacks[0].Outputs[?OutputKey=='MasterInstanceId'].OutputValue" --output text)
    shift
    "$VENV/bin/python" tests/box/box.py exec --state "$STATE/box" "$id" -- "$@"
}

# request USER CLUSTER JSON: the user writes a request with the aws CLI.
request() {
    printf '%s\n' "$3" | "${aws[@]}" s3 cp - "s3://$BUCKET/home/$1/$2.cf-create" >/dev/null
}
seed_request() {
    # The seed's example request, with the given keys changed.
    "$VENV/bin/python" - "$@" <<'EOF'
import json, sys
request = json.load(open("examples/cluster.cf-create"))
for pair in sys.argv[1:]:
    key, value = pair.split("=", 1)
    request[key] = value
print(json.dumps(request))
EOF
}

# ---------------------------------------------------------------------------------------
step "set-up: root filesystem, emulator with real wait conditions, users, box, controller"
[[ -x "$BIN" ]] || fail "no controller at $BIN (run 'make cluster-test')"
rm -rf "$STATE"
mkdir -p "$STATE"
start=$SECONDS
tests/box/rootfs.sh
figure "root filesystem ready in $((SECONDS - start)) s (first run on a machine builds it)"

FLIGHTDECK_EMULATOR_WAIT_CONDITIONS=signal "$VENV/bin/python" deploy/local/emulator_ext.py \
    -H 127.0.0.1 -p "$PORT" >"$STATE/emulator.log" 2>&1 &
pids+=($!)
wait_until 30 "the emulator answers" curl -sf "$ENDPOINT/moto-api/"
"$VENV/bin/python" deploy/local/bootstrap.py "$ENDPOINT" >"$STATE/bootstrap.log"

# The box's one difference in the customisation: settings.env (see tests/box/README.md).
printf 'HOME_EXPORT=provided\nSLURM_PROCTRACK=proctrack/linuxproc\n' >"$STATE/settings.env"
"${aws[@]}" s3 cp "$STATE/settings.env" \
    "s3://$CUSTOMIZER/customizer/default/configure.d/settings.env" >/dev/null
for user in alice bob dave; do
    ssh-keygen -q -t ed25519 -N '' -C "$user@cluster-test" -f "$STATE/$user.key"
    FLIGHTDECK_ENDPOINT_URL="$ENDPOINT" "$BIN" enrol "$user" --ssh-key "$STATE/$user.key.pub" \
        --force --config "$CONFIG" >/dev/null
done
printf '#!/bin/bash\necho "this script fails on purpose"\nexit 1\n' >"$STATE/70-fail.sh"
"${aws[@]}" s3 cp "$STATE/70-fail.sh" "s3://$CUSTOMIZER/customizer/dave/configure.d/70-fail.sh" >/dev/null

# The policy, with the idle time bounded low enough for a test.
sed 's/^range = \[120, 86400\]/range = [20, 86400]/' policies/limits.toml >"$STATE/limits.toml"
grep -q 'range = \[20, 86400\]' "$STATE/limits.toml" || fail "could not lower ComputeIdleTime's bound"

"$VENV/bin/python" tests/box/box.py run --endpoint "$ENDPOINT" --state "$STATE/box" >"$STATE/box.log" 2>&1 &
pids+=($!)
wait_until 60 "the box is up" test -f "$STATE/box/hosts.json"

FLIGHTDECK_ENDPOINT_URL="$ENDPOINT" FLIGHTDECK_HTTP_LISTEN=127.0.0.1:$((PORT + 1)) \
    FLIGHTDECK_POLICY="$STATE/limits.toml" "$BIN" run --config "$CONFIG" >"$STATE/controller.log" 2>&1 &
pids+=($!)

# ---------------------------------------------------------------------------------------
step "job + iso: alice's seed request and bob's cluster, at once"
request alice job "$(seed_request ComputeMaxNodes=2 ComputeIdleTime=30)"
request bob iso "$(seed_request ComputeMaxNodes=1)"
t0=$SECONDS
wait_until 900 "home/alice/job.cf-created" exists home/alice/job.cf-created
figure "request -> .cf-created (alice/job, master booted and Slurm answering): $((SECONDS - t0)) s"
ip=$(show home/alice/job.cf-created | head -n 1)
login=$("${aws[@]}" cloudformation describe-stacks --stack-name fd-alice-job \
    --query "Stacks[0].Outputs[?OutputKey=='LoginIp'].OutputValue" --output text)
[ "$ip" = "$login" ] || fail ".cf-created holds '$ip', the stack's LoginIp is '$login'"
ok ".cf-created holds the master's login address $ip"

host=$(as alice "$ip" hostname) || fail "ssh alice@$ip with her enrolled key"
ok "ssh as alice with her enrolled key works (host $host)"
sinfo=$(as alice "$ip" sinfo -h -N -o '%N %t') || fail "sinfo as alice"
nodes_are "$ip" 'idle~' 2 || fail "expected 2 powered-down nodes, sinfo: $sinfo"
ok "sinfo shows 2 powered-down CLOUD nodes: $(echo "$sinfo" | tr '\n' ' ')"
count_is fd-alice-job 0 compute || fail "compute instances before any job"

t1=$SECONDS
job=$(as alice "$ip" sbatch --parsable -N2 -o 'job-%j.out' --wrap 'srun hostname') || fail "sbatch"
ok "sbatch -N2 --wrap 'srun hostname' accepted (job $job)"
wait_until 300 "two compute instances launched" count_is fd-alice-job 2 compute
figure "sbatch -> two compute instances launched by ResumeProgram: $((SECONDS - t1)) s"
wait_until 600 "job $job finished" job_done "$ip" "$job"
t_done=$SECONDS
figure "sbatch -> job $job done (two nodes booted, joined, ran srun): $((SECONDS - t1)) s"
out=$(as alice "$ip" cat "job-$job.out") || fail "job output in alice's home"
hosts=$(printf '%s\n' "$out" | sort -u | grep -c . || true)
[ "$hosts" = 2 ] || fail "job output should list 2 distinct hosts: $out"
ok "the job's output in alice's home on the master lists 2 distinct compute hosts: $(echo "$out" | tr '\n' ' ')"

# Spot: the seed asks ComputeSpotPrice 0.03; the compute nodes come from the launch template.
market=$("${aws[@]}" ec2 describe-launch-template-versions --launch-template-name fd-alice-job-compute \
    --versions "\$Latest" --query 'LaunchTemplateVersions[0].LaunchTemplateData.InstanceMarketOptions.[MarketType,SpotOptions.MaxPrice]' \
    --output text)
[ "$(echo "$market" | tr -s '\t ' ' ')" = "spot 0.03" ] || fail "launch template market options: $market"
template=$("${aws[@]}" ec2 describe-launch-templates --launch-template-names fd-alice-job-compute \
    --query 'LaunchTemplates[0].LaunchTemplateId' --output text)
launched=$("${aws[@]}" ec2 describe-instances --filters Name=tag:flightdeck:stack,Values=fd-alice-job \
    Name=tag:flightdeck:role,Values=compute \
    --query "Reservations[].Instances[].Tags[?Key=='aws:ec2launchtemplate:id'].Value[]" --output text)
[ "$(echo "$launched" | tr '\t' '\n' | sort -u)" = "$template" ] || fail "compute nodes not from $template: $launched"
lifecycle=$("${aws[@]}" ec2 describe-instances --filters Name=tag:flightdeck:stack,Values=fd-alice-job \
    Name=tag:flightdeck:role,Values=compute --query 'Reservations[].Instances[].InstanceLifecycle' --output text)
[ "$(echo "$lifecycle" | tr '\t' '\n' | sort -u)" = spot ] || fail "compute instances' lifecycle: $lifecycle"
ok "compute nodes are spot instances from $template, whose market options are spot at max price 0.03"

# Isolation from bob's cluster.
wait_until 600 "home/bob/iso.cf-created" exists home/bob/iso.cf-created
alice_master=$("${aws[@]}" cloudformation describe-stacks --stack-name fd-alice-job \
    --query "Stacks[0].Outputs[?OutputKey=='MasterPrivateIp'].OutputValue" --output text)
for port in 6817 2049; do
    if on fd-bob-iso timeout 3 bash -c "echo > /dev/tcp/$alice_master/$port" 2>/dev/null; then
        fail "bob's master reaches alice's master on port $port"
    fi
done
on fd-alice-job timeout 3 bash -c "echo > /dev/tcp/$alice_master/6817" ||
    fail "alice's own master does not reach its slurmctld (the check above proves nothing)"
ok "bob's master cannot reach alice's slurmctld (6817) or NFS (2049); alice's own node can"
k1=$(on fd-alice-job sha256sum /etc/munge/munge.key | cut -d' ' -f1)
k2=$(on fd-bob-iso sha256sum /etc/munge/munge.key | cut -d' ' -f1)
if [ -z "$k1" ] || [ "$k1" = "$k2" ]; then
    fail "munge keys: alice $k1, bob $k2"
fi
if as alice "$ip" cat /etc/munge/munge.key >/dev/null 2>&1; then
    fail "alice can read the munge key"
fi
cred=$(on fd-bob-iso munge -n)
if on fd-alice-job unmunge <<<"$cred" >/dev/null 2>&1; then
    fail "alice's master accepts a munge credential made on bob's cluster"
fi
ok "each cluster has its own munge key: bob's credentials are refused by alice's munged; users cannot read the key"
for stack in fd-alice-job fd-bob-iso; do
    role=$("${aws[@]}" cloudformation describe-stack-resource --stack-name "$stack" \
        --logical-resource-id ComputeRole --query StackResourceDetail.PhysicalResourceId --output text)
    secret=$("${aws[@]}" cloudformation describe-stack-resource --stack-name "$stack" \
        --logical-resource-id MungeKey --query StackResourceDetail.PhysicalResourceId --output text)
    allowed=$("${aws[@]}" iam get-role-policy --role-name "$role" --policy-name node-read \
        --query "PolicyDocument.Statement[?Sid=='ReadThisClustersMungeKey'].Resource" --output text)
    [ "$allowed" = "$secret" ] || fail "$stack: its roles may read '$allowed', its key is '$secret'"
done
ok "each cluster's node roles may read only that cluster's munge key secret"
master_id=$("${aws[@]}" cloudformation describe-stacks --stack-name fd-alice-job \
    --query "Stacks[0].Outputs[?OutputKey=='MasterInstanceId'].OutputValue" --output text)
userdata=$("${aws[@]}" ec2 describe-instance-attribute --instance-id "$master_id" \
    --attribute userData --query UserData.Value --output text | base64 -d)
grep -q FLIGHTDECK_MUNGE_SECRET <<<"$userdata" || fail "the master's UserData was not read"
if grep -qF "$(on fd-alice-job cat /etc/munge/munge.key)" <<<"$userdata"; then
    fail "the munge key is in the master's UserData"
fi
ok "the munge key is not in UserData"

# Idle nodes go away.
wait_until 300 "idle compute instances terminated" count_is fd-alice-job 0 compute
figure "job done -> both idle nodes terminated (ComputeIdleTime 30 s): $((SECONDS - t_done)) s"
# Slurm shows a node powering down ("idle%") for SuspendTimeout (120 s), then powered down.
wait_until 300 "nodes shown powered down" nodes_are "$ip" 'idle~' 2
figure "job done -> both nodes shown powered down in sinfo: $((SECONDS - t_done)) s"
ok "after the idle time both instances are terminated and sinfo shows both nodes powered down"

# An in-place update reaches Slurm: UpdateStack changes the sizing parameter, which the
# master reads every minute.
request alice job "$(seed_request ComputeMaxNodes=3 ComputeIdleTime=30)"
t4=$SECONDS
wait_until 240 "Slurm shows a third node after the update" nodes_are "$ip" 'idle~' 3
figure "ComputeMaxNodes 2 -> 3 in .cf-create -> Slurm defines 3 nodes: $((SECONDS - t4)) s"
ok "raising ComputeMaxNodes in the request updates the stack in place and Slurm defines 3 nodes"

# ---------------------------------------------------------------------------------------
step "fixed: AutoscalingPolicy disabled, ComputeInitialNodes 2"
request alice fixed "$(seed_request AutoscalingPolicy=disabled ComputeInitialNodes=2 ComputeMaxNodes=4)"
wait_until 900 "home/alice/fixed.cf-created" exists home/alice/fixed.cf-created
fixed_ip=$(show home/alice/fixed.cf-created | head -n 1)
wait_until 300 "two compute nodes from boot" count_is fd-alice-fixed 2 compute
wait_until 300 "two nodes idle in Slurm" nodes_are "$fixed_ip" idle 2
ok "two compute nodes run from boot and are idle in Slurm"
if as alice "$fixed_ip" sbatch -N3 --wrap true >/dev/null 2>&1; then
    fail "a 3-node job was accepted on a fixed 2-node cluster"
fi
[ "$(as alice "$fixed_ip" sinfo -h -N | wc -l)" = 2 ] || fail "Slurm defines more than 2 nodes"
sleep 20
count_is fd-alice-fixed 2 compute || fail "instance count changed on a fixed cluster"
ok "never a third: Slurm defines 2 nodes, refuses -N3, and the instance count stays 2"

# ---------------------------------------------------------------------------------------
step "broken: a customizer script that exits 1; a fixed cluster of no nodes"
request dave broken "$(seed_request ComputeMaxNodes=1)"
request bob empty "$(seed_request AutoscalingPolicy=disabled ComputeInitialNodes=0)"
wait_until 900 "home/dave/broken.cf-failed" exists home/dave/broken.cf-failed
reason=$(show home/dave/broken.cf-failed)
say "   .cf-failed: $reason"
grep -q '70-fail.sh (exit 1: this script fails on purpose)' <<<"$reason" ||
    fail ".cf-failed does not name 70-fail.sh and its last words"
absent home/dave/broken.cf-created || fail "a .cf-created was written for a failed cluster"
wait_until 120 "the failed stack's instances are gone" count_is fd-dave-broken 0
ok "the stack failed, .cf-failed names 70-fail.sh and its last output line, no .cf-created, no instance left"
# On AWS the template's rule refuses this at CreateStack; the emulator ignores rules, so
# the master's bootstrap says the same.
wait_until 300 "home/bob/empty.cf-failed" exists home/bob/empty.cf-failed
reason=$(show home/bob/empty.cf-failed)
grep -q 'set ComputeInitialNodes to at least 1' <<<"$reason" || fail "bob/empty: $reason"
absent home/bob/empty.cf-created || fail "a .cf-created was written for a cluster of no nodes"
ok "a fixed cluster of no nodes fails, and .cf-failed says to set ComputeInitialNodes to at least 1"

# ---------------------------------------------------------------------------------------
step "deletion: idle cluster, cluster with running compute nodes, the other user's cluster"
for pair in alice/job alice/fixed bob/iso; do
    : | "${aws[@]}" s3 cp - "s3://$BUCKET/home/$pair.cf-delete"
done
t3=$SECONDS
for pair in alice/job alice/fixed bob/iso; do
    wait_until 300 "home/$pair.cf-deleted" exists "home/$pair.cf-deleted"
done
figure ".cf-delete -> .cf-deleted for three clusters (one with 2 running compute nodes): $((SECONDS - t3)) s"
for stack in fd-alice-job fd-alice-fixed fd-bob-iso; do
    stack_gone "$stack" || fail "stack $stack still exists"
    count_is "$stack" 0 || fail "instances of $stack still running"
done
wait_until 60 "the box stopped every host" no_hosts
ok ".cf-deleted for all three; no stack and no instance left, including the fixed cluster's running nodes"

say ""
say "figures:"
sed 's/^figure: /  /' "$STATE/figures.txt"
say "$passed passed, $failed failed"
