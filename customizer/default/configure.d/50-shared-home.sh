#!/bin/bash
# The shared /home: the master exports it over NFS to the cluster's subnet;
# every compute node mounts it, so a job's files are in the user's home on
# the master. Idempotent.
#
# settings.env: HOME_EXPORT=nfs (default) runs the NFS server on the master
# and mounts it on compute nodes. HOME_EXPORT=provided is for platforms that
# already give every node the master's /home (the local test box, whose
# kernel has no NFS server): the same exports and fstab lines are written,
# the server is not started, and a compute node checks /home is mounted.
set -euo pipefail
# shellcheck source=customizer/default/configure.d/lib/node.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/node.sh"

mode=$(setting HOME_EXPORT nfs)
case "$mode" in
  nfs | provided) ;;
  *) die "HOME_EXPORT=$mode: must be nfs or provided" ;;
esac

exports=/etc/exports.d/flightdeck.exports
mount_line="$FLIGHTDECK_MASTER_ADDRESS:/home /home nfs4 rw,hard,_netdev,x-systemd.mount-timeout=300 0 0"

case "${FLIGHTDECK_ROLE:-}" in
  master)
    mac=$(imds mac) || die "no MAC address from the instance metadata"
    cidr=$(imds "network/interfaces/macs/$mac/subnet-ipv4-cidr-block") ||
      die "no subnet CIDR from the instance metadata"
    [[ $cidr =~ ^[0-9.]+/[0-9]+$ ]] || die "subnet CIDR '$cidr' is not an IPv4 CIDR"
    [ "$mode" = nfs ] && need_packages nfs-kernel-server
    install -d -m 0755 /etc/exports.d
    printf '/home %s(rw,sync,no_subtree_check,root_squash)\n' "$cidr" > "$exports"
    log "wrote $exports: /home to $cidr"
    if [ "$mode" = nfs ]; then
      systemctl enable nfs-server >/dev/null 2>&1
      systemctl restart nfs-server
      exportfs -ra
      log "NFS server exports /home"
    else
      log "HOME_EXPORT=provided: the platform shares /home; NFS server not started"
    fi
    ;;
  compute)
    [ "$mode" = nfs ] && need_packages nfs-common
    if ! grep -qF "$mount_line" /etc/fstab; then
      sed -i '\|[[:space:]]/home[[:space:]]|d' /etc/fstab
      echo "$mount_line" >> /etc/fstab
      log "added /home from $FLIGHTDECK_MASTER_ADDRESS to /etc/fstab"
    fi
    if mountpoint -q /home; then
      log "/home is mounted"
    elif [ "$mode" = provided ]; then
      die "HOME_EXPORT=provided but /home is not a mount point"
    else
      systemctl daemon-reload
      attempt=1
      until mount /home; do
        [ "$attempt" -ge 20 ] && die "cannot mount /home from $FLIGHTDECK_MASTER_ADDRESS"
        log "mounting /home failed (attempt $attempt), retrying"
        sleep 5
        attempt=$((attempt + 1))
      done
      log "mounted /home from $FLIGHTDECK_MASTER_ADDRESS"
    fi
    ;;
  *) die "unknown role '${FLIGHTDECK_ROLE:-}'" ;;
esac
