#!/usr/bin/env python3
"""Cluster in a box: the local AWS emulator's EC2 instances as booted Debian 12 hosts.

    box.py run --endpoint http://127.0.0.1:PORT --state DIR [--region eu-west-2] [--rootfs DIR]
    box.py hosts [--state DIR]
    box.py exec [--state DIR] INSTANCE_ID_OR_IP -- CMD...
    box.py cleanup [--state DIR]

`run` stays in the foreground until SIGTERM/SIGINT, then stops every host and removes all it
made (containers, network namespaces, veths, the bridge, routes, nftables tables, mounts).
Every EC2 instance of the emulator that is pending/running with a private IP in 10.0.64.0/18
becomes a systemd-nspawn container booted from tests/box/rootfs.sh's image, in its own
network namespace on the bridge fdbox0 (10.0.64.1/18). The box answers, as EC2 would:
DNS for *.amazonaws.com (10.0.64.1:53), TLS for the AWS endpoints (10.0.64.1:443, forwarded as
plain HTTP to the emulator), and the instance metadata service (169.254.169.254:80, IMDSv2).
Security groups are enforced with nftables in each host's namespace.

`hosts` prints the live hosts as JSON lines; `exec` runs a command inside one (nsenter into
the container's namespaces) and passes its output and exit status through; `cleanup` removes
what a killed `run` left behind. See tests/box/README.md.

The code is the package flightdeck_box/ next to this file, one module per concern.
"""

from __future__ import annotations

import sys

from flightdeck_box.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv, __doc__))
