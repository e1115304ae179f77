#!/usr/bin/env python3
"""The local AWS emulator: moto_server plus what the cluster template needs and moto lacks.

Usage:  emulator_ext.py -H HOST -p PORT      (the same command line as moto_server)

Pinned to moto 5.2.5: it patches moto's internals, and refuses to start on another version.
It adds, in moto's own process:

- AWS::CloudFormation::WaitConditionHandle and ::WaitCondition with AWS's semantics (moto
  lists both in NULL_MODELS and ignores them: every stack is CREATE_COMPLETE at once). The
  handle's Ref is a URL shaped like AWS's presigned one, https://cloudformation-waitcondition-
  <region>.s3.<region>.amazonaws.com/<url-quoted stack id>/<handle logical id>. Nodes PUT
  {"Status": "SUCCESS"|"FAILURE", "Reason", "UniqueId", "Data"} to it; that lands in moto's
  S3 (a versioned bucket, so no signal overwrites another), by Host header or path-style
  http://HOST:PORT/cloudformation-waitcondition-<region>/<key>. The stack stays
  CREATE_IN_PROGRESS until Count SUCCESS signals with distinct UniqueIds (CREATE_COMPLETE),
  a FAILURE signal or Timeout seconds: then the condition gets a CREATE_FAILED event with
  AWS's reason and the stack's OnFailure applies: ROLLBACK (default) deletes the resources
  -> ROLLBACK_COMPLETE; DO_NOTHING -> CREATE_FAILED; DELETE -> rollback, DELETE_COMPLETE.
  No background thread: pending conditions are settled whenever DescribeStacks, ListStacks,
  DescribeStackEvents, DescribeStackResource(s), ListStackResources or DeleteStack is handled.
  Fn::GetAtt [Condition, Data] is the JSON object {UniqueId: Data} of the SUCCESS signals.
- AWS::SecretsManager::Secret (SecretString or GenerateSecretString, Name, Description, Tags,
  KmsKeyId) in moto's Secrets Manager; Ref is the ARN; deleted with the stack, no recovery.
- CreateStack's OnFailure / DisableRollback (moto drops them) are kept, and a stack shows no
  Outputs until it is complete, as on AWS.
- FLIGHTDECK_EMULATOR_WAIT_CONDITIONS=complete makes every wait condition complete as soon as
  it is created (moto's old behaviour), for runs where no instance boots to signal it (the
  demo, the controller's integration tests); `signal` (the default) waits for signals, as the
  local test box (tests/box/) needs.
- Debian's public image parameter /aws/service/debian/release/12/latest/amd64 (the template's
  default ImageId; moto resolves every SSM-typed parameter's default, and reserves /aws/
  names), as moto already has Amazon Linux's.
- RunInstances from a launch template gets the template's IamInstanceProfile and, with spot
  InstanceMarketOptions, is a spot instance (moto applies neither), so a node launched by
  Slurm has its role's credentials in the box and the test can see the spot launch.
- One request at a time: moto's server runs each request on its own thread, but moto's models
  are not thread-safe (two CreateStacks at once raced in a subnet's address allocator and
  left a stack half-made, seen in the cluster test).
- A parameter-only stack update modifies the resources that name the parameter in Fn::Sub
  (moto looks only for Ref), as CloudFormation updates every resource whose resolved
  properties change: the cluster's sizing parameter is built with Fn::Sub.
- AWS::EC2::Instance's SecurityGroupIds (moto reads only SecurityGroups and puts the
  instance in the VPC's default group), so security groups can be enforced in the test box.
- An UpdateStack that changes only the stack's tags (UsePreviousTemplate, every parameter
  UsePreviousValue, new Tags) is an update, as on AWS: moto compares only the template and
  the parameters, answers "No updates are to be performed" and keeps the old tags. This is
  how `flightdeck adopt` tags the older design's stacks. And UsePreviousValue of a
  parameter that took its template default is accepted (moto keeps only the values given
  at create, and failed with HTTP 500): it keeps that default, as on AWS.
- An SES email identity is verified for sending as soon as it is made: moto sends from it at
  once and says its VerificationStatus is SUCCESS, but answers VerifiedForSendingStatus
  false, which is what `flightdeck doctor` reads (on AWS the two agree).
- A bucket without event notifications answers GetBucketNotificationConfiguration with an
  empty NotificationConfiguration, as S3 does (moto's empty GetBucketNotificationResponse
  is not S3's shape, and the AWS SDK for Rust refuses it).
- Public addresses (Elastic IPs, instances' public IPs) from 198.18.0.0/15, the range set
  aside for network tests, instead of moto's 127.x.y.z (this machine's loopback) and
  54.214.x.y (real AWS addresses): the test box assigns them to its own hosts. They are
  handed out in turn, not at random, so 10,000 clusters never get one address twice.

Why: so the cluster template's "the master signals when it is ready" path, its failure and
time-out paths and its generated secrets can be tested locally, not only on AWS.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import sys
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import moto

MOTO_VERSION = "5.2.5"
if moto.__version__ != MOTO_VERSION:
    sys.exit(
        f"emulator_ext: this extension patches moto {MOTO_VERSION} internals, but moto "
        f"{moto.__version__} is installed; install moto[server]=={MOTO_VERSION} "
        "(deploy/local/requirements.txt) or port the extension to the new version"
    )

# ruff: noqa: E402 (moto's modules are imported only once the version is known to fit)
from moto import server
from moto.cloudformation import parsing
from moto.cloudformation.models import CloudFormationBackend, Event, Stack, cloudformation_backends
from moto.cloudformation.responses import CloudFormationResponse
from moto.core.common_models import CloudFormationModel
from moto.core.utils import utcnow
from moto.s3.models import s3_backends
from moto.s3.responses import S3Response
from moto.secretsmanager.models import secretsmanager_backends
from moto.utilities.utils import get_partition
from moto.ec2.models import elastic_ip_addresses, elastic_network_interfaces
from moto.moto_server import werkzeug_app
from moto.ec2.models import instances as ec2_instances
from moto.ssm import models as ssm_models
from moto.ses import models as ses_models

WAIT_MODE = os.environ.get("FLIGHTDECK_EMULATOR_WAIT_CONDITIONS", "signal")
if WAIT_MODE not in ("signal", "complete"):
    sys.exit(f"emulator_ext: FLIGHTDECK_EMULATOR_WAIT_CONDITIONS={WAIT_MODE!r}: "
             "must be 'signal' or 'complete'")

WAIT_CONDITION_HANDLE = "AWS::CloudFormation::WaitConditionHandle"
WAIT_CONDITION = "AWS::CloudFormation::WaitCondition"
SECRET = "AWS::SecretsManager::Secret"


class StackResource:
    """What the three resource types share of moto's model interface; Ref is `ref`.

    Each type also subclasses CloudFormationModel directly (moto finds its models with
    CloudFormationModel.__subclasses__()) and sets __module__ to moto.<service>.<...>: moto's
    model metaclass files every model under the second part of its module name."""

    TYPE: str
    ATTRIBUTES: dict[str, str] = {}  # Fn::GetAtt name -> Python attribute
    ref: str
    logical_id: str

    @classmethod
    def cloudformation_type(cls) -> str:
        return cls.TYPE

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in cls.ATTRIBUTES

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name not in self.ATTRIBUTES:
            raise parsing.UnformattedGetAttTemplateException()
        return getattr(self, self.ATTRIBUTES[attribute_name])

    @property
    def physical_resource_id(self) -> str:
        return self.ref

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[misc]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any,
        account_id: str, region_name: str,
    ) -> Any:
        return original_resource  # an update keeps the resource as it is

    def delete(self, account_id: str, region_name: str) -> None:
        pass


def add_resource_event(stack: Stack | None, resource: StackResource, status: str,
                       reason: str | None) -> None:
    if stack is not None:
        stack.events.append(Event(
            stack_id=stack.stack_id, stack_name=stack.name,
            logical_resource_id=resource.logical_id,
            physical_resource_id=resource.physical_resource_id,
            resource_type=resource.cloudformation_type(), resource_status=status,
            resource_status_reason=reason, resource_properties=None,
        ))


# --- Wait conditions -------------------------------------------------------------------------


def signal_store(url: str) -> tuple[Any, str]:
    """moto's key store of a handle URL's bucket (None if there is no bucket), and its key."""
    parts = urlsplit(url)
    bucket = str(parts.hostname).split(".s3.")[0]
    partition, account_id = s3_backends.bucket_accounts.get(bucket, ("", ""))
    keys = s3_backends[account_id][partition].buckets[bucket].keys if account_id else None
    return keys, unquote(parts.path.lstrip("/"))


def read_signals(url: str) -> list[tuple[datetime.datetime, dict[str, Any]]]:
    """Every signal PUT to the handle URL, oldest first (bodies not JSON objects are ignored)."""
    keys, key = signal_store(url)
    signals = []
    for version in keys.getlist(key, []) if keys is not None else []:
        try:
            body = json.loads(version.value)
        except ValueError:
            continue
        if isinstance(body, dict):
            signals.append((version.last_modified, body))
    return sorted(signals, key=lambda signal: signal[0])


_signal_bucket_lock = threading.Lock()


def ensure_signal_bucket(bucket: str, account_id: str, region: str) -> None:
    # The server handles requests on several threads: two stacks created at once must not
    # both create the bucket (the second would fail with BucketAlreadyExists).
    with _signal_bucket_lock:
        if bucket not in s3_backends.bucket_accounts:
            create_signal_bucket(bucket, account_id, region)


def create_signal_bucket(bucket: str, account_id: str, region: str) -> None:
    s3 = s3_backends[account_id][get_partition(region)]
    s3.create_bucket(bucket, region)
    s3.put_bucket_versioning(bucket, "Enabled")  # keep every signal, not only the last
    # Nodes PUT without credentials (on AWS the URL is presigned); moto refuses an anonymous
    # overwrite of an existing key unless the bucket policy allows it.
    anyone_may_put = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }]}
    s3.put_bucket_policy(bucket, json.dumps(anyone_may_put).encode())


class WaitConditionHandle(StackResource, CloudFormationModel):
    """Ref: the URL that nodes PUT their signals to (an object in moto's S3)."""

    __module__ = "moto.cloudformation.emulator_ext"
    TYPE = WAIT_CONDITION_HANDLE

    def __init__(self, region: str, stack_id: str, logical_id: str):
        self.logical_id = logical_id
        self.bucket = f"cloudformation-waitcondition-{region}"
        self.ref = f"https://{self.bucket}.s3.{region}.amazonaws.com/{quote(stack_id)}/{logical_id}"

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
        **kwargs: Any,
    ) -> WaitConditionHandle:
        handle = cls(region_name, kwargs["StackId"], kwargs["LogicalId"])
        ensure_signal_bucket(handle.bucket, account_id, region_name)
        return handle

    def delete(self, account_id: str, region_name: str) -> None:
        keys, key = signal_store(self.ref)
        if keys is not None and key in keys:
            keys.pop(key)  # every version: the signals go with the stack


class WaitCondition(StackResource, CloudFormationModel):
    """Created (is_created) once Count SUCCESS signals with distinct UniqueIds have arrived."""

    __module__ = "moto.cloudformation.emulator_ext"
    TYPE = WAIT_CONDITION
    ATTRIBUTES = {"Data": "data_json"}

    def __init__(self, logical_id: str, handle_url: str, count: int, timeout: int):
        self.logical_id = logical_id
        self.ref = handle_url
        self.count = count
        self.deadline = utcnow() + datetime.timedelta(seconds=timeout)
        self.state = "CREATE_IN_PROGRESS"  # then CREATE_COMPLETE or CREATE_FAILED
        self.data: dict[str, Any] = {}

    @property
    def data_json(self) -> str:
        return json.dumps(self.data)

    def is_created(self) -> bool:
        return self.state == "CREATE_COMPLETE"

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
        **kwargs: Any,
    ) -> WaitCondition:
        properties = cloudformation_json["Properties"]
        condition = cls(kwargs["LogicalId"], properties["Handle"],
                        int(properties.get("Count", 1)), int(properties["Timeout"]))
        stack = cloudformation_backends[account_id][region_name].stacks.get(kwargs["StackId"])
        add_resource_event(stack, condition, "CREATE_IN_PROGRESS", None)
        if WAIT_MODE == "complete":
            condition.settle(stack, "CREATE_COMPLETE", None)
        return condition

    def evaluate(self, stack: Stack) -> None:
        """Move to CREATE_COMPLETE or CREATE_FAILED if the signals received so far say so."""
        if self.state != "CREATE_IN_PROGRESS":
            return
        successes: dict[str, Any] = {}
        for received, signal in read_signals(self.ref):
            if received > self.deadline:
                break
            unique_id = str(signal.get("UniqueId", ""))
            if signal.get("Status") == "FAILURE":
                message = (f"WaitCondition received failed message: '{signal.get('Reason', '')}' "
                           f"for uniqueId: {unique_id}")
                return self.settle(stack, "CREATE_FAILED", message)
            if signal.get("Status") == "SUCCESS":
                successes[unique_id] = signal.get("Data", "")
                if len(successes) >= self.count:
                    self.data = successes
                    return self.settle(stack, "CREATE_COMPLETE", None)
        if utcnow() > self.deadline:
            message = (f"WaitCondition timed out. Received {len(successes)} conditions "
                       f"when expecting {self.count}")
            self.settle(stack, "CREATE_FAILED", message)

    def settle(self, stack: Stack, state: str, reason: str | None) -> None:
        self.state = state
        add_resource_event(stack, self, state, reason)


# --- Secrets ---------------------------------------------------------------------------------


class StackSecret(StackResource, CloudFormationModel):
    """A Secrets Manager secret owned by the stack; Ref (and GetAtt Id) is its ARN."""

    __module__ = "moto.secretsmanager.emulator_ext"
    TYPE = SECRET
    ATTRIBUTES = {"Id": "ref"}

    def __init__(self, account_id: str, region: str, arn: str, logical_id: str):
        self.account_id, self.region = account_id, region
        self.ref, self.logical_id = arn, logical_id

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"  # absent: moto generates <stack>-<logical id>-<random>

    @staticmethod
    def generate(backend: Any, rules: dict[str, Any]) -> str:
        def flag(name: str, default: bool = False) -> bool:
            return str(rules.get(name, default)).lower() == "true"

        password = json.loads(backend.get_random_password(
            password_length=int(rules.get("PasswordLength", 32)),
            exclude_characters=rules.get("ExcludeCharacters", ""),
            exclude_numbers=flag("ExcludeNumbers"),
            exclude_punctuation=flag("ExcludePunctuation"),
            exclude_uppercase=flag("ExcludeUppercase"),
            exclude_lowercase=flag("ExcludeLowercase"),
            include_space=flag("IncludeSpace"),
            require_each_included_type=flag("RequireEachIncludedType", True),
        ))["RandomPassword"]
        if "SecretStringTemplate" not in rules:
            return password
        document = json.loads(rules["SecretStringTemplate"])
        document[rules["GenerateStringKey"]] = password
        return json.dumps(document)

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
        **kwargs: Any,
    ) -> StackSecret:
        properties = cloudformation_json["Properties"]
        backend = secretsmanager_backends[account_id][region_name]
        secret_string = properties.get("SecretString")
        if "GenerateSecretString" in properties:
            secret_string = cls.generate(backend, properties["GenerateSecretString"])
        created = json.loads(backend.create_secret(
            name=resource_name, secret_string=secret_string, secret_binary=None,
            description=properties.get("Description"), tags=properties.get("Tags"),
            kms_key_id=properties.get("KmsKeyId"), client_request_token=None,
            replica_regions=[], force_overwrite=False,
        ))
        return cls(account_id, region_name, created["ARN"], kwargs["LogicalId"])

    def delete(self, account_id: str, region_name: str) -> None:
        secretsmanager_backends[self.account_id][self.region].delete_secret(
            secret_id=self.ref, recovery_window_in_days=None, force_delete_without_recovery=True)


# --- Stacks: settle pending wait conditions lazily -------------------------------------------


def fail_stack(backend: CloudFormationBackend, stack: Stack, failed: list[str]) -> None:
    """A wait condition failed: roll back, or not, as the stack's OnFailure says."""

    def now(status: str, reason: str | None = None) -> None:  # StackStatus(Reason) and event
        stack.status, stack.status_reason = status, reason
        stack._add_stack_event(status, resource_status_reason=reason)

    on_failure = getattr(stack, "on_failure", "ROLLBACK")
    listed = f"The following resource(s) failed to create: [{', '.join(sorted(failed))}]. "
    if on_failure == "DO_NOTHING":
        return now("CREATE_FAILED", listed)
    now("ROLLBACK_IN_PROGRESS", listed + "Rollback requested by user.")
    for name, export in list(backend.exports.items()):
        if export.exporting_stack_id == stack.stack_id:
            backend.exports.pop(name)
    try:
        stack.resource_map.delete()  # what DeleteStack does: instances terminated, etc.
    except Exception as err:  # noqa: BLE001 - AWS reports any of these as ROLLBACK_FAILED
        return now("ROLLBACK_FAILED", str(err))
    # The resources are gone: keep moto's lazy resource and output maps from recreating them.
    stack.resource_map._resource_json_map = {}
    stack.output_map = parsing.OutputMap(stack.resource_map, {}, stack.stack_id)
    now("ROLLBACK_COMPLETE")
    if on_failure == "DELETE":
        backend.delete_stack(stack.stack_id)


def settle(backend: CloudFormationBackend) -> None:
    """Bring every stack that waits on a condition up to date with the signals received."""
    for stack in list(backend.stacks.values()):
        if stack.status != "CREATE_IN_PROGRESS":
            continue
        resources = stack.resource_map._parsed_resources.values()
        conditions = [r for r in resources if isinstance(r, WaitCondition)]
        if not conditions:
            continue
        for condition in conditions:
            condition.evaluate(stack)
        failed = [c.logical_id for c in conditions if c.state == "CREATE_FAILED"]
        if failed:
            fail_stack(backend, stack, failed)
        elif all(c.is_created() for c in conditions):
            stack.output_map = stack._create_output_map()  # outputs may GetAtt Data
            stack.verify_readiness()  # CREATE_COMPLETE and its event


def settling_first(method: Any) -> Any:
    def settled(self: CloudFormationBackend, *args: Any, **kwargs: Any) -> Any:
        settle(self)
        return method(self, *args, **kwargs)

    settled.__name__ = method.__name__
    return settled


SETTLING_CALLS = ("describe_stacks", "list_stacks", "describe_stack_events",
                  "describe_stack_resource", "describe_stack_resources",
                  "list_stack_resources", "delete_stack")
NO_OUTPUTS = {"CREATE_IN_PROGRESS", "CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_FAILED",
              "ROLLBACK_COMPLETE"}
_moto_create_stack = CloudFormationResponse.create_stack
_moto_outputs = Stack.outputs.fget  # type: ignore[attr-defined]


def create_stack_keeping_on_failure(self: CloudFormationResponse) -> Any:
    result = _moto_create_stack(self)
    on_failure = self._get_param("OnFailure") or (
        "DO_NOTHING" if self._get_bool_param("DisableRollback", False) else "ROLLBACK")
    stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
    stack.on_failure = on_failure
    stack.disable_rollback = on_failure == "DO_NOTHING"
    return result


# --- Public image parameters and public addresses --------------------------------------------

PUBLIC_IMAGES = {"/aws/service/debian/release/12/latest/amd64": "ami-0d5eff06f840b45e9"}


def with_public_images(check: Any) -> Any:
    """Wraps ParameterDict._check_loading_status: loads PUBLIC_IMAGES on first use."""

    def checked(self: Any, key: str) -> None:
        check(self, key)
        name = str(key or "")
        if name in PUBLIC_IMAGES and not getattr(self, "flightdeck_images_loaded", False):
            self.flightdeck_images_loaded = True
            defaultdict_get = super(ssm_models.ParameterDict, self).__getitem__
            for image_name, image_id in PUBLIC_IMAGES.items():
                defaultdict_get(image_name).append(ssm_models.Parameter(
                    account_id=self.account_id, name=image_name, value=image_id,
                    parameter_type="String", description=None, allowed_pattern=None,
                    keyid=None, last_modified_date=utcnow().timestamp(), version=1,
                    data_type="aws:ec2:image"))

    return checked


def verified_when_made(init: Any) -> Any:
    """Wraps ses EmailIdentity.__init__: verified for sending when its verification succeeded."""

    def made(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.verified_for_sending_status = self.verification_status == "SUCCESS"

    return made


EMPTY_NOTIFICATIONS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'
)


def with_empty_notifications(get: Any) -> Any:
    """Wraps S3Response.get_bucket_notification: S3's answer for a bucket without any."""

    def got(self: Any) -> Any:
        if not self.backend.get_bucket_notification_configuration(self.bucket_name):
            return 200, {"Content-Type": "application/xml"}, EMPTY_NOTIFICATIONS
        return get(self)

    return got


def test_range_address(second_octet: int) -> Any:
    """Addresses of 198.<second_octet>.0.0/16 in turn (198.18.0.0/15 is for network tests).

    Not random ones: among 65,024 addresses, two of 600 random Elastic IPs collide about
    as often as not (the birthday bound), and moto refuses to associate an address twice,
    so about one stack in 300 failed; at 10,000 clusters, hundreds would. In turn, the
    first 65,024 are all different.
    """
    counter = itertools.count()

    def next_address() -> str:
        n = next(counter) % (256 * 254)
        return f"198.{second_octet}.{n // 254}.{n % 254 + 1}"

    return next_address


def with_security_group_ids(create: Any) -> Any:
    """Wraps Instance.create_from_cloudformation_json: SecurityGroupIds count as SecurityGroups."""

    def created(cls: Any, resource_name: str, cloudformation_json: Any, *args: Any,
                **kwargs: Any) -> Any:
        properties = cloudformation_json.get("Properties", {})
        if properties.get("SecurityGroupIds"):
            groups = list(properties.get("SecurityGroups", [])) + list(properties["SecurityGroupIds"])
            cloudformation_json = {**cloudformation_json,
                                   "Properties": {**properties, "SecurityGroups": groups}}
        return create.__func__(cls, resource_name, cloudformation_json, *args, **kwargs)

    return classmethod(created)


def with_launch_template_profile_and_market(run: Any) -> Any:
    """Wraps run_instances: a launch template's instance profile and spot options apply."""

    def ran(self: Any, image_id: Any, count: int, user_data: Any, security_group_names: Any,
            **kwargs: Any) -> Any:
        reservation = run(self, image_id, count, user_data, security_group_names, **kwargs)
        if not kwargs.get("launch_template"):
            return reservation
        data = self._get_template_from_args(kwargs["launch_template"]).data
        profile = data.get("IamInstanceProfile") or {}
        spot = (data.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
        for instance in reservation.instances:
            if profile and not kwargs.get("iam_instance_profile"):
                self.associate_iam_instance_profile(
                    instance_id=instance.id, iam_instance_profile_arn=profile.get("Arn"),
                    iam_instance_profile_name=profile.get("Name"))
            if spot:
                instance.lifecycle = "spot"
        return reservation

    return ran


SUB_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_:]+)\}")


def sub_references(template: Any) -> list[str]:
    """The names ${Name} in every Fn::Sub string within template."""
    names: list[str] = []
    if isinstance(template, dict):
        for key, value in template.items():
            if key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                if isinstance(text, str):
                    names.extend(SUB_REFERENCE.findall(text))
            names.extend(sub_references(value))
    elif isinstance(template, list):
        for item in template:
            names.extend(sub_references(item))
    return names


def with_sub_references(references: Any) -> Any:
    """Wraps parsing.get_references_from_template: ${Name} in Fn::Sub counts as a Ref."""
    return lambda template: references(template) + sub_references(template)


_moto_validate_different_update = CloudFormationResponse._validate_different_update


def tag_changes_are_updates(self: CloudFormationResponse, incoming_params: Any,
                            stack_body: str, old_stack: Stack) -> None:
    """Wraps moto's "No updates are to be performed" check: new tags are a change."""
    tags = {item["Key"]: item["Value"] for item in self._get_param("Tags", [])}
    if tags and tags != old_stack.tags:
        return
    _moto_validate_different_update(self, incoming_params, stack_body, old_stack)


def with_defaulted_previous_values(resolve: Any) -> Any:
    """Wraps CloudFormationBackend._resolve_update_parameters: UsePreviousValue of a
    parameter the stack took from its template's default leaves it to that default."""

    def resolved(self: CloudFormationBackend, instance: Any,
                 incoming_params: list[dict[str, Any]]) -> Any:
        given = [p for p in incoming_params
                 if not (p.get("UsePreviousValue") and p["ParameterKey"] not in instance.parameters)]
        return resolve(self, instance, given)

    return resolved


_request_lock = threading.Lock()


def one_at_a_time(call: Any) -> Any:
    """Wraps the server's WSGI entry: requests are handled one after another."""

    def handled(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        with _request_lock:
            return call(self, environ, start_response)

    return handled


def install() -> None:
    """Register the resource types and patch moto's CloudFormation; call once."""
    for resource_type in (WAIT_CONDITION, WAIT_CONDITION_HANDLE):
        if resource_type in parsing.NULL_MODELS:
            parsing.NULL_MODELS.remove(resource_type)
    for cache in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cache.cache_clear()
    assert {WAIT_CONDITION, WAIT_CONDITION_HANDLE, SECRET} <= parsing.get_model_map().keys()
    for name in SETTLING_CALLS:
        setattr(CloudFormationBackend, name, settling_first(getattr(CloudFormationBackend, name)))
    CloudFormationResponse.create_stack = create_stack_keeping_on_failure  # type: ignore
    CloudFormationResponse._validate_different_update = tag_changes_are_updates  # type: ignore
    CloudFormationBackend._resolve_update_parameters = with_defaulted_previous_values(  # type: ignore
        CloudFormationBackend._resolve_update_parameters)
    Stack.outputs = property(  # type: ignore[method-assign,assignment]
        lambda self: None if self.status in NO_OUTPUTS else _moto_outputs(self))
    ssm_models.ParameterDict._check_loading_status = with_public_images(  # type: ignore
        ssm_models.ParameterDict._check_loading_status)
    werkzeug_app.DomainDispatcherApplication.__call__ = one_at_a_time(  # type: ignore
        werkzeug_app.DomainDispatcherApplication.__call__)
    parsing.get_references_from_template = with_sub_references(  # type: ignore[assignment]
        parsing.get_references_from_template)
    ec2_instances.InstanceBackend.run_instances = with_launch_template_profile_and_market(  # type: ignore
        ec2_instances.InstanceBackend.run_instances)
    ec2_instances.Instance.create_from_cloudformation_json = with_security_group_ids(  # type: ignore
        ec2_instances.Instance.create_from_cloudformation_json)
    S3Response.get_bucket_notification = with_empty_notifications(  # type: ignore[method-assign]
        S3Response.get_bucket_notification)
    ses_models.EmailIdentity.__init__ = verified_when_made(  # type: ignore[method-assign]
        ses_models.EmailIdentity.__init__)
    elastic_ip_addresses.random_ip = test_range_address(18)  # type: ignore[attr-defined]
    elastic_network_interfaces.random_public_ip = test_range_address(19)  # type: ignore


if __name__ == "__main__":
    install()
    server.main(sys.argv[1:])
