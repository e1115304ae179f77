#!/usr/bin/env python3
"""Prepare a local AWS emulator (moto_server) for flightdeck.

Usage:  bootstrap.py [ENDPOINT_URL]      (default: $FLIGHTDECK_ENDPOINT_URL)

Creates, or finds and reuses, everything a demo or an integration test needs:

- bucket flightdeck-users (users' folders; the controller's state under flightdeck/);
- bucket flightdeck-customizer with customizer/default/configure.d/* copied from the
  repository's customizer/default/configure.d/, and users alice and bob enrolled
  (customizer/<user>/configure.d/ = default's files + authorized_keys); carol is not enrolled;
- a VPC 10.0.0.0/16 with subnet 10.0.64.0/18, an internet gateway and a default route,
  found again on later runs by their Name tags. The subnet holds 16,379 addresses, enough
  for the master instances of 10,000 clusters (moto answers 500 once a subnet is full);
- SSM String parameters /flightdeck/network/vpc-id, /flightdeck/network/subnet-id and
  /flightdeck/local/image-id (the image of the clusters' nodes);
- an SESv2 email identity for example.org, so flightdeck@example.org can send.

Safe to run any number of times: it prints one line per thing, saying whether it was
created, changed or found as it should be.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import sys
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "eu-west-2"
USERS_BUCKET = "flightdeck-users"
CUSTOMIZER_BUCKET = "flightdeck-customizer"
CUSTOMIZER_PREFIX = "customizer/"
ENROLLED = ("alice", "bob")
NOT_ENROLLED = ("carol",)
NAME = "flightdeck-local"  # Name tag of the network pieces
VPC_CIDR = "10.0.0.0/16"
SUBNET_CIDR = "10.0.64.0/18"
SUBNET_AZ = f"{REGION}a"
VPC_PARAMETER = "/flightdeck/network/vpc-id"
SUBNET_PARAMETER = "/flightdeck/network/subnet-id"
# The template's default image parameter is Debian's public one under /aws/service/, a name
# the emulator reserves; deploy/local/flightdeck.toml points ImageId here instead. The
# emulator validates no AMI: this id only has to look like one.
IMAGE_PARAMETER = "/flightdeck/local/image-id"
IMAGE_ID = "ami-0d5eff06f840b45e9"
SENDER_DOMAIN = "example.org"

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGURE_D = REPO / "customizer" / "default" / "configure.d"


def say(verb: str, what: str) -> None:
    print(f"{verb:<10} {what}", flush=True)


def demo_public_key(user: str) -> str:
    """A well-formed, made-up ssh-ed25519 public key, the same on every run.

    The 32 key bytes are a hash of a fixed string: nobody holds a matching private key.
    """
    key = hashlib.sha256(f"flightdeck demo key for {user}".encode()).digest()
    kind = b"ssh-ed25519"
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", len(key)) + key
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {user}@flightdeck-demo"


# --- S3 -------------------------------------------------------------------------------


def ensure_bucket(s3, name: str) -> None:
    try:
        s3.head_bucket(Bucket=name)
        say("found", f"bucket {name}")
        return
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    say("created", f"bucket {name}")


def list_keys(s3, bucket: str, prefix: str) -> dict[str, str]:
    """Key -> ETag (without quotes) for every object under prefix."""
    keys: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["ETag"].strip('"')
    return keys


def mirror(s3, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    """Make bucket/prefix hold exactly `files` (name relative to prefix -> content)."""
    present = list_keys(s3, bucket, prefix)
    for name, body in sorted(files.items()):
        key = prefix + name
        if present.get(key) == hashlib.md5(body).hexdigest():
            say("found", f"s3://{bucket}/{key}")
            continue
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        say("updated" if key in present else "uploaded", f"s3://{bucket}/{key}")
    for key in sorted(set(present) - {prefix + name for name in files}):
        s3.delete_object(Bucket=bucket, Key=key)
        say("removed", f"s3://{bucket}/{key} (not in the repository)")


def default_scripts() -> dict[str, bytes]:
    """The repository's customizer/default/configure.d/ files (dotfiles skipped)."""
    files: dict[str, bytes] = {}
    if DEFAULT_CONFIGURE_D.is_dir():
        for path in sorted(DEFAULT_CONFIGURE_D.rglob("*")):
            rel = path.relative_to(DEFAULT_CONFIGURE_D)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                files[rel.as_posix()] = path.read_bytes()
    if not files:
        say("note", f"no files in {DEFAULT_CONFIGURE_D.relative_to(REPO)}/ to upload")
    return files


def setup_customizer(s3) -> None:
    ensure_bucket(s3, CUSTOMIZER_BUCKET)
    scripts = default_scripts()
    mirror(s3, CUSTOMIZER_BUCKET, f"{CUSTOMIZER_PREFIX}default/configure.d/", scripts)
    for user in ENROLLED:
        files = dict(scripts)
        files["authorized_keys"] = (demo_public_key(user) + "\n").encode()
        mirror(s3, CUSTOMIZER_BUCKET, f"{CUSTOMIZER_PREFIX}{user}/configure.d/", files)
        say("enrolled", f"user {user}")
    for user in NOT_ENROLLED:
        stale = list_keys(s3, CUSTOMIZER_BUCKET, f"{CUSTOMIZER_PREFIX}{user}/")
        for key in sorted(stale):
            s3.delete_object(Bucket=CUSTOMIZER_BUCKET, Key=key)
            say("removed", f"s3://{CUSTOMIZER_BUCKET}/{key}")
        say("absent", f"user {user} is not enrolled (on purpose)")


# --- network --------------------------------------------------------------------------


def by_name(items: list[dict], what: str) -> dict | None:
    if len(items) > 1:
        ids = ", ".join(sorted(str(i.get(f"{what}Id")) for i in items))
        say("note", f"{len(items)} {what}s named {NAME}* ({ids}); using the first")
    return items[0] if items else None


def name_tags(name: str, resource_type: str) -> list[dict]:
    return [{"ResourceType": resource_type, "Tags": [{"Key": "Name", "Value": name}]}]


def ensure_network(ec2) -> tuple[str, str]:
    vpcs = ec2.describe_vpcs(
        Filters=[{"Name": "tag:Name", "Values": [NAME]}, {"Name": "cidr", "Values": [VPC_CIDR]}]
    )["Vpcs"]
    vpc = by_name(vpcs, "Vpc")
    if vpc:
        vpc_id = vpc["VpcId"]
        say("found", f"VPC {vpc_id} {VPC_CIDR} (Name={NAME})")
    else:
        vpc_id = ec2.create_vpc(
            CidrBlock=VPC_CIDR, TagSpecifications=name_tags(NAME, "vpc")
        )["Vpc"]["VpcId"]
        ec2.get_waiter("vpc_available").wait(VpcIds=[vpc_id])
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsSupport={"Value": True})
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
        say("created", f"VPC {vpc_id} {VPC_CIDR} (Name={NAME})")

    subnet_name = f"{NAME}-public"
    subnets = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "tag:Name", "Values": [subnet_name]},
        ]
    )["Subnets"]
    subnet = by_name(subnets, "Subnet")
    if subnet:
        subnet_id = subnet["SubnetId"]
        say("found", f"subnet {subnet_id} {subnet['CidrBlock']} (Name={subnet_name})")
    else:
        subnet_id = ec2.create_subnet(
            VpcId=vpc_id,
            CidrBlock=SUBNET_CIDR,
            AvailabilityZone=SUBNET_AZ,
            TagSpecifications=name_tags(subnet_name, "subnet"),
        )["Subnet"]["SubnetId"]
        ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
        say("created", f"subnet {subnet_id} {SUBNET_CIDR} in {SUBNET_AZ} (Name={subnet_name})")

    igws = ec2.describe_internet_gateways(
        Filters=[{"Name": "tag:Name", "Values": [NAME]}]
    )["InternetGateways"]
    igw = by_name(igws, "InternetGateway")
    if igw:
        igw_id = igw["InternetGatewayId"]
        say("found", f"internet gateway {igw_id} (Name={NAME})")
    else:
        igw = ec2.create_internet_gateway(TagSpecifications=name_tags(NAME, "internet-gateway"))
        igw = igw["InternetGateway"]
        igw_id = igw["InternetGatewayId"]
        say("created", f"internet gateway {igw_id} (Name={NAME})")
    if any(a.get("VpcId") == vpc_id for a in igw.get("Attachments", [])):
        say("found", f"internet gateway {igw_id} attached to {vpc_id}")
    else:
        ec2.attach_internet_gateway(InternetGatewayId=igw_id, VpcId=vpc_id)
        say("attached", f"internet gateway {igw_id} to {vpc_id}")

    tables = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    if not tables:
        sys.exit(f"bootstrap: VPC {vpc_id} has no main route table")
    table = tables[0]
    table_id = table["RouteTableId"]
    default = [r for r in table.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    if any(r.get("GatewayId") == igw_id for r in default):
        say("found", f"route 0.0.0.0/0 -> {igw_id} in main route table {table_id}")
    elif default:
        ec2.replace_route(RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw_id)
        say("replaced", f"route 0.0.0.0/0 -> {igw_id} in main route table {table_id}")
    else:
        ec2.create_route(RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw_id)
        say("created", f"route 0.0.0.0/0 -> {igw_id} in main route table {table_id}")
    return vpc_id, subnet_id


def put_parameter(ssm, name: str, value: str) -> None:
    try:
        current = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise
        current = None
    if current == value:
        say("found", f"SSM parameter {name} = {value}")
        return
    ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    say("set" if current is None else "updated", f"SSM parameter {name} = {value}")


# --- SES ------------------------------------------------------------------------------


def ensure_email_identity(sesv2, identity: str) -> None:
    known: set[str] = set()
    kwargs: dict[str, str] = {}
    while True:  # botocore has no paginator for this call
        page = sesv2.list_email_identities(**kwargs)
        known.update(i["IdentityName"] for i in page.get("EmailIdentities", []))
        if not page.get("NextToken"):
            break
        kwargs = {"NextToken": page["NextToken"]}
    if identity in known:
        say("found", f"SES email identity {identity}")
        return
    sesv2.create_email_identity(EmailIdentity=identity)
    say("created", f"SES email identity {identity}")


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip())
        return 0 if len(argv) == 2 else 2
    endpoint = argv[1] if len(argv) == 2 else os.environ.get("FLIGHTDECK_ENDPOINT_URL", "")
    if not endpoint:
        print("bootstrap: give the endpoint URL as an argument or in FLIGHTDECK_ENDPOINT_URL",
              file=sys.stderr)
        return 2

    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=REGION,
    )
    conf = Config(retries={"max_attempts": 3, "mode": "standard"})
    s3 = session.client(
        "s3", endpoint_url=endpoint, config=conf.merge(Config(s3={"addressing_style": "path"}))
    )
    ec2 = session.client("ec2", endpoint_url=endpoint, config=conf)
    ssm = session.client("ssm", endpoint_url=endpoint, config=conf)
    sesv2 = session.client("sesv2", endpoint_url=endpoint, config=conf)

    say("endpoint", f"{endpoint} (region {REGION})")
    ensure_bucket(s3, USERS_BUCKET)
    setup_customizer(s3)
    vpc_id, subnet_id = ensure_network(ec2)
    put_parameter(ssm, VPC_PARAMETER, vpc_id)
    put_parameter(ssm, SUBNET_PARAMETER, subnet_id)
    put_parameter(ssm, IMAGE_PARAMETER, IMAGE_ID)
    ensure_email_identity(sesv2, SENDER_DOMAIN)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
