"""The DNS stand-in on 10.0.64.1:53: the AWS endpoint names point at the TLS proxy, and the
VPC's ip-A-B-C-D names (and their PTR records) at the hosts, as the Amazon resolver does.
A thread of its own; no upstream, so the hosts resolve nothing beyond the box."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading

from .hosts import ec2_hostname
from .layout import GATEWAY
from .shell import log


class Dns:
    """A tiny authoritative DNS server on 10.0.64.1:53 (UDP), with no upstream.

    *.amazonaws.com -> 10.0.64.1 (the TLS proxy); ip-A-B-C-D.<region>.compute.internal and
    ip-A-B-C-D.ec2.internal -> A.B.C.D inside the VPC, with the PTR records back, as the
    Amazon-provided VPC resolver does. Everything else: NXDOMAIN.
    """

    def __init__(self, region: str, vpc: ipaddress.IPv4Network):
        self.region = region
        self.vpc = vpc
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((GATEWAY, 53))
        self.thread = threading.Thread(target=self.serve, name="dns", daemon=True)
        self.running = True

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        self.sock.close()

    def serve(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self.answer(data)
            except Exception as err:  # a malformed query: no answer, as a real server may
                log(f"dns: bad query from {addr[0]}: {err}")
                continue
            if reply:
                try:
                    self.sock.sendto(reply, addr)
                except OSError:
                    pass

    def resolve(self, name: str) -> tuple[int, str | None]:
        """(rcode, A address or None for "exists, but no address")."""
        name = name.lower().rstrip(".")
        if name == "amazonaws.com" or name.endswith(".amazonaws.com"):
            return 0, GATEWAY
        first, _, rest = name.partition(".")
        if rest in (f"{self.region}.compute.internal", "ec2.internal") and first.startswith("ip-"):
            try:
                ip = ipaddress.ip_address(first[3:].replace("-", "."))
            except ValueError:
                return 3, None
            if ip in self.vpc:
                return 0, str(ip)
        return 3, None

    def ptr(self, name: str) -> str | None:
        labels = name.lower().rstrip(".").split(".")
        if len(labels) != 6 or labels[4:] != ["in-addr", "arpa"]:
            return None
        try:
            ip = ipaddress.ip_address(".".join(reversed(labels[:4])))
        except ValueError:
            return None
        if ip in self.vpc:
            return f"{ec2_hostname(str(ip))}.{self.region}.compute.internal"
        return None

    @staticmethod
    def encode_name(name: str) -> bytes:
        out = b""
        for label in name.rstrip(".").split("."):
            out += bytes([len(label)]) + label.encode()
        return out + b"\0"

    def answer(self, data: bytes) -> bytes | None:
        qid, flags, qdcount = struct.unpack(">HHH", data[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        pos, labels = 12, []
        while data[pos]:
            n = data[pos]
            labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        qtype, qclass = struct.unpack(">HH", data[pos + 1 : pos + 5])
        question = data[12 : pos + 5]
        name = ".".join(labels)
        answers = []
        rcode = 3
        if qtype == 12:  # PTR
            target = self.ptr(name)
            if target:
                rcode = 0
                rdata = self.encode_name(target)
                answers.append(struct.pack(">HHHIH", 0xC00C, 12, 1, 60, len(rdata)) + rdata)
        else:
            rcode, addr = self.resolve(name)
            if rcode == 0 and addr and qtype in (1, 255) and qclass == 1:
                rdata = socket.inet_aton(addr)
                answers.append(struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + rdata)
        rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR AA RD(copied) RA
        header = struct.pack(">HHHHHH", qid, rflags, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)
