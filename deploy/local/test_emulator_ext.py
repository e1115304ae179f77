"""Tests of deploy/local/emulator_ext.py: moto plus wait conditions and Secrets Manager secrets.

Run with the venv's Python:  .venv/bin/python -m unittest deploy/local/test_emulator_ext.py

Starts the extension on a free port of 127.0.0.1 (its own server, never reset) and drives it
with boto3 the way CloudFormation users and cluster nodes would.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import string
import subprocess
import sys
import time
import unittest
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

REGION = "eu-west-2"
EXTENSION = Path(__file__).resolve().with_name("emulator_ext.py")
IMAGE = "ami-12c6146b"  # one of moto's built-in images
URL_SHAPE = re.compile(
    r"^https://cloudformation-waitcondition-eu-west-2\.s3\.eu-west-2\.amazonaws\.com/"
    r"arn%3Aaws%3Acloudformation%3Aeu-west-2%3A[0-9]{12}%3Astack/(?P<stack>[^/]+)/[0-9a-f-]+/Handle$"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(mode: str) -> tuple[subprocess.Popen, int]:
    """The extension on a free port with FLIGHTDECK_EMULATOR_WAIT_CONDITIONS=mode, answering."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(EXTENSION), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "FLIGHTDECK_EMULATOR_WAIT_CONDITIONS": mode},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return server, port
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"emulator_ext.py exited: {server.stderr.read().decode()}")
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"emulator_ext.py did not answer on port {port} within 30 s")
            time.sleep(0.2)


def stop_emulator(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    server.stderr.close()


class EmulatorExtensionTest(unittest.TestCase):
    MODE = "signal"

    @classmethod
    def setUpClass(cls) -> None:
        cls.server, cls.port = start_emulator(cls.MODE)
        cls.endpoint = f"http://127.0.0.1:{cls.port}"
        session = dict(
            endpoint_url=cls.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        cls.cfn = boto3.client("cloudformation", **session)
        cls.ec2 = boto3.client("ec2", **session)
        cls.secrets = boto3.client("secretsmanager", **session)
        vpc = cls.ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        cls.subnet = cls.ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.0.0/20")["Subnet"]["SubnetId"]

        cls.ssm = boto3.client("ssm", **session)
        cls.sesv2 = boto3.client("sesv2", **session)
        cls.s3 = boto3.client("s3", **session)

    @classmethod
    def tearDownClass(cls) -> None:
        stop_emulator(cls.server)

    # --- helpers ---------------------------------------------------------------------------

    def template(self, count: int = 1, timeout: str = "600", extra: dict | None = None) -> str:
        """A master instance, a wait condition that depends on it, and outputs."""
        resources = {
            "Master": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": IMAGE, "InstanceType": "t3.micro", "SubnetId": self.subnet},
            },
            "Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"},
            "Ready": {
                "Type": "AWS::CloudFormation::WaitCondition",
                "DependsOn": "Master",
                "Properties": {"Handle": {"Ref": "Handle"}, "Timeout": timeout, "Count": count},
            },
            **(extra or {}),
        }
        outputs = {
            "MasterId": {"Value": {"Ref": "Master"}},
            "ReadyData": {"Value": {"Fn::GetAtt": ["Ready", "Data"]}},
        }
        return json.dumps({"Resources": resources, "Outputs": outputs})

    def create(self, body: str, **kwargs) -> str:
        name = f"{self._testMethodName.replace('_', '-')[:60]}-{uuid.uuid4().hex[:8]}"
        return self.cfn.create_stack(StackName=name, TemplateBody=body, **kwargs)["StackId"]

    def stack(self, stack_id: str) -> dict:
        return self.cfn.describe_stacks(StackName=stack_id)["Stacks"][0]

    def physical_id(self, stack_id: str, logical_id: str) -> str:
        resources = self.cfn.describe_stack_resources(StackName=stack_id, LogicalResourceId=logical_id)
        return resources["StackResources"][0]["PhysicalResourceId"]

    def events(self, stack_id: str) -> list[tuple[str, str, str | None]]:
        """(logical id, status, reason), newest first as DescribeStackEvents returns them."""
        events = self.cfn.describe_stack_events(StackName=stack_id)["StackEvents"]
        return [(e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason")) for e in events]

    def signal(self, url: str, status: str, unique_id: str, reason: str = "", data: str = "", path_style=False):
        """What a node does: curl -X PUT -H 'Content-Type:' --data-binary '{...}' "$URL"."""
        parts = urlsplit(url)
        bucket = parts.hostname.split(".s3.")[0]
        headers = {"Host": parts.hostname} if not path_style else {}
        path = f"/{bucket}{parts.path}" if path_style else parts.path
        body = json.dumps({"Status": status, "Reason": reason, "UniqueId": unique_id, "Data": data})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("PUT", path, body=body.encode(), headers=headers)
            response = conn.getresponse()
            response.read()
            self.assertEqual(response.status, 200, f"PUT {path} with {headers}")
        finally:
            conn.close()

    def instance_state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]

    # --- wait conditions -------------------------------------------------------------------

    def test_success_signal_completes_the_stack(self):
        stack_id = self.create(self.template(), OnFailure="ROLLBACK")
        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "CREATE_IN_PROGRESS")
        self.assertNotIn("Outputs", stack)
        url = self.physical_id(stack_id, "Handle")
        self.assertRegex(url, URL_SHAPE)
        self.assertEqual(URL_SHAPE.match(url)["stack"], stack["StackName"])

        self.signal(url, "SUCCESS", "master", reason="configured", data="10.20.0.4")

        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "CREATE_COMPLETE")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        self.assertEqual(json.loads(outputs["ReadyData"]), {"master": "10.20.0.4"})
        self.assertEqual(self.instance_state(outputs["MasterId"]), "running")
        self.assertEqual(
            self.events(stack_id),
            [
                (stack["StackName"], "CREATE_COMPLETE", None),
                ("Ready", "CREATE_COMPLETE", None),
                ("Ready", "CREATE_IN_PROGRESS", None),
                (stack["StackName"], "CREATE_IN_PROGRESS", "User Initiated"),
            ],
        )

    def test_count_two_needs_two_distinct_unique_ids_by_either_url_style(self):
        stack_id = self.create(self.template(count=2))
        url = self.physical_id(stack_id, "Handle")

        self.signal(url, "SUCCESS", "master", data="a")
        self.assertEqual(self.stack(stack_id)["StackStatus"], "CREATE_IN_PROGRESS")
        self.signal(url, "SUCCESS", "master", data="again", path_style=True)
        self.assertEqual(self.stack(stack_id)["StackStatus"], "CREATE_IN_PROGRESS")
        self.signal(url, "SUCCESS", "compute-1", data="b", path_style=True)

        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "CREATE_COMPLETE")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        self.assertEqual(json.loads(outputs["ReadyData"]), {"master": "again", "compute-1": "b"})

    def test_failure_signal_rolls_back_and_terminates_the_instance(self):
        secret = {"Secret": {"Type": "AWS::SecretsManager::Secret", "Properties": {"SecretString": "s3cret"}}}
        stack_id = self.create(self.template(extra=secret))
        instance_id = self.physical_id(stack_id, "Master")
        secret_arn = self.physical_id(stack_id, "Secret")
        url = self.physical_id(stack_id, "Handle")

        self.signal(url, "FAILURE", "master", reason="configure.d/20-slurm.sh exited with 1")

        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "ROLLBACK_COMPLETE")
        self.assertNotIn("Outputs", stack)
        name = stack["StackName"]
        self.assertEqual(
            self.events(stack_id)[:4],
            [
                (name, "ROLLBACK_COMPLETE", None),
                (
                    name,
                    "ROLLBACK_IN_PROGRESS",
                    "The following resource(s) failed to create: [Ready]. Rollback requested by user.",
                ),
                (
                    "Ready",
                    "CREATE_FAILED",
                    "WaitCondition received failed message: 'configure.d/20-slurm.sh exited with 1' "
                    "for uniqueId: master",
                ),
                ("Ready", "CREATE_IN_PROGRESS", None),
            ],
        )
        self.assertEqual(self.instance_state(instance_id), "terminated")
        with self.assertRaises(ClientError):
            self.secrets.get_secret_value(SecretId=secret_arn)
        self.assertEqual(self.cfn.describe_stack_resources(StackName=stack_id)["StackResources"], [])

        self.cfn.delete_stack(StackName=stack_id)
        self.assertEqual(self.stack(stack_id)["StackStatus"], "DELETE_COMPLETE")

    def test_timeout_rolls_back_with_the_count_received(self):
        stack_id = self.create(self.template(count=2, timeout="1"))
        instance_id = self.physical_id(stack_id, "Master")
        self.signal(self.physical_id(stack_id, "Handle"), "SUCCESS", "master")
        self.assertEqual(self.stack(stack_id)["StackStatus"], "CREATE_IN_PROGRESS")

        time.sleep(1.5)

        self.assertEqual(self.stack(stack_id)["StackStatus"], "ROLLBACK_COMPLETE")
        self.assertIn(
            ("Ready", "CREATE_FAILED", "WaitCondition timed out. Received 1 conditions when expecting 2"),
            self.events(stack_id),
        )
        self.assertEqual(self.instance_state(instance_id), "terminated")

    def test_timeout_without_signals_reports_zero_received(self):
        stack_id = self.create(self.template(timeout="1"))
        time.sleep(1.5)
        self.assertEqual(
            [e for e in self.events(stack_id) if e[1] == "CREATE_FAILED"],
            [("Ready", "CREATE_FAILED", "WaitCondition timed out. Received 0 conditions when expecting 1")],
        )
        self.assertEqual(self.stack(stack_id)["StackStatus"], "ROLLBACK_COMPLETE")

    def test_do_nothing_leaves_the_stack_create_failed_with_its_resources(self):
        stack_id = self.create(self.template(), OnFailure="DO_NOTHING")
        instance_id = self.physical_id(stack_id, "Master")
        self.signal(self.physical_id(stack_id, "Handle"), "FAILURE", "master", reason="no")

        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "CREATE_FAILED")
        self.assertEqual(stack["StackStatusReason"], "The following resource(s) failed to create: [Ready]. ")
        self.assertTrue(stack["DisableRollback"])
        self.assertEqual(
            self.events(stack_id)[:2],
            [
                (stack["StackName"], "CREATE_FAILED", "The following resource(s) failed to create: [Ready]. "),
                ("Ready", "CREATE_FAILED", "WaitCondition received failed message: 'no' for uniqueId: master"),
            ],
        )
        self.assertEqual(self.instance_state(instance_id), "running")

        self.cfn.delete_stack(StackName=stack_id)
        self.assertEqual(self.stack(stack_id)["StackStatus"], "DELETE_COMPLETE")
        self.assertEqual(self.instance_state(instance_id), "terminated")

    def test_delete_while_in_progress_deletes_the_resources(self):
        stack_id = self.create(self.template())
        instance_id = self.physical_id(stack_id, "Master")
        self.assertEqual(self.stack(stack_id)["StackStatus"], "CREATE_IN_PROGRESS")

        self.cfn.delete_stack(StackName=stack_id)

        self.assertEqual(self.stack(stack_id)["StackStatus"], "DELETE_COMPLETE")
        self.assertEqual(self.instance_state(instance_id), "terminated")
        summaries = self.cfn.list_stacks(StackStatusFilter=["DELETE_COMPLETE"])["StackSummaries"]
        self.assertIn(stack_id, [s["StackId"] for s in summaries])

    # --- secrets ---------------------------------------------------------------------------

    def test_generated_secret_follows_the_rules_and_goes_with_the_stack(self):
        extra = {
            "Password": {
                "Type": "AWS::SecretsManager::Secret",
                "Properties": {
                    "Description": "munge key",
                    "GenerateSecretString": {
                        "PasswordLength": 40,
                        "ExcludePunctuation": True,
                        "ExcludeCharacters": "lIO01",
                    },
                    "Tags": [{"Key": "flightdeck:cluster", "Value": "c1"}],
                },
            },
            "Named": {
                "Type": "AWS::SecretsManager::Secret",
                "Properties": {"Name": f"fd-named-{uuid.uuid4().hex[:8]}", "SecretString": "plain"},
            },
        }
        body = json.loads(self.template())
        body["Resources"] = extra
        body["Outputs"] = {"PasswordArn": {"Value": {"Ref": "Password"}}}
        stack_id = self.create(json.dumps(body))
        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "CREATE_COMPLETE")
        arn = stack["Outputs"][0]["OutputValue"]
        self.assertTrue(arn.startswith(f"arn:aws:secretsmanager:{REGION}:"), arn)

        described = self.secrets.describe_secret(SecretId=arn)
        self.assertRegex(described["Name"], rf"^{re.escape(stack['StackName'])}-Password-[A-Za-z0-9]+$")
        self.assertEqual(described["Description"], "munge key")
        self.assertEqual(described["Tags"], [{"Key": "flightdeck:cluster", "Value": "c1"}])
        value = self.secrets.get_secret_value(SecretId=arn)["SecretString"]
        self.assertEqual(len(value), 40)
        self.assertTrue(set(value) <= set(string.ascii_letters + string.digits) - set("lIO01"), value)
        named_arn = self.physical_id(stack_id, "Named")
        self.assertEqual(self.secrets.get_secret_value(SecretId=named_arn)["SecretString"], "plain")

        self.cfn.delete_stack(StackName=stack_id)
        for gone in (arn, named_arn):
            with self.assertRaises(ClientError) as caught:
                self.secrets.describe_secret(SecretId=gone)
            self.assertEqual(caught.exception.response["Error"]["Code"], "ResourceNotFoundException")

    # --- moto behaviour the cluster template relies on (no extension involved) ----------------

    def test_launch_template_gives_user_data_tags_profile_and_spot(self):
        user_data = base64.b64encode(b"#!/bin/bash\necho compute\n").decode()
        body = {
            "Resources": {
                "Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {
                    "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                            "Principal": {"Service": "ec2.amazonaws.com"}}]}}},
                "Profile": {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "Role"}]}},
                "ComputeTemplate": {
                    "Type": "AWS::EC2::LaunchTemplate",
                    "Properties": {
                        "LaunchTemplateData": {
                            "ImageId": IMAGE,
                            "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["Profile", "Arn"]}},
                            "InstanceType": "t3.micro",
                            "UserData": user_data,
                            "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.05"}},
                            "TagSpecifications": [
                                {"ResourceType": "instance", "Tags": [{"Key": "flightdeck:role", "Value": "compute"}]}
                            ],
                        }
                    },
                }
            },
            "Outputs": {"TemplateId": {"Value": {"Ref": "ComputeTemplate"}},
                        "ProfileArn": {"Value": {"Fn::GetAtt": ["Profile", "Arn"]}}},
        }
        stack_id = self.create(json.dumps(body))
        outputs = {o["OutputKey"]: o["OutputValue"] for o in self.stack(stack_id)["Outputs"]}
        template_id = outputs["TemplateId"]

        run = self.ec2.run_instances(
            MinCount=1,
            MaxCount=1,
            SubnetId=self.subnet,
            LaunchTemplate={"LaunchTemplateId": template_id, "Version": "$Latest"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "compute-1"}]}],
        )
        instance_id = run["Instances"][0]["InstanceId"]
        attribute = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        self.assertEqual(attribute["UserData"]["Value"], user_data)
        instance = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        self.assertEqual(tags["flightdeck:role"], "compute")
        self.assertEqual(tags["Name"], "compute-1")
        self.assertEqual(tags["aws:ec2launchtemplate:id"], template_id)
        # moto alone applies neither the template's spot options nor its instance profile.
        self.assertEqual(instance.get("InstanceLifecycle"), "spot")
        self.assertEqual(instance["IamInstanceProfile"]["Arn"], outputs["ProfileArn"])

        terminating = self.ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"]
        self.assertEqual(terminating[0]["CurrentState"]["Name"], "shutting-down")
        self.assertEqual(self.instance_state(instance_id), "terminated")
        self.cfn.delete_stack(StackName=stack_id)



    # --- public image parameter and addresses ----------------------------------------------

    def test_debian_public_image_parameter_resolves_as_a_template_default(self):
        name = "/aws/service/debian/release/12/latest/amd64"
        value = self.ssm.get_parameter(Name=name)["Parameter"]["Value"]
        self.assertRegex(value, r"^ami-[0-9a-f]{8,17}$")
        body = json.dumps({
            "Parameters": {"Image": {"Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
                                     "Default": name}},
            "Resources": {"Node": {"Type": "AWS::EC2::Instance", "Properties": {
                "ImageId": {"Ref": "Image"}, "InstanceType": "t3.micro", "SubnetId": self.subnet}}},
        })
        stack_id = self.create(body)
        self.assertEqual(self.stack(stack_id)["StackStatus"], "CREATE_COMPLETE")
        instance = self.physical_id(stack_id, "Node")
        image = self.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["ImageId"]
        self.assertEqual(image, value)

    def test_a_bucket_without_notifications_answers_an_empty_configuration(self):
        bucket = f"notifications-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        url = f"{self.endpoint}/{bucket}?notification"
        request = urllib.request.Request(url, headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-2/s3/aws4_request"})
        with urllib.request.urlopen(request) as answer:
            body = answer.read().decode()
        self.assertRegex(body, r"<NotificationConfiguration xmlns=\"[^\"]+\"/>$")
        queue = "arn:aws:sqs:eu-west-2:123456789012:hints"
        self.s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue, "Events": ["s3:ObjectCreated:*"]}]})
        configured = self.s3.get_bucket_notification_configuration(Bucket=bucket)
        self.assertEqual(configured["QueueConfigurations"][0]["QueueArn"], queue)

    def test_an_email_identity_is_verified_for_sending_as_it_can_send(self):
        domain = f"{uuid.uuid4().hex[:8]}.example"
        self.sesv2.create_email_identity(EmailIdentity=domain)
        identity = self.sesv2.get_email_identity(EmailIdentity=domain)
        self.assertEqual(identity["VerificationStatus"], "SUCCESS")
        self.assertIs(identity["VerifiedForSendingStatus"], True)
        self.sesv2.send_email(
            FromEmailAddress=f"flightdeck@{domain}",
            Destination={"ToAddresses": ["ops@example.org"]},
            Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}},
        )

    def test_a_parameter_only_update_reaches_a_resource_that_names_it_in_sub(self):
        body = json.dumps({
            "Parameters": {"Nodes": {"Type": "Number"}},
            "Resources": {"Sizing": {"Type": "AWS::SSM::Parameter", "Properties": {
                "Name": f"/test/{uuid.uuid4().hex[:8]}/sizing", "Type": "String",
                "Value": {"Fn::Sub": "NODES=${Nodes}"}}}},
        })
        stack_id = self.create(body, Parameters=[{"ParameterKey": "Nodes", "ParameterValue": "2"}])
        name = self.physical_id(stack_id, "Sizing")
        self.assertEqual(self.ssm.get_parameter(Name=name)["Parameter"]["Value"], "NODES=2")
        self.cfn.update_stack(StackName=stack_id, TemplateBody=body,
                              Parameters=[{"ParameterKey": "Nodes", "ParameterValue": "3"}])
        self.assertEqual(self.stack(stack_id)["StackStatus"], "UPDATE_COMPLETE")
        self.assertEqual(self.ssm.get_parameter(Name=name)["Parameter"]["Value"], "NODES=3")

    def test_a_stack_instance_is_in_its_security_group_ids(self):
        vpc = self.ec2.describe_subnets(SubnetIds=[self.subnet])["Subnets"][0]["VpcId"]
        body = json.dumps({"Resources": {
            "Group": {"Type": "AWS::EC2::SecurityGroup",
                      "Properties": {"GroupDescription": "members", "VpcId": vpc}},
            "Node": {"Type": "AWS::EC2::Instance", "Properties": {
                "ImageId": IMAGE, "InstanceType": "t3.micro", "SubnetId": self.subnet,
                "SecurityGroupIds": [{"Ref": "Group"}]}}}})
        stack_id = self.create(body)
        group = self.physical_id(stack_id, "Group")
        instance = self.ec2.describe_instances(InstanceIds=[self.physical_id(stack_id, "Node")])
        interface = instance["Reservations"][0]["Instances"][0]["NetworkInterfaces"][0]
        self.assertEqual([g["GroupId"] for g in interface["Groups"]], [group])

    def test_an_update_of_tags_alone_is_an_update_as_on_aws(self):
        body = json.dumps({"Parameters": {"Label": {"Type": "String"},
                                          "Nodes": {"Type": "String", "Default": "2"}},
                           "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}})
        stack_id = self.create(body, Parameters=[{"ParameterKey": "Label", "ParameterValue": "a"}],
                               Tags=[{"Key": "project", "Value": "alice"}])
        # Nodes took its default: its previous value is that default.
        keep = [{"ParameterKey": "Label", "UsePreviousValue": True},
                {"ParameterKey": "Nodes", "UsePreviousValue": True}]
        tags = [{"Key": "project", "Value": "alice"}, {"Key": "owner", "Value": "site"}]
        self.cfn.update_stack(StackName=stack_id, UsePreviousTemplate=True, Parameters=keep,
                              Tags=tags)
        stack = self.stack(stack_id)
        self.assertEqual(stack["StackStatus"], "UPDATE_COMPLETE")
        self.assertEqual({t["Key"]: t["Value"] for t in stack["Tags"]},
                         {"project": "alice", "owner": "site"})
        self.assertEqual({p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]},
                         {"Label": "a", "Nodes": "2"})
        with self.assertRaisesRegex(ClientError, "No updates are to be performed"):
            self.cfn.update_stack(StackName=stack_id, UsePreviousTemplate=True, Parameters=keep,
                                  Tags=tags)

    def test_public_addresses_come_from_the_network_test_range(self):
        address = self.ec2.allocate_address(Domain="vpc")["PublicIp"]
        instance = self.ec2.run_instances(
            ImageId=IMAGE, InstanceType="t3.micro", MinCount=1, MaxCount=1,
            NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": self.subnet,
                                "AssociatePublicIpAddress": True}],
        )["Instances"][0]
        public = [address, instance.get("PublicIpAddress", "")]
        for ip in public:
            self.assertRegex(ip, r"^198\.1[89]\.[0-9]+\.[0-9]+$")


class AddressesTest(unittest.TestCase):
    """Public addresses for many clusters, on an emulator of their own (a thousand Elastic
    IPs would slow every later test of a shared one)."""

    def test_a_thousand_elastic_ips_are_all_different(self):
        server, port = start_emulator("signal")
        self.addCleanup(stop_emulator, server)
        ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        # At random among 65,024 addresses, 1,000 would share one about 7 times over.
        addresses = [ec2.allocate_address(Domain="vpc")["PublicIp"] for _ in range(1000)]
        self.assertEqual(len(set(addresses)), len(addresses))


class CompleteModeTest(unittest.TestCase):
    """FLIGHTDECK_EMULATOR_WAIT_CONDITIONS=complete: for runs where no instance boots."""

    def test_a_wait_condition_completes_without_a_signal(self):
        server, port = start_emulator("complete")
        self.addCleanup(stop_emulator, server)
        cfn = boto3.client("cloudformation", endpoint_url=f"http://127.0.0.1:{port}",
                           region_name=REGION, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        body = json.dumps({"Resources": {
            "Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"},
            "Ready": {"Type": "AWS::CloudFormation::WaitCondition",
                      "Properties": {"Handle": {"Ref": "Handle"}, "Timeout": "600"}}}})
        stack_id = cfn.create_stack(StackName="complete-mode", TemplateBody=body)["StackId"]
        status = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"]
        self.assertEqual(status, "CREATE_COMPLETE")

if __name__ == "__main__":
    unittest.main()
