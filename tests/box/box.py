#!/usr/bin/env python3
"""Cluster in a box: the local AWS emulator's EC2 instances as booted Debian 12 hosts.

    box.py run --endpoint http://127.0.0.1:PORT --state DIR [--region eu-west-2] [--rootfs DIR]
    box.py hosts [--state DIR]
    box.py exec [--state DIR] INSTANCE_ID_OR_IP -- CMD...
    box.py cleanup [--state DIR]

`run` stays in the foreground until SIGTERM/SIGINT, then stops every host and removes all it
made (containers, network namespaces, veths, the bridge, routes, nftables tables, mounts).
Every EC2 instance of the emulator that is pending/running with a private IP in 10.0.1.0/24
becomes a systemd-nspawn container booted from tests/box/rootfs.sh's image, in its own
network namespace on the bridge fdbox0 (10.0.1.1/24). The box answers, as EC2 would:
DNS for *.amazonaws.com (10.0.1.1:53), TLS for the AWS endpoints (10.0.1.1:443, forwarded as
plain HTTP to the emulator), and the instance metadata service (169.254.169.254:80, IMDSv2).
Security groups are enforced with nftables in each host's namespace.

`hosts` prints the live hosts as JSON lines; `exec` runs a command inside one (nsenter into
the container's namespaces) and passes its output and exit status through; `cleanup` removes
what a killed `run` left behind. See tests/box/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import datetime as dt
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
BRIDGE = "fdbox0"
GATEWAY = "10.0.1.1"
SUBNET = ipaddress.ip_network("10.0.1.0/24")
VPC_DEFAULT = ipaddress.ip_network("10.0.0.0/16")
IMDS_IP = "169.254.169.254"
ACCOUNT = "123456789012"
NETNS_PREFIX = "fdb-"
VETH_PREFIX = "fdv-"
NFT_TABLE = "flightdeck_box"
POINTER = Path("/run/flightdeck-box")  # state dir and pid of the running box (one per machine)
LIVE_STATES = ("pending", "running")
STOP_GRACE = 10.0
POLL = 1.0
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"{stamp} box: {msg}", file=sys.stderr, flush=True)


def sh(*args: str, check: bool = True, quiet: bool = False, input: str | None = None) -> str:
    """Run a command; raise with its stderr when it fails (unless check=False)."""
    res = subprocess.run(args, capture_output=True, text=True, input=input)
    if res.returncode != 0:
        if check:
            raise RuntimeError(f"{' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
        if not quiet:
            log(f"(ignored) {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def nft(rules: str, netns: str | None = None) -> None:
    cmd = ["nft", "-f", "-"]
    if netns:
        cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
    sh(*cmd, input=rules)


def short(instance_id: str) -> str:
    return instance_id.removeprefix("i-")[-10:]


def ec2_hostname(ip: str) -> str:
    return "ip-" + ip.replace(".", "-")


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def route_table(ip: str) -> list[str]:
    # moto's Elastic IPs come from 127.0.0.0/8; such a /32 must go in table local to win over
    # the local 127.0.0.0/8 route (see route_localnet below).
    return ["table", "local"] if is_loopback(ip) else []


def tags_of(inst: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", []) or []}


def write(path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def atomic_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.rename(path)


CLONE_NEWTIME = 0x80


def set_pdeathsig() -> None:
    """In the child: get SIGTERM if box.py dies, so no container outlives a killed box."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_host_process() -> None:
    """In the child that becomes systemd-nspawn: SIGTERM if box.py dies, and a new time
    namespace whose boot time is now, for the container that nspawn starts in it.

    A host shares this machine's kernel, so without this its uptime would be the machine's,
    while an EC2 instance's starts at its launch. Slurm takes a powering-up node as booted
    only when the node's boot time is after the resume request (the cloud node's boot check).
    """
    set_pdeathsig()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.unshare(CLONE_NEWTIME) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWTIME)")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    # Written before any process is in the namespace; nspawn's children enter it.
    Path("/proc/self/timens_offsets").write_text(f"boottime {-int(uptime)} 0\n")


# --- DNS --------------------------------------------------------------------------------


class Dns:
    """A tiny authoritative DNS server on 10.0.1.1:53 (UDP), with no upstream.

    *.amazonaws.com -> 10.0.1.1 (the TLS proxy); ip-A-B-C-D.<region>.compute.internal and
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


# --- TLS proxy ----------------------------------------------------------------------------


class TlsProxy:
    """10.0.1.1:443: terminates TLS (certificate for the AWS endpoint names, signed by the box
    CA) and pipes the plain HTTP bytes, Host header untouched, to the emulator."""

    def __init__(self, cert: Path, key: Path, upstream: tuple[str, int]):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.serve, name="tls", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)
        if self.error:
            raise RuntimeError(f"TLS proxy: {self.error}")

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(lambda loop, ctx: None)  # TLS errors of clients: quiet
        try:
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self.handle, GATEWAY, 443, ssl=self.ctx, reuse_address=True)
            )
        except BaseException as err:
            self.error = err
            self.ready.set()
            return
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    async def handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as err:
            log(f"tls: emulator unreachable: {err}")
            writer.close()
            return

        async def pump(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                try:
                    if dst.can_write_eof():
                        dst.write_eof()
                    else:
                        dst.close()
                except (OSError, RuntimeError):
                    pass

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                try:
                    w.close()
                except Exception:
                    pass


def ensure_server_cert(ca_dir: Path, region: str) -> tuple[Path, Path]:
    """The certificate for the AWS endpoint names, signed by the box CA (made once a region)."""
    cert, key = ca_dir / f"endpoints-{region}.crt", ca_dir / f"endpoints-{region}.key"
    if cert.exists() and key.exists():
        res = subprocess.run(
            ["openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in", str(cert)],
            capture_output=True,
        )
        if res.returncode == 0:
            return cert, key
    names = [
        "*.amazonaws.com",
        f"*.{region}.amazonaws.com",
        f"*.s3.{region}.amazonaws.com",
        f"*.s3-{region}.amazonaws.com",
        "s3.amazonaws.com",
        "*.s3.amazonaws.com",
        f"*.{region}.compute.amazonaws.com",
    ]
    san = ",".join(f"DNS:{n}" for n in names)
    csr = ca_dir / f"endpoints-{region}.csr"
    ext = ca_dir / f"endpoints-{region}.ext"
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    sh("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
       "-out", str(csr), "-subj", f"/CN=*.{region}.amazonaws.com")
    sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"),
       "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-days", "825", "-sha256",
       "-extfile", str(ext), "-out", str(cert))
    key.chmod(0o600)
    csr.unlink()
    ext.unlink()
    return cert, key


# --- IMDS ---------------------------------------------------------------------------------


class Imds(http.server.ThreadingHTTPServer):
    """169.254.169.254:80, answering by the caller's source IP (= the instance's private IP).

    IMDSv2 only (HttpTokens=required): PUT /latest/api/token, then GETs with the token.
    """

    daemon_threads = True

    def __init__(self, box: "Box"):
        self.box = box
        self.tokens: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()
        super().__init__((IMDS_IP, 80), ImdsHandler)
        self.thread = threading.Thread(target=self.serve_forever, name="imds", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def new_token(self, ip: str, ttl: int) -> str:
        token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
        with self.lock:
            now = time.time()
            self.tokens = {t: v for t, v in self.tokens.items() if v[1] > now}
            self.tokens[token] = (ip, now + ttl)
        return token

    def token_ok(self, token: str | None, ip: str) -> bool:
        with self.lock:
            entry = self.tokens.get(token or "")
        return bool(entry and entry[0] == ip and entry[1] > time.time())


class ImdsHandler(http.server.BaseHTTPRequestHandler):
    server: Imds
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def reply(self, code: int, body: bytes | str = b"", ctype: str = "text/plain",
              headers: dict | None = None) -> None:
        if isinstance(body, str):
            body = body.encode()
        if code >= 400 and not body:
            reason = self.responses.get(code, ("",))[0]
            body = (f'<?xml version="1.0" encoding="iso-8859-1"?>\n<html><head><title>{code} - '
                    f"{reason}</title></head><body><h1>{code} - {reason}</h1></body></html>\n").encode()
            ctype = "text/html"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self) -> None:
        ip = self.client_address[0]
        if self.path.split("?")[0] != "/latest/api/token":
            return self.reply(404 if self.path.startswith("/latest/") else 403)
        if self.headers.get("X-Forwarded-For"):
            return self.reply(403)
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            return self.reply(400)
        if not 1 <= ttl <= 21600:
            return self.reply(400)
        if not self.server.box.instance_for_ip(ip):
            return self.reply(403)
        token = self.server.new_token(ip, ttl)
        self.reply(200, token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def do_GET(self) -> None:
        ip = self.client_address[0]
        if not self.server.token_ok(self.headers.get("X-aws-ec2-metadata-token"), ip):
            return self.reply(401)
        tree = self.server.box.metadata_tree(ip)
        if tree is None:
            return self.reply(404)
        path = self.path.split("?")[0]
        if path in ("/", ""):
            return self.reply(200, "latest")
        parts = [p for p in path.split("/") if p]
        if parts[0] != "latest":
            return self.reply(404)
        node = tree
        for part in parts[1:]:
            if not isinstance(node, dict) or part not in node:
                return self.reply(404)
            node = node[part]
        if isinstance(node, dict):
            listing = "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
            return self.reply(200, listing)
        if isinstance(node, bytes):
            return self.reply(200, node, "application/octet-stream")
        ctype = "application/json" if str(node).startswith("{") else "text/plain"
        self.reply(200, str(node), ctype)

    do_HEAD = do_GET


# --- hosts --------------------------------------------------------------------------------


class Host:
    def retag(self, inst: dict) -> bool:
        """Takes the instance's tags as they are now; whether they changed."""
        tags = tags_of(inst)
        seen = (tags.get("Name", ""), tags.get("flightdeck:role", ""), tags.get("flightdeck:stack", ""))
        changed = seen != (getattr(self, "name", None), getattr(self, "role", None),
                           getattr(self, "stack", None))
        self.name, self.role, self.stack = seen
        return changed

    def __init__(self, inst: dict, state: Path):
        self.id: str = inst["InstanceId"]
        self.ip: str = inst["PrivateIpAddress"]
        self.public_ip: str | None = None
        self.retag(inst)
        self.netns = NETNS_PREFIX + short(self.id)
        self.veth = VETH_PREFIX + short(self.id)
        self.dir = state / "hosts" / self.id
        self.root = self.dir / "root"
        self.hostname = ec2_hostname(self.ip)
        self.mac = ""
        self.proc: subprocess.Popen | None = None
        self.booted_since: float | None = None
        self.home_from: str | None = None
        self.user_data: bytes | None = None
        self.sg_rules = ""
        self.keygen: subprocess.Popen | None = None

    def describe(self) -> str:
        return (f"{self.id} ip={self.ip} public={self.public_ip or '-'} Name={self.name or '-'} "
                f"flightdeck:stack={self.stack or '-'} flightdeck:role={self.role or '-'}")

    def record(self, state: str = "running") -> dict:
        return {
            "id": self.id,
            "state": state,
            "ip": self.ip,
            "public_ip": self.public_ip,
            "hostname": self.hostname,
            "name": self.name,
            "role": self.role,
            "stack": self.stack,
            "booted_since": self.booted_since,
            "netns": self.netns,
            "pid": self.proc.pid if self.proc else None,
            "home_from": self.home_from,
            "dir": str(self.dir),
        }


def valid_mac(mac: str) -> bool:
    try:
        first = int(mac.split(":")[0], 16)
    except ValueError:
        return False
    return len(mac.split(":")) == 6 and not first & 1


class Box:
    def __init__(self, endpoint: str, state: Path, region: str, rootfs: Path, ca_dir: Path):
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.state = state
        self.region = region
        self.rootfs = rootfs
        self.ca_dir = ca_dir
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
        )
        conf = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5,
                      read_timeout=30)
        self.ec2 = session.client("ec2", endpoint_url=endpoint, config=conf)
        self.ec2_imds = session.client("ec2", endpoint_url=endpoint, config=conf)
        self.iam = session.client("iam", endpoint_url=endpoint, config=conf)
        self.hosts: dict[str, Host] = {}
        self.by_ip: dict[str, Host] = {}
        self.instances: dict[str, dict] = {}  # last DescribeInstances, by id
        self.exited: set[str] = set()  # instances whose container stopped on its own
        self.made_here: set[str] = set()  # host dirs made by this run (kept across stop/start)
        self.stopping: dict[str, threading.Thread] = {}
        self.stopping_hosts: dict[str, Host] = {}
        self.blackholes: set[str] = set()
        self.subnets: dict[str, dict] = {}
        self.vpcs: dict[str, dict] = {}
        self.roles: dict[str, tuple[float, str | None]] = {}
        self.bridge_rules = ""
        self.groups: dict[str, dict] = {}
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.servers: list = []
        self.last_hosts_json = None
        self.poll_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            log(f"{BRIDGE} exists: another box runs, or a killed one left it: "
                "stop it, or run `box.py cleanup`")
            return 1
        POINTER.mkdir(parents=True, exist_ok=True)
        (POINTER / "state").write_text(str(self.state))
        (POINTER / "pid").write_text(str(os.getpid()))
        (self.state / "hosts").mkdir(parents=True, exist_ok=True)
        try:
            self.setup_network()
            cert, key = ensure_server_cert(self.ca_dir, self.region)
            url = urllib.parse.urlsplit(self.endpoint)
            host, port = url.hostname or "127.0.0.1", url.port or 80
            dns = Dns(self.region, VPC_DEFAULT)
            self.servers.append(dns)
            dns.start()
            tls = TlsProxy(cert, key, (host, port))
            self.servers.append(tls)
            tls.start()
            imds = Imds(self)
            self.servers.append(imds)
            imds.start()
            self.write_hosts()
            log(f"up: bridge {BRIDGE} {GATEWAY}/24, DNS {GATEWAY}:53, TLS {GATEWAY}:443 -> "
                f"{self.endpoint}, IMDS {IMDS_IP}:80; rootfs {self.rootfs}; state {self.state}")
            self.watch()
        finally:
            self.shutdown()
        return 0

    def watch(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.reconcile()
                self.poll_error = None
            except Exception as err:
                text = f"{type(err).__name__}: {err}"
                if text != self.poll_error:  # once per distinct error, not every second
                    log(f"poll failed: {text}")
                self.poll_error = text
            self.stop_event.wait(max(0.2, POLL - (time.monotonic() - started)))

    def shutdown(self) -> None:
        log("shutting down")
        with self.lock:
            hosts = list(self.hosts.values())
            self.hosts.clear()
            self.by_ip.clear()
            self.stopping_hosts.update({h.id: h for h in hosts})
        self.write_hosts()
        threads = [threading.Thread(target=self.stop_host, args=(h, "box shutting down"))
                   for h in hosts]
        for t in threads:
            t.start()
        for t in threads + list(self.stopping.values()):
            t.join()
        for server in self.servers:
            try:
                server.stop()
            except Exception as err:
                log(f"stopping {type(server).__name__}: {err}")
        teardown_network(self.state)
        self.write_hosts()
        for name in ("state", "pid"):
            try:
                (POINTER / name).unlink()
            except FileNotFoundError:
                pass
        log("down: nothing left running")

    def setup_network(self) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
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

    # -- the emulator's view --------------------------------------------------------------

    def describe(self) -> tuple[dict[str, dict], dict[str, dict], list[dict]]:
        instances: dict[str, dict] = {}
        for page in self.ec2.get_paginator("describe_instances").paginate():
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    instances[inst["InstanceId"]] = inst
        groups: dict[str, dict] = {}
        for page in self.ec2.get_paginator("describe_security_groups").paginate():
            for g in page["SecurityGroups"]:
                groups[g["GroupId"]] = g
        addresses = self.ec2.describe_addresses()["Addresses"]
        return instances, groups, addresses

    def reconcile(self) -> None:
        instances, groups, addresses = self.describe()
        self.instances = instances
        self.groups = groups
        changed = False

        def live(inst: dict) -> bool:
            ip = inst.get("PrivateIpAddress")
            return (inst["State"]["Name"] in LIVE_STATES and bool(ip)
                    and ipaddress.ip_address(ip) in SUBNET)

        # stop hosts whose instance is gone, stopping, stopped or terminated
        for host in list(self.hosts.values()):
            inst = instances.get(host.id)
            why = None
            if inst is None:
                why = "instance gone"
            elif not live(inst):
                why = f"instance {inst['State']['Name']}"
            elif host.proc and host.proc.poll() is not None:
                why = f"container exited by itself (status {host.proc.returncode})"
                self.exited.add(host.id)
            if why:
                self.begin_stop(host, why)
                changed = True

        for hid in [h for h, t in self.stopping.items() if not t.is_alive()]:
            del self.stopping[hid]

        # boot hosts for new instances, masters first (their /home is bound into computes)
        new = [i for i in instances.values()
               if live(i) and i["InstanceId"] not in self.hosts
               and i["InstanceId"] not in self.exited and i["InstanceId"] not in self.stopping]
        new.sort(key=lambda i: (tags_of(i).get("flightdeck:role") != "master", i["InstanceId"]))
        prepared = []
        for inst in new:  # disks first, their ssh host keys made in parallel
            try:
                prepared.append((inst, self.prepare(inst)))
            except Exception as err:
                self.boot_failed(inst, err)
        for inst, host in prepared:
            if self.stop_event.is_set():
                if host.keygen:
                    host.keygen.wait()
                self.cleanup_failed(inst)
                continue
            try:
                self.launch(host, inst)
                changed = True
            except Exception as err:
                self.boot_failed(inst, err)

        # tags and public IPs that changed after boot: CloudFormation tags an instance
        # after launching it, and associates an Elastic IP later
        for host in list(self.hosts.values()):
            if host.retag(instances[host.id]):
                log(f"tags of {host.describe()}")
                changed = True
            pub = instances[host.id].get("PublicIpAddress")
            if pub != host.public_ip:
                self.set_public_ip(host, pub)
                changed = True

        # every other public address the emulator has handed out: blackholed, so that nothing
        # sent to it leaves this machine
        ours = {h.public_ip for h in self.hosts.values() if h.public_ip}
        wanted = {a["PublicIp"] for a in addresses if a.get("PublicIp")}
        wanted |= {i["PublicIpAddress"] for i in instances.values() if i.get("PublicIpAddress")}
        for ip in sorted(wanted - ours - self.blackholes):
            self.blackhole(ip)

        self.apply_security_groups(instances, groups)
        self.apply_bridge_rules()
        if changed:
            self.write_hosts()

    def instance_for_ip(self, ip: str) -> dict | None:
        host = self.by_ip.get(ip)
        return self.instances.get(host.id) if host else None

    # -- boot -----------------------------------------------------------------------------

    def boot_failed(self, inst: dict, err: Exception) -> None:
        log(f"boot of {inst['InstanceId']} failed: {err}")
        self.exited.add(inst["InstanceId"])  # do not retry every second
        self.cleanup_failed(inst)

    def prepare(self, inst: dict) -> Host:
        """The host's disk: an overlay on the shared image; starts making its ssh host keys."""
        host = Host(inst, self.state)
        if host.ip == GATEWAY:
            raise RuntimeError(f"{host.ip} is the box's gateway address")
        eni = (inst.get("NetworkInterfaces") or [{}])[0]
        host.mac = eni.get("MacAddress", "")
        if not valid_mac(host.mac):
            digest = uuid.uuid5(uuid.NAMESPACE_OID, host.id).bytes
            host.mac = "02:" + ":".join(f"{b:02x}" for b in digest[:5])
        ud = self.ec2.describe_instance_attribute(InstanceId=host.id, Attribute="userData")
        value = (ud.get("UserData") or {}).get("Value")
        host.user_data = base64.b64decode(value) if value else None

        # file system: overlay on the shared image, the host's own upper layer
        if host.dir.exists() and host.id not in self.made_here:
            shutil.rmtree(host.dir)  # left by an earlier box run: a new instance's disk is new
        fresh = not host.dir.exists()
        for sub in ("upper", "work", "root"):
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        self.made_here.add(host.id)
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={self.rootfs},upperdir={host.dir / 'upper'},workdir={host.dir / 'work'}",
           str(host.root))
        etc = host.root / "etc"
        fqdn = f"{host.hostname}.{self.region}.compute.internal"
        if fresh:
            write(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
            for key in etc.glob("ssh/ssh_host_*"):
                key.unlink()  # cloud-init makes each instance its own host keys
            host.keygen = subprocess.Popen(["ssh-keygen", "-A", "-f", str(host.root)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        write(etc / "hostname", host.hostname + "\n")
        write(etc / "hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{fqdn} {host.hostname}\n\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
              "ff02::2\tip6-allrouters\n")
        write(etc / "resolv.conf", f"domain {self.region}.compute.internal\n"
              f"search {self.region}.compute.internal\nnameserver {GATEWAY}\n")
        return host

    def launch(self, host: Host, inst: dict) -> None:
        """The host's network, firewall and container."""
        if host.keygen:
            _, err = host.keygen.communicate()
            if host.keygen.returncode != 0:
                raise RuntimeError(f"ssh-keygen: {err.decode(errors='replace').strip()}")
            host.keygen = None

        # network: own namespace, eth0 on the bridge with the instance's address and MAC
        ns = host.netns
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sysctl(f"net/ipv6/conf/{host.veth}/disable_ipv6", "1")
        sh("ip", "link", "set", host.veth, "master", BRIDGE, "up")
        in_ns = ["ip", "-n", ns]
        nsenter = ["nsenter", f"--net=/run/netns/{ns}"]
        sh(*nsenter, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.eth0.disable_ipv6=1")
        sh(*in_ns, "link", "set", "lo", "up")
        sh(*in_ns, "link", "set", "eth0", "address", host.mac)
        sh(*in_ns, "addr", "add", f"{host.ip}/{SUBNET.prefixlen}", "dev", "eth0")
        sh(*in_ns, "link", "set", "eth0", "up")
        sh(*in_ns, "route", "add", "default", "via", GATEWAY, "src", host.ip)
        with self.lock:
            self.hosts[host.id] = host
            self.by_ip[host.ip] = host
        self.set_public_ip(host, inst.get("PublicIpAddress"), announce=False)
        # security groups before the first packet can arrive
        self.apply_security_groups(self.instances, self.groups, only=host)
        self.apply_bridge_rules()

        # the NFS home stand-in: a compute node gets its cluster master's /home
        cmd = ["systemd-nspawn", "-q", "-D", str(host.root), "--boot", "--register=no",
               "--keep-unit", f"--network-namespace-path=/run/netns/{ns}",
               f"--machine={ns}", f"--hostname={host.hostname}", "--console=read-only",
               "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
        if host.role == "compute":
            master = next((h for h in self.hosts.values()
                           if h.role == "master" and h.stack == host.stack and h.stack), None)
            if master:
                host.home_from = master.id
                cmd.append(f"--bind={master.root / 'home'}:/home")
            else:
                log(f"{host.id}: no master host of stack {host.stack or '-'} is up: "
                    "booting without the shared /home")
        console = open(host.dir / "console.log", "ab")
        host.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=start_host_process,
            env={"PATH": PATH_ENV, "SYSTEMD_LOG_LEVEL": "warning"},
        )
        console.close()
        host.booted_since = time.time()
        log(f"boot {host.describe()}" + (f" home<-{host.home_from}" if host.home_from else ""))

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

    def cleanup_failed(self, inst: dict) -> None:
        host = self.hosts.pop(inst["InstanceId"], None) or Host(inst, self.state)
        self.by_ip.pop(host.ip, None)
        self.teardown_host(host)

    # -- stop -----------------------------------------------------------------------------

    def begin_stop(self, host: Host, why: str) -> None:
        with self.lock:
            self.hosts.pop(host.id, None)
            if self.by_ip.get(host.ip) is host:
                del self.by_ip[host.ip]
            self.stopping_hosts[host.id] = host
        t = threading.Thread(target=self.stop_host, args=(host, why), daemon=True)
        self.stopping[host.id] = t
        t.start()

    def stop_host(self, host: Host, why: str) -> None:
        started = time.monotonic()
        proc = host.proc
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn: orderly poweroff of the container
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log(f"{host.id}: not down after {STOP_GRACE:.0f} s: SIGKILL")
                proc.kill()
                proc.wait()
        self.teardown_host(host)
        log(f"stop {host.describe()} ({why}; {time.monotonic() - started:.1f} s)")
        with self.lock:
            self.stopping_hosts.pop(host.id, None)
        self.write_hosts()

    def teardown_host(self, host: Host) -> None:
        if host.public_ip:
            self.blackhole(host.public_ip)
        if Path(f"/run/netns/{host.netns}").exists():
            sh("ip", "netns", "del", host.netns, check=False)
        if Path(f"/sys/class/net/{host.veth}").exists():
            sh("ip", "link", "del", host.veth, check=False, quiet=True)
        umount(host.root)

    # -- security groups ------------------------------------------------------------------

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

    # -- IMDS data ------------------------------------------------------------------------

    def role_of(self, profile_arn: str) -> str | None:
        cached = self.roles.get(profile_arn)
        if cached and cached[0] > time.time():
            return cached[1]
        name = profile_arn.rsplit("/", 1)[-1]
        try:
            roles = self.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
            role = roles[0]["RoleName"] if roles else None
        except Exception as err:
            log(f"imds: instance profile {name}: {err}")
            role = None
        self.roles[profile_arn] = (time.time() + 30, role)
        return role

    def network_of(self, inst: dict) -> tuple[str, str, str]:
        subnet_id, vpc_id = inst.get("SubnetId", ""), inst.get("VpcId", "")
        if subnet_id and subnet_id not in self.subnets:
            try:
                self.subnets[subnet_id] = self.ec2_imds.describe_subnets(
                    SubnetIds=[subnet_id])["Subnets"][0]
            except Exception:
                pass
        if vpc_id and vpc_id not in self.vpcs:
            try:
                self.vpcs[vpc_id] = self.ec2_imds.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
            except Exception:
                pass
        subnet_cidr = self.subnets.get(subnet_id, {}).get("CidrBlock", str(SUBNET))
        vpc = self.vpcs.get(vpc_id, {})
        vpc_cidrs = [a["CidrBlock"] for a in vpc.get("CidrBlockAssociationSet", [])
                     if a.get("CidrBlockState", {}).get("State", "associated") == "associated"]
        return subnet_cidr, vpc.get("CidrBlock", str(VPC_DEFAULT)), "\n".join(vpc_cidrs)

    def metadata_tree(self, ip: str) -> dict | None:
        host = self.by_ip.get(ip)
        inst = self.instances.get(host.id) if host else None
        if not host or not inst:
            return None
        region = self.region
        az = inst.get("Placement", {}).get("AvailabilityZone") or f"{region}a"
        fqdn = f"{host.hostname}.{region}.compute.internal"
        subnet_cidr, vpc_cidr, vpc_cidrs = self.network_of(inst)
        sgs = sg_of(inst)
        eni = (inst.get("NetworkInterfaces") or [{}])[0]
        mac = host.mac
        iface = {
            "device-number": "0",
            "interface-id": eni.get("NetworkInterfaceId", ""),
            "local-hostname": fqdn,
            "local-ipv4s": host.ip,
            "mac": mac,
            "owner-id": ACCOUNT,
            "security-group-ids": "\n".join(g["GroupId"] for g in sgs),
            "security-groups": "\n".join(g.get("GroupName", "") for g in sgs),
            "subnet-id": inst.get("SubnetId", ""),
            "subnet-ipv4-cidr-block": subnet_cidr,
            "vpc-id": inst.get("VpcId", ""),
            "vpc-ipv4-cidr-block": vpc_cidr,
            "vpc-ipv4-cidr-blocks": vpc_cidrs or vpc_cidr,
        }
        md: dict = {
            "ami-id": inst.get("ImageId", ""),
            "ami-launch-index": str(inst.get("AmiLaunchIndex", 0)),
            "hostname": fqdn,
            "instance-action": "none",
            "instance-id": host.id,
            "instance-life-cycle": "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand",
            "instance-type": inst.get("InstanceType", ""),
            "local-hostname": fqdn,
            "local-ipv4": host.ip,
            "mac": mac,
            "network": {"interfaces": {"macs": {mac: iface}}},
            "placement": {"availability-zone": az, "region": region},
            "reservation-id": "",
            "security-groups": "\n".join(g.get("GroupName", "") for g in sgs),
            "services": {"domain": "amazonaws.com", "partition": "aws"},
        }
        if host.public_ip:
            public_name = f"ec2-{host.public_ip.replace('.', '-')}.{region}.compute.amazonaws.com"
            md["public-ipv4"] = host.public_ip
            md["public-hostname"] = public_name
            iface["public-ipv4s"] = host.public_ip
            iface["public-hostname"] = public_name
        tags = {k: v for k, v in tags_of(inst).items() if k and "/" not in k and k not in (".", "..")}
        md["tags"] = {"instance": tags}
        profile = inst.get("IamInstanceProfile") or {}
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        if profile.get("Arn"):
            role = self.role_of(profile["Arn"])
            md["iam"] = {"info": json.dumps({
                "Code": "Success", "LastUpdated": now.isoformat().replace("+00:00", "Z"),
                "InstanceProfileArn": profile["Arn"], "InstanceProfileId": profile.get("Id", ""),
            }, indent=2)}
            if role:
                md["iam"]["security-credentials"] = {role: json.dumps({
                    "Code": "Success",
                    "LastUpdated": now.isoformat().replace("+00:00", "Z"),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "testing",
                    "SecretAccessKey": "testing",
                    "Token": "box-session-token",
                    "Expiration": (now + dt.timedelta(hours=6)).isoformat().replace("+00:00", "Z"),
                }, indent=2)}
        launch = inst.get("LaunchTime")
        document = {
            "accountId": ACCOUNT,
            "architecture": "x86_64",
            "availabilityZone": az,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": inst.get("ImageId", ""),
            "instanceId": host.id,
            "instanceType": inst.get("InstanceType", ""),
            "kernelId": None,
            "pendingTime": launch.strftime("%Y-%m-%dT%H:%M:%SZ") if launch else None,
            "privateIp": host.ip,
            "ramdiskId": None,
            "region": region,
            "version": "2017-09-30",
        }
        tree: dict = {
            "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
            "meta-data": md,
        }
        if host.user_data is not None:
            tree["user-data"] = host.user_data
        return tree

    # -- hosts.json -----------------------------------------------------------------------

    def write_hosts(self) -> None:
        with self.lock:
            records = [h.record() for h in self.hosts.values()]
            records += [h.record("stopping") for h in self.stopping_hosts.values()]
            records.sort(key=lambda r: ipaddress.ip_address(r["ip"]))
            if records != self.last_hosts_json:
                atomic_json(self.state / "hosts.json", records)
                self.last_hosts_json = records


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


# --- system helpers -------------------------------------------------------------------------


def sysctl(key: str, value: str) -> None:
    try:
        Path("/proc/sys", key).write_text(value)
    except OSError as err:
        log(f"sysctl {key}={value}: {err}")


def umount(path: Path) -> None:
    for _ in range(2):
        if not is_mounted(path):
            return
        res = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if res.returncode == 0:
            continue
        time.sleep(0.5)
    if is_mounted(path):
        sh("umount", "-l", str(path), check=False)


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


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


def leader_of(nspawn_pid: int) -> int | None:
    """The container's PID 1: the child of systemd-nspawn that is PID 1 in its namespace."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(nspawn_pid):
            nspid = fields.get("NSpid", "").split()
            if len(nspid) >= 2 and nspid[-1] == "1":
                return int(entry)
    return None


# --- CLI ----------------------------------------------------------------------------------


def default_state(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    pointer = POINTER / "state"
    if pointer.exists():
        return Path(pointer.read_text().strip())
    sys.exit("box: no --state given and no box is running")


def read_hosts(state: Path) -> list[dict]:
    try:
        return json.loads((state / "hosts.json").read_text())
    except FileNotFoundError:
        return []


def cmd_run(args) -> int:
    if os.geteuid() != 0:
        sys.exit("box: run needs root")
    state = Path(args.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("FLIGHTDECK_CACHE", Path.home() / ".cache" / "flightdeck")) / "box"
    if args.rootfs:
        rootfs = Path(args.rootfs).resolve()
    else:
        out = subprocess.run([str(HERE / "rootfs.sh")], stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            sys.exit(f"box: tests/box/rootfs.sh failed (exit {out.returncode})")
        rootfs = Path(out.stdout.strip().splitlines()[-1])
    if not (rootfs / "etc" / "os-release").exists():
        sys.exit(f"box: {rootfs} is not a root file system")
    for tool in ("systemd-nspawn", "nft", "nsenter", "ip", "openssl", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit(f"box: {tool} is missing (apt-get install systemd-container nftables "
                     "util-linux iproute2 openssl openssh-client)")
    box = Box(args.endpoint, state, args.region, rootfs, cache / "ca")

    def on_signal(signum, frame) -> None:
        if not box.stop_event.is_set():
            log(f"got {signal.Signals(signum).name}")
        box.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return box.run()


def cmd_hosts(args) -> int:
    state = default_state(args.state)
    for rec in read_hosts(state):
        lib = Path(rec["dir"]) / "root" / "var" / "lib" / "box"
        rec["userdata_started"] = None
        rec["userdata_exit"] = None
        try:
            rec["userdata_started"] = float((lib / "userdata-started").read_text())
        except (OSError, ValueError):
            pass
        try:
            rec["userdata_exit"] = (lib / "userdata-exit").read_text().strip()
        except OSError:
            pass
        print(json.dumps(rec))
    return 0


def cmd_exec(args) -> int:
    state = default_state(args.state)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("box: exec needs a command after --")
    rec = next((r for r in read_hosts(state)
                if args.target in (r["id"], r["ip"], r.get("public_ip"), r.get("hostname"))), None)
    if rec is None:
        sys.exit(f"box: no live host {args.target} in {state / 'hosts.json'}")
    leader = None
    deadline = time.monotonic() + 10
    while leader is None and time.monotonic() < deadline:
        leader = leader_of(rec["pid"]) if rec.get("pid") else None
        if leader is None:
            time.sleep(0.2)
    if leader is None:
        sys.exit(f"box: host {rec['id']} has no running container")
    env = ["env", "-i", f"PATH={PATH_ENV}", "HOME=/root", "USER=root", "LOGNAME=root",
           "LANG=C.UTF-8", f"TERM={os.environ.get('TERM', 'dumb')}"]
    argv = ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *env,
            *command]
    os.execvp("nsenter", argv)
    return 127


def cmd_cleanup(args) -> int:
    pid_file = POINTER / "pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            if "box.py" in Path(f"/proc/{pid}/cmdline").read_text():
                sys.exit(f"box: a box runs (pid {pid}): stop it with SIGTERM instead")
        except (ValueError, ProcessLookupError, FileNotFoundError):
            pass
    state = Path(args.state).resolve() if args.state else None
    if state is None and (POINTER / "state").exists():
        state = Path((POINTER / "state").read_text().strip())
    if state:
        for rec in read_hosts(state):
            pid = rec.get("pid")
            try:
                if pid and "systemd-nspawn" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
                    log(f"killed the container of {rec['id']} (nspawn pid {pid})")
            except (OSError, ProcessLookupError):
                pass
        time.sleep(0.5)
    teardown_network(state)
    if state:
        atomic_json(state / "hosts.json", [])
    for name in ("state", "pid"):
        try:
            (POINTER / name).unlink()
        except FileNotFoundError:
            pass
    log("cleaned up")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="box.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="make the emulator's instances real hosts (foreground)")
    p.add_argument("--endpoint", required=True, help="the emulator, http://127.0.0.1:PORT")
    p.add_argument("--state", required=True, help="directory for the hosts' disks and logs")
    p.add_argument("--region", default="eu-west-2")
    p.add_argument("--rootfs", help="root file system directory (default: run rootfs.sh)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("hosts", help="the live hosts, as JSON lines")
    p.add_argument("--state")
    p.set_defaults(func=cmd_hosts)
    p = sub.add_parser("exec", help="run a command in a host")
    p.add_argument("--state")
    p.add_argument("target", help="instance id, private or public IP, or hostname")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    p = sub.add_parser("cleanup", help="remove what a killed box left behind")
    p.add_argument("--state")
    p.set_defaults(func=cmd_cleanup)
    args = parser.parse_args(argv[1:])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
