"""A host: the container that stands for one EC2 instance. `Host` holds what the box knows
of it; `HostLifecycle` (mixed into `Box`, using its state) makes its disk (an overlay on the
shared image), its network namespace and its systemd-nspawn container, and stops and removes
them; `leader_of` finds a running container's PID 1 for `box.py exec`."""

from __future__ import annotations

import base64
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .layout import BRIDGE, GATEWAY, NETNS_PREFIX, PATH_ENV, SUBNET, VETH_PREFIX
from .shell import log, sh, sysctl, umount, write


STOP_GRACE = 10.0


def short(instance_id: str) -> str:
    return instance_id.removeprefix("i-")[-10:]


def ec2_hostname(ip: str) -> str:
    return "ip-" + ip.replace(".", "-")


def tags_of(inst: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", []) or []}


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


class HostLifecycle:
    """Boot and stop of hosts; a part of `Box` (its hosts, by_ip, lock, state...)."""

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
        # What the metadata service answers from the emulator is looked up now: the aws CLI
        # gives IMDS one second, and an answer must not wait behind the emulator's queue.
        self.network_of(inst)
        profile = (inst.get("IamInstanceProfile") or {}).get("Arn")
        if profile:
            self.role_of(profile)
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
