"""The site and the checks of deploy/aws/smoke.sh (boto3 against the emulator; run by it).

    smoke_check.py prepare WORK     create what a site already has; write WORK/parameters.json
    smoke_check.py check WORK       check the installed stack; exit 1 when a check fails

The endpoint, region and credentials come from the environment smoke.sh sets. Only what the
emulator creates and keeps is checked (deploy/aws/README.md lists the rest).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import boto3

ROOT = pathlib.Path(__file__).resolve().parents[2]
STACK = "flightdeck"
IMAGE = "registry.example.org/flightdeck:0.1.0"
USERS, CUSTOMIZER, ARTIFACTS = "flightdeck-users", "flightdeck-customizer", "flightdeck-artifacts"
CODE_KEY = "flightdeck/flightdeck-aws.zip"


def client(service):
    return boto3.client(service, endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def prepare(work: pathlib.Path) -> None:
    """The users' bucket (sending events to a queue already), the customizer bucket, a VPC
    with two subnets for the controllers and one for clusters, an image parameter, and the
    functions' zip in a bucket of its own."""
    s3, ec2, ssm, sqs = client("s3"), client("ec2"), client("ssm"), client("sqs")
    for bucket in (USERS, CUSTOMIZER, ARTIFACTS):
        s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName="site-audit")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    site_rule = {"Id": "site-audit", "QueueArn": queue_arn["Attributes"]["QueueArn"],
                 "Events": ["s3:ObjectRemoved:*"]}
    s3.put_bucket_notification_configuration(
        Bucket=USERS, NotificationConfiguration={"QueueConfigurations": [site_rule]})

    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    region = s3.meta.region_name
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=region + zone)["Subnet"]["SubnetId"]
        for cidr, zone in (("10.20.1.0/24", "a"), ("10.20.2.0/24", "b"), ("10.20.3.0/24", "a"))
    ]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ssm.put_parameter(Name="/smoke/image-id", Type="String", Value=ami)

    # The package, as deploy/aws/README.md makes it.
    package = work / "flightdeck-aws.zip"
    subprocess.run([sys.executable, "-m", "zipfile", "-c", str(package),
                    str(ROOT / "deploy/lambda/forward.py"), str(ROOT / "deploy/aws/bucket_notification.py")],
                   check=True)
    s3.upload_file(str(package), ARTIFACTS, CODE_KEY)

    parameters = {
        "Image": IMAGE,
        "UsersBucket": USERS,
        "CustomizerBucket": CUSTOMIZER,
        "VpcId": vpc,
        "ControllerSubnetIds": f"{subnets[0]},{subnets[1]}",
        "ClusterSubnetId": subnets[2],
        "ClusterImageId": "/smoke/image-id",
        "CodeBucket": ARTIFACTS,
        "CodeKey": CODE_KEY,
        "NotifyFrom": "flightdeck@example.org",
        "NotifyOperators": "hpc-admins@example.org,oncall@example.org",
        # An address identity: moto has no DKIM tokens for a domain's (README.md).
        "SesIdentity": "flightdeck@example.org",
    }
    (work / "parameters.json").write_text(json.dumps(
        [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]))
    (work / "site.json").write_text(json.dumps(
        {"vpc": vpc, "subnets": subnets, "ami": ami, "site_rule": site_rule}))


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def eq(self, what, expected, actual):
        if expected == actual:
            self.passed += 1
            print(f"ok    {what}")
        else:
            self.failed += 1
            print(f"FAIL  {what}: expected {expected!r}, got {actual!r}")


def sids(document):
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            # moto returns a role's inline policy made by a stack as a Python dict's repr.
            document = ast.literal_eval(document)
    return [s.get("Sid") for s in document["Statement"]]


def file_sids(name):
    return sids(json.loads((ROOT / "policies" / name).read_text()))


def check(work: pathlib.Path) -> int:
    site = json.loads((work / "site.json").read_text())
    cf, iam, ecs = client("cloudformation"), client("iam"), client("ecs")
    c = Checks()

    stack = cf.describe_stacks(StackName=STACK)["Stacks"][0]
    c.eq(f"stack {STACK}", "CREATE_COMPLETE", stack["StackStatus"])
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}
    # moto lists a resource it skipped without a logical id.
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId")
                for r in cf.describe_stack_resources(StackName=STACK)["StackResources"]
                if r.get("LogicalResourceId")}

    # Identities: the roles, their trust, and policies/*.json's statements.
    task_role = iam.get_role(RoleName=physical["TaskRole"])["Role"]
    c.eq("TaskRole trusts ECS tasks", "ecs-tasks.amazonaws.com",
         task_role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"])
    c.eq("TaskRole policy: controller.json's statements", file_sids("controller.json"),
         sids(iam.get_role_policy(RoleName=physical["TaskRole"],
                                  PolicyName="flightdeck-controller")["PolicyDocument"]))
    stack_role = iam.get_role(RoleName=physical["StackRole"])["Role"]
    c.eq("StackRole trust: stack-role-trust.json", json.loads((ROOT / "policies/stack-role-trust.json").read_text()),
         stack_role["AssumeRolePolicyDocument"])
    c.eq("StackRole policy: stack-role.json's statements", file_sids("stack-role.json"),
         sids(iam.get_role_policy(RoleName=physical["StackRole"],
                                  PolicyName="flightdeck-stack")["PolicyDocument"]))
    boundary = iam.get_policy(PolicyArn=physical["ClusterBoundary"])["Policy"]
    version = iam.get_policy_version(PolicyArn=boundary["Arn"], VersionId=boundary["DefaultVersionId"])
    c.eq("ClusterBoundary: cluster-boundary.json's statements", file_sids("cluster-boundary.json"),
         sids(version["PolicyVersion"]["Document"]))
    c.eq("outputs StackRoleArn, ClusterBoundaryArn", [stack_role["Arn"], boundary["Arn"]],
         [outputs.get("StackRoleArn"), outputs.get("ClusterBoundaryArn")])

    # Two replicas of the image, configured through the environment.
    service = ecs.describe_services(cluster=physical["Cluster"], services=[physical["Service"]])["services"][0]
    c.eq("ECS service: desired count", 2, service["desiredCount"])
    container = ecs.describe_task_definition(
        taskDefinition=physical["TaskDefinition"])["taskDefinition"]["containerDefinitions"][0]
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    (work / "task-env.json").write_text(json.dumps(env))
    c.eq("container: image, command, user, read-only root",
         [IMAGE, ["run", "--config", "/dev/null"], "65532:65532", True],
         [container.get("image"), container.get("command"), container.get("user"),
          container.get("readonlyRootFilesystem")])
    secret = physical["HintToken"]
    c.eq("container: the hint token from the secret", [{"name": "FLIGHTDECK_HINT_TOKEN", "valueFrom": secret}],
         container.get("secrets"))
    expected_env = {
        "FLIGHTDECK_INSTANCE": "prod",
        "FLIGHTDECK_BUCKET_NAME": USERS,
        "FLIGHTDECK_BUCKET_CONTROLLER_PREFIX": "flightdeck/",
        "FLIGHTDECK_STACKS_SERVICE_ROLE_ARN": stack_role["Arn"],
        "FLIGHTDECK_PARAMETER_NodeRoleBoundaryArn": boundary["Arn"],
        "FLIGHTDECK_PARAMETER_ImageId": "/flightdeck/image/id",
        "FLIGHTDECK_PARAMETER_CustomizerBucket": CUSTOMIZER,
        "FLIGHTDECK_CUSTOMIZER_BUCKET": CUSTOMIZER,
        "FLIGHTDECK_NOTIFY_ENABLED": "true",
        "FLIGHTDECK_NOTIFY_OPERATOR": '["hpc-admins@example.org", "oncall@example.org"]',
        "FLIGHTDECK_ELECTION_ENABLED": "true",
    }
    for name, value in expected_env.items():
        c.eq(f"container env {name}", value, env.get(name))
    token = client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"]
    c.eq("hint token: 64 letters and digits", (64, True), (len(token), token.isalnum()))
    (work / "token").write_text(token)
    log = container["logConfiguration"]
    c.eq("container logs to LogGroup", ["awslogs", physical["LogGroup"]],
         [log["logDriver"], log["options"]["awslogs-group"]])
    logs = client("logs")
    for group in ("LogGroup", "ForwarderLogGroup", "NotificationLogGroup"):
        found = logs.describe_log_groups(logGroupNamePrefix=physical[group])["logGroups"]
        c.eq(f"log group {physical[group]}: retention", [90], [g.get("retentionInDays") for g in found])

    # What the cluster template reads, and the sender.
    ssm = client("ssm")
    for name, value in (("/flightdeck/network/vpc-id", site["vpc"]),
                        ("/flightdeck/network/subnet-id", site["subnets"][2]),
                        ("/flightdeck/image/id", site["ami"])):
        c.eq(f"SSM {name}", value, ssm.get_parameter(Name=name)["Parameter"]["Value"])
    identity = client("sesv2").get_email_identity(EmailIdentity="flightdeck@example.org")
    c.eq("SES identity flightdeck@example.org", "EMAIL_ADDRESS", identity["IdentityType"])

    # The hint path: names in Cloud Map, the forwarder, the controllers' port, the bucket.
    sd = client("servicediscovery")
    namespace = sd.get_namespace(Id=physical["Namespace"])["Namespace"]
    c.eq("Cloud Map namespace", ["flightdeck.internal", "DNS_PRIVATE"], [namespace["Name"], namespace["Type"]])
    dns = sd.get_service(Id=physical["DiscoveryService"])["Service"]
    c.eq("Cloud Map service: every task's A record answered",
         ["controller", "MULTIVALUE", [{"Type": "A", "TTL": 10}]],
         [dns["Name"], dns["DnsConfig"]["RoutingPolicy"], dns["DnsConfig"]["DnsRecords"]])
    lam = client("lambda")
    forwarder = lam.get_function(FunctionName=physical["HintForwarder"])["Configuration"]
    c.eq("forwarder: handler, URL, timeout",
         ["forward.handler", "http://controller.flightdeck.internal:8080/hints", "5"],
         [forwarder["Handler"], forwarder["Environment"]["Variables"].get("FLIGHTDECK_HINTS_URL"),
          forwarder["Environment"]["Variables"].get("FLIGHTDECK_HINTS_TIMEOUT")])
    c.eq("forwarder runs in the controllers' subnets, in its own security group",
         [site["subnets"][:2], [physical["ForwarderSecurityGroup"]]],
         [forwarder.get("VpcConfig", {}).get("SubnetIds"), forwarder.get("VpcConfig", {}).get("SecurityGroupIds")])
    c.eq("output HintForwarderArn", forwarder["FunctionArn"], outputs.get("HintForwarderArn"))
    policy = json.loads(lam.get_policy(FunctionName=physical["HintForwarder"])["Policy"])
    c.eq("S3 may invoke the forwarder", "s3.amazonaws.com", policy["Statement"][0]["Principal"]["Service"])
    group = client("ec2").describe_security_groups(GroupIds=[physical["ControllerSecurityGroup"]])
    c.eq("controllers take 8080 from the forwarder's group only",
         [(8080, [physical["ForwarderSecurityGroup"]])],
         [(p.get("FromPort"), [g["GroupId"] for g in p.get("UserIdGroupPairs", [])])
          for p in group["SecurityGroups"][0]["IpPermissions"]])
    notification = client("s3").get_bucket_notification_configuration(Bucket=USERS)
    c.eq("the site's own notification is kept", [site["site_rule"]], notification.get("QueueConfigurations"))
    ours = sorted((r for r in notification.get("LambdaFunctionConfigurations", [])
                   if r["LambdaFunctionArn"] == forwarder["FunctionArn"]), key=lambda r: r["Id"])
    c.eq("hint rules on the bucket",
         [(f"flightdeck-{STACK}-cf-create", ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], "home/", ".cf-create"),
          (f"flightdeck-{STACK}-cf-delete", ["s3:ObjectCreated:*"], "home/", ".cf-delete")],
         [(r["Id"], sorted(r["Events"]),
           *[f["Value"] for f in sorted(r["Filter"]["Key"]["FilterRules"], key=lambda f: f["Name"])])
          for r in ours])

    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "check"):
        sys.exit(__doc__)
    directory = pathlib.Path(sys.argv[2])
    if sys.argv[1] == "prepare":
        prepare(directory)
    else:
        sys.exit(check(directory))
