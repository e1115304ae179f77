#!/usr/bin/env bash
# Prepares a Debian machine (as root) to build and run flightdeck's container image:
# installs podman, buildah, runc and catatonit (podman's --init) when missing, and sets
# the container engine options this kind of machine needs in
# /etc/containers/containers.conf. Idempotent: a second run changes nothing.
#
#   deploy/image/setup.sh
#
# The settings (a VM or container host without systemd and with a low open-files limit):
#   [containers] default_ulimits   a bounded nofile and nproc for containers
#   [engine] runtime = "runc"      the runtime installed here
#   [engine] cgroup_manager        "cgroupfs": no systemd to manage cgroups
#   [engine] events_logger         "file": no journald
# An existing containers.conf that lacks them is not rewritten: the script says what to add.
set -euo pipefail

CONF=/etc/containers/containers.conf
PACKAGES=(podman buildah runc catatonit)

say() {
    echo "image setup: $*"
}

die() {
    echo "image setup: $*" >&2
    exit 1
}

installed() {
    dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "installing ${missing[*]} needs root"
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    say "packages already installed: ${PACKAGES[*]}"
fi

# The setting lines, each checked on its own (the order of keys in a table is free).
WANTED=(
    'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]'
    'runtime = "runc"'
    'cgroup_manager = "cgroupfs"'
    'events_logger = "file"'
)

has_all() {
    local line
    for line in "${WANTED[@]}"; do
        grep -qxF "$line" "$CONF" || return 1
    done
}

# True when the file holds nothing but comments and blank lines.
only_comments() {
    ! grep -qvE '^[[:space:]]*(#.*)?$' "$1"
}

write_conf() {
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF" <<'CONF'
# Written by flightdeck's deploy/image/setup.sh: container engine settings for a machine
# without systemd or journald and with a low open-files limit.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}

if [[ -f "$CONF" ]] && has_all; then
    say "$CONF already has the settings; left as it is"
elif [[ ! -f "$CONF" ]]; then
    write_conf
    say "wrote $CONF"
elif only_comments "$CONF"; then
    cp -p "$CONF" "$CONF.orig"
    write_conf
    say "wrote $CONF (it held only comments; kept as $CONF.orig)"
else
    {
        echo "image setup: $CONF has other settings, so it is left as it is; add these to it:"
        echo "  [containers]"
        echo "  ${WANTED[0]}"
        echo "  [engine]"
        printf '  %s\n' "${WANTED[@]:1}"
    } >&2
    exit 1
fi

podman --version
buildah --version
