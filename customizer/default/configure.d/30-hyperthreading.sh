#!/bin/bash
# Turn hyperthreading (SMT) off on compute nodes when settings.env in this
# configure.d folder says DISABLE_HYPERTHREADING=yes: many HPC codes run
# faster with one thread per physical core. Master nodes are left alone.
#
# Uses the kernel's SMT switch (/sys/devices/system/cpu/smt/control) where
# it works, otherwise takes every sibling thread but the first of each core
# offline. A small systemd unit repeats this at each boot. Idempotent.
set -euo pipefail

# shellcheck source=customizer/default/configure.d/lib/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/node.sh"
role=${FLIGHTDECK_ROLE:-unknown}

if [ "$role" != compute ]; then
  log "role is $role, not compute; leaving hyperthreading as it is"
  exit 0
fi
if [ "$(setting DISABLE_HYPERTHREADING no)" != yes ]; then
  log "DISABLE_HYPERTHREADING is not yes; leaving hyperthreading as it is"
  exit 0
fi

cpu_root=/sys/devices/system/cpu

# expand LIST: print the CPU numbers of a kernel list such as "0,36" or "0-1".
expand() {
  local part
  local -a parts
  IFS=, read -r -a parts <<< "$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      seq "${part%-*}" "${part#*-}"
    else
      echo "$part"
    fi
  done
}

offline_siblings() {
  local dir siblings first cpu changed=0
  for dir in "$cpu_root"/cpu[0-9]*; do
    [ -r "$dir/topology/thread_siblings_list" ] || continue
    siblings=$(expand "$(cat "$dir/topology/thread_siblings_list")")
    first=$(head -n 1 <<< "$siblings")
    for cpu in $siblings; do
      [ "$cpu" = "$first" ] && continue
      if [ -w "$cpu_root/cpu$cpu/online" ] && [ "$(cat "$cpu_root/cpu$cpu/online")" = 1 ]; then
        echo 0 > "$cpu_root/cpu$cpu/online"
        log "cpu$cpu taken offline (sibling of cpu$first)"
        changed=1
      fi
    done
  done
  if [ "$changed" -eq 0 ]; then
    log "no sibling threads online"
  fi
}

control="$cpu_root/smt/control"
state=$(cat "$control" 2>/dev/null || echo missing)
case "$state" in
  off | forceoff)
    log "SMT already off ($state)"
    ;;
  on)
    if echo off > "$control" 2>/dev/null; then
      log "SMT turned off through $control"
    else
      log "cannot write $control; taking sibling threads offline instead"
      offline_siblings
    fi
    ;;
  *)
    log "SMT control is '$state'; taking sibling threads offline instead"
    offline_siblings
    ;;
esac

if [ "${1:-}" = --boot ]; then
  exit 0
fi

# Repeat at every boot (the bootstrap itself runs on the first boot only).
install -d /usr/local/libexec/flightdeck
install -m 0755 "${BASH_SOURCE[0]}" /usr/local/libexec/flightdeck/hyperthreading.sh
if [ -r "$conf_dir/settings.env" ]; then
  install -m 0644 "$conf_dir/settings.env" /usr/local/libexec/flightdeck/settings.env
fi
unit=/etc/systemd/system/flightdeck-hyperthreading.service
cat > "$unit.new" <<UNIT
[Unit]
Description=flightdeck: turn hyperthreading off on compute nodes
After=local-fs.target

[Service]
Type=oneshot
Environment=FLIGHTDECK_ROLE=compute
Environment=FLIGHTDECK_CONFIGURE_DIR=/usr/local/libexec/flightdeck
ExecStart=/bin/bash /usr/local/libexec/flightdeck/hyperthreading.sh --boot

[Install]
WantedBy=multi-user.target
UNIT
if [ -f "$unit" ] && cmp -s "$unit.new" "$unit"; then
  rm -f "$unit.new"
else
  mv "$unit.new" "$unit"
  log "installed $unit"
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if systemctl enable flightdeck-hyperthreading.service >/dev/null 2>&1; then
    log "flightdeck-hyperthreading.service enabled for later boots"
  else
    log "could not enable $unit"
  fi
else
  log "systemd is not running; $unit installed but not enabled"
fi
