"""The box's network in the root namespace: the bridge fdbox0 with the gateway and IMDS
addresses and the filter that keeps the hosts to DNS, TLS and IMDS; the routes to the hosts'
public IPs and the blackholes for every other public address; and `teardown_network`,
which removes all of it (also for `box.py cleanup`)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from .hosts import Host
from .layout import (BRIDGE, BRIDGE_MAC, GATEWAY, IMDS_IP, NETNS_PREFIX, NFT_TABLE, SUBNET,
                     VETH_PREFIX)
from .shell import is_mounted, log, nft, sh, sysctl, umount


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def route_table(ip: str) -> list[str]:
    # moto's Elastic IPs come from 127.0.0.0/8; such a /32 must go in table local to win over
    # the local 127.0.0.0/8 route (see route_localnet below).
    return ["table", "local"] if is_loopback(ip) else []


class NetworkPlumbing:
    """The bridge and the public-IP routes; a part of `Box` (its blackholes, bridge_rules)."""

    def setup_network(self) -> None:
        # A bridge without an address of its own takes the lowest of its ports' and changes it
        # as hosts come and go: the hosts' ARP entry for the gateway (DNS, IMDS) then points
        # nowhere for a while, and a credentials fetch on the master fails. So it gets one.
        sh("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
           "forward_delay", "0", "stp_state", "0")
        sh("ip", "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE)
        sh("ip", "addr", "add", f"{IMDS_IP}/32", "dev", BRIDGE)
        sysctl(f"net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")
        # moto's Elastic IPs are in 127.0.0.0/8: let them be routed on the bridge. The input
        # chain below keeps the hosts away from this machine's own loopback services.
        sysctl(f"net/ipv4/conf/{BRIDGE}/route_localnet", "1")
        sh("ip", "link", "set", BRIDGE, "up")
        # What the hosts may reach in this (the root) namespace: DNS, the TLS proxy, IMDS, and
        # replies to connections made from here. Nothing is routed to or from the bridge:
        # hosts never reach past this machine, even if ip_forward is on. (Host-to-host frames
        # are bridged; with br_netfilter they also pass the forward hook, in and out fdbox0.)
        nft(f"""
table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname != "{BRIDGE}" accept
    ct state established,related accept
    ip daddr {GATEWAY} udp dport 53 accept
    ip daddr {GATEWAY} tcp dport 443 accept
    ip daddr {IMDS_IP} tcp dport 80 accept
    ip daddr {GATEWAY} icmp type echo-request accept
    drop
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname "{BRIDGE}" oifname != "{BRIDGE}" drop
    oifname "{BRIDGE}" iifname != "{BRIDGE}" drop
  }}
}}
""")
        self.bridge_rules = ""
        self.apply_bridge_rules()

    def set_public_ip(self, host: Host, pub: str | None, announce: bool = True) -> None:
        old = host.public_ip
        if old == pub:
            return
        if old:
            sh("ip", "-n", host.netns, "addr", "del", f"{old}/32", "dev", "eth0", check=False)
            self.blackhole(old)
        if pub:
            if is_loopback(pub):
                sh("nsenter", f"--net=/run/netns/{host.netns}", "sysctl", "-q", "-w",
                   "net.ipv4.conf.eth0.route_localnet=1")
            sh("ip", "-n", host.netns, "addr", "add", f"{pub}/32", "dev", "eth0")
            sh("ip", "route", "replace", f"{pub}/32", "dev", BRIDGE, "src", GATEWAY,
               *route_table(pub))
            self.blackholes.discard(pub)
        host.public_ip = pub
        if announce:
            log(f"{host.id}: public IP {old or '-'} -> {pub or '-'}")

    def blackhole(self, ip: str) -> None:
        if is_loopback(ip):
            # in table local, "unreachable": the local 127.0.0.0/8 route must not catch it
            sh("ip", "route", "replace", "unreachable", f"{ip}/32", "table", "local")
        else:
            sh("ip", "route", "replace", "blackhole", f"{ip}/32")
        self.blackholes.add(ip)


def teardown_network(state: Path | None) -> None:
    """Remove everything the box makes in the root namespace (safe to run twice)."""
    for ns in sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []:
        if ns.startswith(NETNS_PREFIX):
            sh("ip", "netns", "del", ns, check=False)
    for link in sorted(os.listdir("/sys/class/net")):
        if link.startswith(VETH_PREFIX):
            sh("ip", "link", "del", link, check=False, quiet=True)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        sh("ip", "link", "del", BRIDGE, check=False)
    for table in ("main", "local"):
        out = sh("ip", "-4", "route", "show", "table", table, check=False, quiet=True)
        for line in out.splitlines():
            words = line.split()
            if len(words) < 2 or words[0] not in ("blackhole", "unreachable"):
                continue
            addr = words[1].removesuffix("/32")
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                continue  # not a single address: not the box's
            # the box only blackholes single addresses of moto's ranges (127/8, 54.214/16)
            if ip.is_loopback or ip in ipaddress.ip_network("54.214.0.0/16"):
                sh("ip", "route", "del", words[0], f"{addr}/32", "table", table, check=False)
    for family in ("inet", "bridge"):
        sh("nft", "delete", "table", family, NFT_TABLE, check=False, quiet=True)
    # `ip netns add` bind-mounts /run/netns on itself; undo that once no namespace is left
    if os.path.isdir("/run/netns") and not os.listdir("/run/netns") and is_mounted(Path("/run/netns")):
        sh("umount", "/run/netns", check=False)
    if state:
        hosts = state / "hosts"
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in mounts:
            if m.startswith(str(hosts) + "/"):
                umount(Path(m))
