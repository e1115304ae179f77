#!/bin/bash
# Slurm: slurmctld on the master, with elastic compute through Slurm's power
# saving (see slurm/configure); slurmd on each compute node, in configless
# mode (it fetches slurm.conf from slurmctld). Needs 40-munge.sh first.
# Idempotent.
#
# settings.env: SLURM_PROCTRACK=proctrack/cgroup (default) tracks and
# confines job processes with cgroups; proctrack/linuxproc does without, for
# hosts whose kernel refuses cgroups to Slurm (the local test box).
set -euo pipefail
# shellcheck source=customizer/default/configure.d/lib/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/node.sh"

case "${FLIGHTDECK_ROLE:-}" in
  master)
    need_packages slurmctld slurm-client
    install -d -m 0755 /opt/flightdeck/slurm
    for program in configure reap resume suspend; do
      install -m 0755 "$conf_dir/slurm/$program" "/opt/flightdeck/slurm/$program"
    done
    cat > /etc/systemd/system/flightdeck-slurm-sizing.service <<'EOF'
[Unit]
Description=flightdeck: apply the cluster's sizing to Slurm; end instances of powered-down nodes
After=slurmctld.service

[Service]
Type=oneshot
ExecStart=-/opt/flightdeck/slurm/configure
ExecStart=/opt/flightdeck/slurm/reap
EOF
    cat > /etc/systemd/system/flightdeck-slurm-sizing.timer <<'EOF'
[Unit]
Description=flightdeck: check the cluster's sizing every minute

[Timer]
OnBootSec=60
OnUnitActiveSec=60

[Install]
WantedBy=timers.target
EOF
    systemctl daemon-reload
    /opt/flightdeck/slurm/configure
    systemctl enable --now flightdeck-slurm-sizing.timer >/dev/null 2>&1
    log "slurmctld configured; sizing checked every minute"
    ;;
  compute)
    node=$(imds tags/instance/flightdeck:node) ||
      die "no flightdeck:node tag in the instance metadata: compute nodes are started by Slurm on the master"
    [[ $node =~ ^compute[0-9]+$ ]] || die "flightdeck:node tag '$node' is not a node name"
    need_packages slurmd slurm-client
    install -d -m 0755 /etc/systemd/system/slurmd.service.d
    # Configless: there is no local slurm.conf, which Debian's unit requires.
    printf '[Unit]\nConditionPathExists=\n' > /etc/systemd/system/slurmd.service.d/flightdeck.conf
    printf 'SLURMD_OPTIONS="-N %s --conf-server %s"\n' "$node" "$FLIGHTDECK_MASTER_ADDRESS" > /etc/default/slurmd
    install -d -o slurm -g slurm -m 0755 /var/log/slurm
    install -d -m 0755 /var/lib/slurm/slurmd
    systemctl daemon-reload
    systemctl enable slurmd >/dev/null 2>&1
    systemctl restart slurmd
    waited=0
    until systemctl is-active --quiet slurmd && scontrol ping >/dev/null 2>&1; do
      [ "$waited" -ge 60 ] && die "slurmd did not start; see /var/log/slurm/slurmd.log"
      sleep 1
      waited=$((waited + 1))
    done
    log "slurmd runs as $node"
    ;;
  *) die "unknown role '${FLIGHTDECK_ROLE:-}'" ;;
esac
