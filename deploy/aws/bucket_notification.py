"""flightdeck install: the users' bucket's hint notifications, as a CloudFormation custom resource.

The users' bucket exists before flightdeck and may already send events elsewhere, and S3
keeps one notification configuration per bucket: PutBucketNotificationConfiguration
replaces all of it. So this function (Python 3.12 on AWS Lambda; boto3 from the runtime)
reads the bucket's configuration, takes out the rules it owns, puts its own in, and writes
the result back; every other rule (topics, queues, other functions, EventBridge) stays as
it was. It owns exactly the rules whose Id is ``<IdPrefix>-cf-create`` and
``<IdPrefix>-cf-delete``; they are deploy/lambda/notification.json's two rules.

Resource properties (``Custom::BucketNotification``):

- ``Bucket``: the users' bucket;
- ``FunctionArn``: the hint forwarder (S3 must already be allowed to invoke it);
- ``Prefix``: the users' folders (the controller's ``bucket.home_prefix``), e.g. ``home/``;
- ``IdPrefix``: the start of the rules' Ids, unique per install.

Create and Update put the rules in (an Update first takes out the rules of the old
IdPrefix); Delete takes them out, and succeeds when the bucket is gone. The physical id is
``<bucket>/<IdPrefix>``: a new bucket or IdPrefix is a new resource, and CloudFormation then
deletes the old one, whose rules this takes out of the old bucket.

Limitation: S3 has no conditional write for this configuration. A change someone else makes
to the bucket's notifications between this function's read and write is lost; install or
update the stack when nobody else is changing them.
"""

from __future__ import annotations

import json
import logging
import urllib.request

LOG = logging.getLogger("flightdeck.bucket_notification")
LOG.setLevel(logging.INFO)

# The rules, as in deploy/lambda/notification.json: (Id suffix, key suffix, events).
RULES = (
    ("cf-create", ".cf-create", ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]),
    ("cf-delete", ".cf-delete", ["s3:ObjectCreated:*"]),
)
# The lists of a notification configuration; each entry has an Id.
KINDS = ("TopicConfigurations", "QueueConfigurations", "LambdaFunctionConfigurations")
# CloudFormation reads at most 4,096 bytes of the response.
MAX_REASON = 1000


def rules(function_arn: str, prefix: str, id_prefix: str) -> list:
    """The Lambda function configurations this resource owns."""
    return [
        {
            "Id": f"{id_prefix}-{name}",
            "LambdaFunctionArn": function_arn,
            "Events": list(events),
            "Filter": {
                "Key": {
                    "FilterRules": [
                        {"Name": "prefix", "Value": prefix},
                        {"Name": "suffix", "Value": suffix},
                    ]
                }
            },
        }
        for name, suffix, events in RULES
    ]


def rule_ids(id_prefix: str) -> set:
    """The Ids of the rules owned under ``id_prefix``."""
    return {f"{id_prefix}-{name}" for name, _, _ in RULES}


def merged(current: dict, remove_ids: set, add: list) -> dict:
    """``current`` (as GetBucketNotificationConfiguration returns it) without the rules
    named in ``remove_ids`` and with ``add``; everything else kept as it was."""
    out = {}
    for kind in KINDS:
        kept = [c for c in current.get(kind) or [] if c.get("Id") not in remove_ids]
        if kind == "LambdaFunctionConfigurations":
            kept += add
        if kept:
            out[kind] = kept
    if "EventBridgeConfiguration" in current:
        out["EventBridgeConfiguration"] = current["EventBridgeConfiguration"]
    return out


def apply(s3, bucket: str, remove_ids: set, add: list) -> dict:
    """Reads the bucket's configuration, merges, and writes it back if it changed."""
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    wanted = merged(current, remove_ids, add)
    if wanted != current:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=wanted)
    return wanted


def handler(event, context):
    """Lambda entry point for CloudFormation's Create, Update and Delete requests."""
    kind = event.get("RequestType")
    physical_id = event.get("PhysicalResourceId")
    try:
        props = event["ResourceProperties"]
        if kind == "Delete":
            physical_id = physical_id or ""
            bucket, _, id_prefix = physical_id.partition("/")
            if not (bucket and id_prefix):
                # Never created (a failed Create reports no such id): nothing to take out.
                return respond(event, "SUCCESS", physical_id or "none", "nothing to remove")
            try:
                apply(_s3_client(), bucket, rule_ids(id_prefix), [])
            except Exception as e:  # noqa: BLE001 (botocore's ClientError, without importing it)
                if _error_code(e) != "NoSuchBucket":
                    raise
            return respond(event, "SUCCESS", physical_id, f"rules {id_prefix}-* removed from {bucket}")

        if kind not in ("Create", "Update"):
            raise ValueError(f"unknown RequestType {kind!r}")
        bucket, id_prefix = props["Bucket"], props["IdPrefix"]
        ours = rules(props["FunctionArn"], props["Prefix"], id_prefix)
        remove = rule_ids(id_prefix)
        old = event.get("OldResourceProperties") or {}
        if kind == "Update" and old.get("Bucket") == bucket and old.get("IdPrefix"):
            remove |= rule_ids(old["IdPrefix"])
        apply(_s3_client(), bucket, remove, ours)
        physical_id = f"{bucket}/{id_prefix}"
        return respond(event, "SUCCESS", physical_id, f"rules {id_prefix}-* set on {bucket}")
    except Exception as e:  # noqa: BLE001 (every failure must reach CloudFormation)
        LOG.exception("flightdeck-bucket-notification: %s failed", kind)
        reason = f"{type(e).__name__}: {e}"
        if context is not None and hasattr(context, "log_stream_name"):
            reason += f" (log stream {context.log_stream_name})"
        return respond(event, "FAILED", physical_id or "none", reason)


def respond(event, status: str, physical_id: str, reason: str) -> dict:
    """Sends the result to CloudFormation's pre-signed response URL."""
    body = {
        "Status": status,
        "Reason": reason[:MAX_REASON],
        "PhysicalResourceId": physical_id,
        "StackId": event.get("StackId"),
        "RequestId": event.get("RequestId"),
        "LogicalResourceId": event.get("LogicalResourceId"),
        "Data": {},
    }
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        event["ResponseURL"],
        data=data,
        method="PUT",
        # The URL is pre-signed without a content type: sending one breaks the signature.
        headers={"Content-Type": "", "Content-Length": str(len(data))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (CloudFormation's URL)
        response.read()
    LOG.info("flightdeck-bucket-notification: %s %s: %s", event.get("RequestType"), status, reason)
    return body


def _s3_client():
    import boto3  # the Lambda runtime's; imported here so the tests need no boto3

    return boto3.client("s3")


def _error_code(error) -> str | None:
    response = getattr(error, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None
