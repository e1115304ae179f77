"""The box's fixed layout: its addresses, interface, namespace and nftables names, the
instance states it boots, the PATH its commands get, and where the running box records
itself. Shared by the other modules, so that no two can disagree."""

from __future__ import annotations

import ipaddress
from pathlib import Path

BRIDGE = "fdbox0"
# The bridge's own (locally administered) MAC address: fixed, so that it never changes.
BRIDGE_MAC = "02:fd:b0:00:00:01"
# The emulator's subnet (deploy/local/bootstrap.py), sized for 10,000 clusters.
GATEWAY = "10.0.64.1"
SUBNET = ipaddress.ip_network("10.0.64.0/18")
VPC_DEFAULT = ipaddress.ip_network("10.0.0.0/16")
IMDS_IP = "169.254.169.254"
NETNS_PREFIX = "fdb-"
VETH_PREFIX = "fdv-"
NFT_TABLE = "flightdeck_box"
POINTER = Path("/run/flightdeck-box")  # state dir and pid of the running box (one per machine)
LIVE_STATES = ("pending", "running")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def forget_running_box() -> None:
    """Removes the pointer files that name the running box (its state folder and pid)."""
    for name in ("state", "pid"):
        try:
            (POINTER / name).unlink()
        except FileNotFoundError:
            pass
