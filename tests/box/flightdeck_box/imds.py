"""The instance metadata service stand-in on 169.254.169.254:80 (IMDSv2): `Imds` and its
handler answer by the caller's source IP; `InstanceMetadata` (mixed into `Box`) builds the
tree for one instance from the emulator's view: meta-data, user-data, identity document."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import secrets
import threading
import time
from typing import TYPE_CHECKING

from .firewall import sg_of
from .hosts import tags_of
from .layout import IMDS_IP, SUBNET, VPC_DEFAULT
from .shell import log

if TYPE_CHECKING:
    from .box import Box


ACCOUNT = "123456789012"


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


class InstanceMetadata:
    """The metadata tree of an instance; a part of `Box` (its instances, by_ip, clients)."""

    def role_of(self, profile_arn: str) -> str | None:
        """The role of an instance profile. A role found is kept for the box's life (a
        cluster's profile never changes role); a miss is asked again after 30 s."""
        cached = self.roles.get(profile_arn)
        if cached and (cached[1] is not None or cached[0] > time.time()):
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
