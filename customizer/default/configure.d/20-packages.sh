#!/bin/bash
# Install the packages listed in "packages.txt" in this configure.d folder,
# if there is one, with dnf, yum or apt-get, whichever the node has.
#
# packages.txt: package names separated by spaces or newlines; "#" starts a
# comment. Names are checked before use.
#
# Idempotent: package managers leave installed packages alone. If installing
# everything at once fails, each package is tried on its own so one bad name
# does not stop the others; the script then exits non-zero naming them.
set -euo pipefail

me=${0##*/}
log() { echo "$me: $*"; }

conf_dir=${FLIGHTDECK_CONFIGURE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
list="$conf_dir/packages.txt"

if [ ! -f "$list" ]; then
  log "no packages.txt; nothing to install"
  exit 0
fi

packages=()
words=()
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  read -r -a words <<< "$line"
  for name in "${words[@]}"; do
    if [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._+:@-]*$ ]]; then
      packages+=("$name")
    else
      log "skipping '$name': not a package name"
    fi
  done
done < "$list"

if [ "${#packages[@]}" -eq 0 ]; then
  log "packages.txt lists no packages"
  exit 0
fi

if command -v dnf >/dev/null 2>&1; then
  install_cmd=(dnf install -y)
  prepare() { :; }
elif command -v yum >/dev/null 2>&1; then
  install_cmd=(yum install -y)
  prepare() { :; }
elif command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  install_cmd=(apt-get install -y --no-install-recommends)
  prepare() { apt-get update -q; }
else
  log "no dnf, yum or apt-get on this node"
  exit 1
fi

# retry COMMAND...: the network can be slow to settle at boot.
retry() {
  local attempt=1
  until "$@"; do
    if [ "$attempt" -ge 3 ]; then
      return 1
    fi
    log "'$*' failed (attempt $attempt), retrying"
    sleep $((attempt * 10))
    attempt=$((attempt + 1))
  done
}

log "installing ${#packages[@]} package(s) with ${install_cmd[0]}: ${packages[*]}"
retry prepare
if retry "${install_cmd[@]}" "${packages[@]}"; then
  log "packages installed"
  exit 0
fi

log "installing all at once failed; trying each package on its own"
failed=()
for name in "${packages[@]}"; do
  if "${install_cmd[@]}" "$name"; then
    log "installed $name"
  else
    failed+=("$name")
  fi
done
if [ "${#failed[@]}" -ne 0 ]; then
  log "could not install: ${failed[*]}"
  exit 1
fi
log "packages installed"
