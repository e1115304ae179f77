#!/usr/bin/env bash
# The root filesystem of the "cluster in a box" hosts (see tests/box/README.md): Debian 12
# (bookworm) as a directory, used read-only as the lower layer of every host's overlay.
#
#   tests/box/rootfs.sh      build it, or reuse the one already built; prints its path as the
#                            last line of stdout (progress goes to stderr)
#
# Where: ${FLIGHTDECK_CACHE:-$HOME/.cache/flightdeck}/box/rootfs-<hash>/, <hash> over this
# script (which holds the package list and the box-only files) and the box CA certificate, so
# that a change to either builds a new one. The box CA (box/ca/ca.{crt,key}) is made once per
# cache directory; box.py signs its TLS certificate for the AWS endpoints with it.
#
# Needs root, and Debian's mirror (mmdebstrap downloads about 150 MB; ~2 min on 2 cores).
set -euo pipefail

MIRROR="${FLIGHTDECK_BOX_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
CACHE="${FLIGHTDECK_CACHE:-$HOME/.cache/flightdeck}/box"
CA_DIR="$CACHE/ca"
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

# What a flightdeck node needs (Slurm, munge, sshd, the NFS home, the aws CLI), plus the basics
# of a booting systemd host. python3-certifi: on EC2's Debian 12 AMI it comes in with cloud-init
# (python3-requests depends on it); Debian's copy points at the system store
# /etc/ssl/certs/ca-certificates.crt, so with it the aws CLI trusts the same CAs as curl does,
# the box CA included. Without it the aws CLI would use its own bundled cacert.pem.
PACKAGES=(
    systemd systemd-sysv dbus udev
    slurmctld slurmd slurm-client munge
    openssh-server openssh-client
    awscli python3-certifi
    nfs-kernel-server nfs-common
    curl ca-certificates sudo iproute2 procps python3 less jq
)

say() {
    echo "rootfs: $*" >&2
}

die() {
    say "$*"
    exit 1
}

need_tools() {
    local missing=() tool pkg
    # the build needs the first three; box.py needs the others
    for tool in mmdebstrap:mmdebstrap openssl:openssl systemd-nspawn:systemd-container \
        nft:nftables ssh-keygen:openssh-client nsenter:util-linux; do
        pkg=${tool#*:}
        command -v "${tool%%:*}" >/dev/null || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The box CA: made once per cache directory, kept for its lifetime (10 years).
ensure_ca() {
    mkdir -p "$CA_DIR"
    chmod 700 "$CA_DIR"
    if [[ -s "$CA_DIR/ca.crt" && -s "$CA_DIR/ca.key" ]]; then
        return
    fi
    say "making the box CA in $CA_DIR"
    local tmp
    tmp=$(mktemp -d "$CA_DIR/.new.XXXXXX")
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout "$tmp/ca.key" -out "$tmp/ca.crt" \
        -subj "/O=flightdeck/CN=flightdeck cluster-in-a-box CA $(hostname) $(date -u +%Y%m%dT%H%M%SZ)" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 600 "$tmp/ca.key"
    mv "$tmp/ca.key" "$CA_DIR/ca.key"
    mv "$tmp/ca.crt" "$CA_DIR/ca.crt"
    rmdir "$tmp"
}

# Box-only additions, run by mmdebstrap as a customize hook (with /proc, /dev mounted).
# $1: the root directory being built. Nothing here changes what a node does on its own: the
# same bootstrap must run unchanged on EC2's Debian 12 AMI.
customize() {
    local root=$1

    # Trust of the box CA: the box's TLS proxy for *.amazonaws.com presents a certificate
    # signed by it (on EC2 the real endpoints' certificates chain to public CAs instead).
    install -D -m 644 "$CA_DIR/ca.crt" "$root/usr/local/share/ca-certificates/flightdeck-box-ca.crt"
    chroot "$root" update-ca-certificates >/dev/null

    # box-userdata: the stand-in for cloud-init's scripts-user module (the AMI runs the
    # instance's user-data once, at first boot, after the network is up, as root, output
    # appended to /var/log/cloud-init-output.log). The image has no cloud-init; this does
    # just that part. Like cloud-init it never retries: the done marker is written whatever
    # the script's exit status, which it records in /var/lib/box/userdata-exit.
    install -d -m 755 "$root/usr/local/lib/box"
    cat >"$root/usr/local/lib/box/userdata-run" <<'EOF'
#!/bin/sh
# Box stand-in for cloud-init's scripts-user: fetch the user-data from the instance metadata
# service (IMDSv2) and, if it is a script (starts with #!), run it once as root.
set -u
state=/var/lib/box
log=/var/log/cloud-init-output.log
scripts=/var/lib/cloud/instance/scripts
imds=http://169.254.169.254
mkdir -p "$state" "$scripts"
status=none
token=$(curl -sf --retry 30 --retry-delay 1 --retry-connrefused --max-time 5 -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "$imds/latest/api/token")
if [ -z "$token" ]; then
    status=imds-unreachable
else
    code=$(curl -s --retry 5 --retry-delay 1 --max-time 10 -o /var/lib/cloud/instance/user-data.txt \
        -w '%{http_code}' -H "X-aws-ec2-metadata-token: $token" "$imds/latest/user-data")
    if [ "$code" = 200 ] && [ "$(head -c 2 /var/lib/cloud/instance/user-data.txt)" = '#!' ]; then
        install -m 700 /var/lib/cloud/instance/user-data.txt "$scripts/part-001"
        date +%s.%N >"$state/userdata-started"
        echo "box-userdata: running the user-data at $(date -u +%FT%TZ)" >>"$log"
        "$scripts/part-001" >>"$log" 2>&1 </dev/null
        status=$?
        echo "box-userdata: the user-data exited with status $status at $(date -u +%FT%TZ)" >>"$log"
    elif [ "$code" != 200 ]; then
        status=none
    else
        status=not-a-script
    fi
fi
echo "$status" >"$state/userdata-exit"
touch "$state/userdata-done"
case $status in
    none | not-a-script) exit 0 ;;
    [0-9]*) exit "$status" ;;
    *) exit 1 ;;
esac
EOF
    chmod 755 "$root/usr/local/lib/box/userdata-run"
    cat >"$root/etc/systemd/system/box-userdata.service" <<'EOF'
# Box stand-in for cloud-init's cloud-final.service (scripts-user only); see
# tests/box/README.md. Same ordering and limits as cloud-final on Debian 12.
[Unit]
Description=Run the instance's user-data once (box stand-in for cloud-init scripts-user)
Wants=network-online.target
After=network-online.target
ConditionPathExists=!/var/lib/box/userdata-done

[Service]
Type=oneshot
ExecStart=/usr/local/lib/box/userdata-run
RemainAfterExit=yes
TimeoutSec=0
KillMode=process
TasksMax=infinity
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/box-userdata.service \
        "$root/etc/systemd/system/multi-user.target.wants/box-userdata.service"
}

build() {
    local target=$1 tmp started elapsed
    tmp="$target.tmp.$$"
    rm -rf "$tmp"
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "rm -rf '$tmp'" EXIT
    say "building $target (Debian $SUITE from $MIRROR)"
    started=$(date +%s)
    local include
    include=$(IFS=,; echo "${PACKAGES[*]}")
    mmdebstrap --quiet --variant=minbase --include="$include" \
        --customize-hook="'$SELF' --customize \"\$1\"" \
        "$SUITE" "$tmp" "$MIRROR" >&2
    mv -T "$tmp" "$target"
    trap - EXIT
    elapsed=$(($(date +%s) - started))
    say "built $target in ${elapsed} s ($(du -sh "$target" | cut -f1))"
}

# Other rootfs-* directories are stale: remove those no overlay mount is using.
prune() {
    local keep=$1 dir
    for dir in "$CACHE"/rootfs-*; do
        [[ -d "$dir" && "$dir" != "$keep" ]] || continue
        if grep -qF "$dir" /proc/mounts; then
            say "keeping $dir: in use by a running box"
            continue
        fi
        say "removing stale $dir"
        rm -rf "$dir"
    done
}

main() {
    if [[ ${1:-} == --customize ]]; then
        customize "$2"
        return
    fi
    [[ $# -eq 0 ]] || die "usage: $0"
    [[ $EUID -eq 0 ]] || die "must run as root (mmdebstrap, and the box, need it)"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.rootfs.lock"
    flock 9
    need_tools
    ensure_ca
    local hash target
    hash=$(cat "$SELF" "$CA_DIR/ca.crt" | sha256sum | cut -c1-16)
    target="$CACHE/rootfs-$hash"
    if [[ -f "$target/etc/os-release" ]]; then
        say "reusing $target"
    else
        build "$target"
    fi
    prune "$target"
    echo "$target"
}

main "$@"
