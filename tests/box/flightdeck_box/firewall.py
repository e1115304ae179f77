"""The security groups, enforced with nftables: each host's input rules in its own network
namespace, rendered from its groups as the emulator reports them, and the bridge rules that
stop a host from sending with any address but its own (EC2's source/destination check)."""

from __future__ import annotations

import ipaddress

from .hosts import Host
from .layout import LIVE_STATES, NFT_TABLE, VETH_PREFIX
from .network import is_loopback
from .shell import log, nft


class Firewall:
    """Rules kept in step with the emulator; a part of `Box` (its hosts, bridge_rules)."""

    def apply_security_groups(self, instances: dict[str, dict], groups: dict[str, dict],
                              only: Host | None = None) -> None:
        members: dict[str, set[str]] = {}
        for inst in instances.values():
            if inst["State"]["Name"] in LIVE_STATES and inst.get("PrivateIpAddress"):
                for gid in group_ids(inst, groups):
                    members.setdefault(gid, set()).add(inst["PrivateIpAddress"])
        for host in [only] if only else list(self.hosts.values()):
            inst = instances.get(host.id)
            if inst is None:
                continue
            rules = render_sg(host, inst, groups, members)
            if rules != host.sg_rules:
                try:
                    nft(rules, host.netns)
                except RuntimeError as err:
                    log(f"{host.id}: nftables: {err}")
                    continue
                if host.sg_rules:
                    log(f"{host.id}: security group rules updated")
                host.sg_rules = rules

    def apply_bridge_rules(self) -> None:
        """No spoofing: a host's frames carry only its own addresses (EC2's source/dest check)."""
        lines = []
        for host in sorted(self.hosts.values(), key=lambda h: h.id):
            ips = ", ".join(sorted({host.ip, *([host.public_ip] if host.public_ip else [])}))
            lines.append(f'    iifname "{host.veth}" ether saddr {host.mac} ip saddr {{ {ips} }} accept')
            lines.append(f'    iifname "{host.veth}" ether saddr {host.mac} arp saddr ip {{ {ips} }} accept')
        rules = f"""
table bridge {NFT_TABLE}
delete table bridge {NFT_TABLE}
table bridge {NFT_TABLE} {{
  chain guard {{
{chr(10).join(lines)}
    iifname "{VETH_PREFIX}*" drop
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    jump guard
  }}
  chain input {{
    type filter hook input priority -10; policy accept;
    jump guard
  }}
}}
"""
        if rules != self.bridge_rules:
            nft(rules)
            self.bridge_rules = rules


def group_ids(inst: dict, groups: dict[str, dict]) -> list[str]:
    """The instance's security groups; none given means its VPC's default group, as on EC2."""
    ids = [g["GroupId"] for g in sg_of(inst)]
    if not ids:
        ids = [g["GroupId"] for g in groups.values()
               if g.get("GroupName") == "default" and g.get("VpcId") == inst.get("VpcId")][:1]
    return ids


def sg_of(inst: dict) -> list[dict]:
    groups = list(inst.get("SecurityGroups") or [])
    for eni in inst.get("NetworkInterfaces") or []:
        for g in eni.get("Groups") or []:
            if g["GroupId"] not in {x["GroupId"] for x in groups}:
                groups.append(g)
    return groups


def proto_match(perm: dict) -> str | None:
    """The nft match for a permission's protocol and ports ("" = anything); None = skip."""
    proto = str(perm.get("IpProtocol", "-1")).lower()
    lo, hi = perm.get("FromPort"), perm.get("ToPort")
    names = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}
    proto = names.get(proto, proto)
    if proto in ("-1", "all"):
        return ""
    if proto in ("tcp", "udp"):
        if lo is None or lo == -1 or (lo == 0 and hi == 65535):
            return f"meta l4proto {proto}"
        return f"{proto} dport {lo}" if lo == hi else f"{proto} dport {lo}-{hi}"
    if proto == "icmp":
        if lo is None or lo == -1:
            return "meta l4proto icmp"
        if hi is None or hi == -1:
            return f"icmp type {lo}"
        return f"icmp type {lo} icmp code {hi}"
    if proto == "icmpv6":
        return None  # no IPv6 in the box
    if proto.isdigit():
        return f"meta l4proto {proto}"
    return None


def render_sg(host: Host, inst: dict, groups: dict[str, dict], members: dict[str, set[str]]) -> str:
    """nftables input rules for a host from its security groups (ingress; stateful)."""
    lines = []
    for gid in group_ids(inst, groups):
        group = groups.get(gid)
        if group is None:
            lines.append(f"    # {gid}: not found in the emulator")
            continue
        lines.append(f"    # {group['GroupId']} ({group.get('GroupName', '')})")
        for perm in group.get("IpPermissions", []):
            match = proto_match(perm)
            if match is None:
                lines.append(f"    # skipped: protocol {perm.get('IpProtocol')}")
                continue
            sources = [r["CidrIp"] for r in perm.get("IpRanges", [])]
            for pair in perm.get("UserIdGroupPairs", []):
                sources += sorted(members.get(pair.get("GroupId", ""), ()))
            nets = []
            for s in sources:
                try:
                    net = ipaddress.ip_network(s, strict=False)
                except ValueError:
                    continue
                if net.version == 4:
                    nets.append(net)
            if not nets:
                continue
            saddr = ", ".join(str(n) for n in ipaddress.collapse_addresses(nets))
            lines.append(f"    ip saddr {{ {saddr} }} {match} accept".replace("  accept", " accept"))
    if host.public_ip and is_loopback(host.public_ip):
        guard = f'    iif != "lo" ip daddr 127.0.0.0/8 ip daddr != {host.public_ip} drop'
    else:
        guard = '    iif != "lo" ip daddr 127.0.0.0/8 drop'
    return f"""
table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
  chain input {{
    type filter hook input priority 0; policy drop;
    iif "lo" accept
{guard}
    ct state established,related accept
    ct state invalid drop
{chr(10).join(lines)}
  }}
}}
"""
