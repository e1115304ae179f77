"""The box: `Box` starts the network and the DNS, TLS and IMDS servers, then polls the
emulator every second and brings the hosts in line with its instances (boot, stop, tags,
public IPs, security groups), and writes hosts.json. Its parts by concern are the mixins
from hosts, network, firewall and imds."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
import urllib.parse
from pathlib import Path

from .dns import Dns
from .firewall import Firewall
from .hosts import Host, HostLifecycle, tags_of
from .imds import Imds, InstanceMetadata
from .layout import (BRIDGE, GATEWAY, IMDS_IP, LIVE_STATES, POINTER, SUBNET, VPC_DEFAULT,
                     forget_running_box)
from .network import NetworkPlumbing, teardown_network
from .shell import atomic_json, log
from .tls import TlsProxy, ensure_server_cert


POLL = 1.0


class Box(HostLifecycle, NetworkPlumbing, Firewall, InstanceMetadata):
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
            log(f"up: bridge {BRIDGE} {GATEWAY}/{SUBNET.prefixlen}, DNS {GATEWAY}:53, TLS {GATEWAY}:443 -> "
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
        forget_running_box()
        log("down: nothing left running")

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

    # -- hosts.json -----------------------------------------------------------------------

    def write_hosts(self) -> None:
        with self.lock:
            records = [h.record() for h in self.hosts.values()]
            records += [h.record("stopping") for h in self.stopping_hosts.values()]
            records.sort(key=lambda r: ipaddress.ip_address(r["ip"]))
            if records != self.last_hosts_json:
                atomic_json(self.state / "hosts.json", records)
                self.last_hosts_json = records
