"""Tests of the bucket notification custom resource (standard library only).

    python3 -m unittest deploy/aws/test_bucket_notification.py      # from the repository root

S3 is a hand-written fake that records every call; CloudFormation's response URL is a
local HTTP server that records the PUTs.
"""

import copy
import http.server
import json
import pathlib
import sys
import threading
import unittest
from unittest import mock

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bucket_notification as bn  # noqa: E402

FUNCTION = "arn:aws:lambda:eu-west-2:123456789012:function:fd-install-HintForwarder-X1"
OTHER_FUNCTION = "arn:aws:lambda:eu-west-2:123456789012:function:thumbnails"


class ClientError(Exception):
    """Shaped like botocore's: the error code is in .response."""

    def __init__(self, code):
        super().__init__(code)
        self.response = {"Error": {"Code": code, "Message": code}}


class FakeS3:
    """Buckets' notification configurations in memory; records every call."""

    def __init__(self, buckets):
        self.buckets = copy.deepcopy(buckets)
        self.calls = []

    def get_bucket_notification_configuration(self, Bucket):  # noqa: N803 (boto3's names)
        self.calls.append(("get", Bucket))
        if Bucket not in self.buckets:
            raise ClientError("NoSuchBucket")
        return {**copy.deepcopy(self.buckets[Bucket]), "ResponseMetadata": {"HTTPStatusCode": 200}}

    def put_bucket_notification_configuration(self, Bucket, NotificationConfiguration):  # noqa: N803
        self.calls.append(("put", Bucket))
        if Bucket not in self.buckets:
            raise ClientError("NoSuchBucket")
        self.buckets[Bucket] = copy.deepcopy(NotificationConfiguration)

    def puts(self):
        return [c for c in self.calls if c[0] == "put"]


class Responses(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        self.server.responses.append((dict(self.headers), json.loads(self.rfile.read(length))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def existing():
    """A bucket that already sends events elsewhere."""
    return {
        "LambdaFunctionConfigurations": [
            {
                "Id": "thumbnails",
                "LambdaFunctionArn": OTHER_FUNCTION,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".png"}]}},
            }
        ],
        "QueueConfigurations": [
            {
                "Id": "audit",
                "QueueArn": "arn:aws:sqs:eu-west-2:123456789012:audit",
                "Events": ["s3:ObjectRemoved:*"],
            }
        ],
        "EventBridgeConfiguration": {},
    }


class BucketNotificationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Responses)
        cls.server.daemon_threads = True
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}/response?signed=1"

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        self.server.responses = []
        self.s3 = FakeS3({"flightdeck-users": existing(), "other-bucket": {}})
        patcher = mock.patch.object(bn, "_s3_client", lambda: self.s3)
        patcher.start()
        self.addCleanup(patcher.stop)

    def event(self, kind, physical_id=None, old=None, **props):
        properties = {
            "ServiceToken": "arn:aws:lambda:eu-west-2:123456789012:function:notify",
            "Bucket": "flightdeck-users",
            "FunctionArn": FUNCTION,
            "Prefix": "home/",
            "IdPrefix": "flightdeck-prod",
            **props,
        }
        event = {
            "RequestType": kind,
            "ResponseURL": self.url,
            "StackId": "arn:aws:cloudformation:eu-west-2:123456789012:stack/prod/1",
            "RequestId": "req-1",
            "LogicalResourceId": "BucketNotification",
            "ResourceType": "Custom::BucketNotification",
            "ResourceProperties": properties,
        }
        if physical_id is not None:
            event["PhysicalResourceId"] = physical_id
        if old is not None:
            event["OldResourceProperties"] = old
        return event

    def run_handler(self, event):
        with self.assertLogs("flightdeck.bucket_notification", level="INFO"):
            bn.handler(event, None)
        self.assertEqual(len(self.server.responses), 1, "exactly one response to CloudFormation")
        headers, body = self.server.responses.pop()
        self.assertEqual(headers.get("Content-Type"), "")
        for key in ("StackId", "RequestId", "LogicalResourceId"):
            self.assertEqual(body[key], event[key])
        return body

    def ours(self, bucket="flightdeck-users"):
        rules = self.s3.buckets[bucket].get("LambdaFunctionConfigurations", [])
        return sorted(r["Id"] for r in rules if r["LambdaFunctionArn"] == FUNCTION)

    def test_create_adds_the_rules_and_keeps_every_other_configuration(self):
        body = self.run_handler(self.event("Create"))
        self.assertEqual(body["Status"], "SUCCESS", body)
        self.assertEqual(body["PhysicalResourceId"], "flightdeck-users/flightdeck-prod")
        config = self.s3.buckets["flightdeck-users"]
        before = existing()
        self.assertEqual(config["QueueConfigurations"], before["QueueConfigurations"])
        self.assertEqual(config["EventBridgeConfiguration"], {})
        self.assertIn(before["LambdaFunctionConfigurations"][0], config["LambdaFunctionConfigurations"])
        self.assertEqual(self.ours(), ["flightdeck-prod-cf-create", "flightdeck-prod-cf-delete"])
        self.assertNotIn("ResponseMetadata", config)

    def test_create_again_changes_nothing(self):
        self.run_handler(self.event("Create"))
        self.run_handler(self.event("Create"))
        self.assertEqual(len(self.s3.puts()), 1, self.s3.calls)
        self.assertEqual(len(self.s3.buckets["flightdeck-users"]["LambdaFunctionConfigurations"]), 3)

    def test_update_replaces_the_rules_of_the_old_id_prefix(self):
        self.run_handler(self.event("Create"))
        old = self.event("Create")["ResourceProperties"]
        update = self.event("Update", "flightdeck-users/flightdeck-prod", old,
                            IdPrefix="flightdeck-prod2", Prefix="users/")
        body = self.run_handler(update)
        self.assertEqual(body["Status"], "SUCCESS", body)
        self.assertEqual(body["PhysicalResourceId"], "flightdeck-users/flightdeck-prod2")
        self.assertEqual(self.ours(), ["flightdeck-prod2-cf-create", "flightdeck-prod2-cf-delete"])
        prefixes = {
            rule["Value"]
            for r in self.s3.buckets["flightdeck-users"]["LambdaFunctionConfigurations"]
            if r["LambdaFunctionArn"] == FUNCTION
            for rule in r["Filter"]["Key"]["FilterRules"]
            if rule["Name"] == "prefix"
        }
        self.assertEqual(prefixes, {"users/"})

    def test_update_to_another_bucket_leaves_the_old_one_to_delete(self):
        self.run_handler(self.event("Create"))
        old = self.event("Create")["ResourceProperties"]
        body = self.run_handler(self.event("Update", "flightdeck-users/flightdeck-prod", old,
                                          Bucket="other-bucket"))
        self.assertEqual(body["PhysicalResourceId"], "other-bucket/flightdeck-prod")
        self.assertEqual(len(self.ours("other-bucket")), 2)
        # CloudFormation then deletes the old physical resource.
        self.run_handler(self.event("Delete", "flightdeck-users/flightdeck-prod", Bucket="other-bucket"))
        self.assertEqual(self.ours(), [])
        self.assertEqual(len(self.ours("other-bucket")), 2)

    def test_delete_removes_only_its_own_rules(self):
        self.run_handler(self.event("Create"))
        body = self.run_handler(self.event("Delete", "flightdeck-users/flightdeck-prod"))
        self.assertEqual(body["Status"], "SUCCESS", body)
        self.assertEqual(self.s3.buckets["flightdeck-users"], existing())

    def test_delete_of_a_gone_bucket_or_a_never_created_resource_succeeds(self):
        for physical_id in ("gone-bucket/flightdeck-prod", "none", ""):
            with self.subTest(physical_id=physical_id):
                body = self.run_handler(self.event("Delete", physical_id))
                self.assertEqual(body["Status"], "SUCCESS", body)
        self.assertEqual(self.s3.puts(), [])

    def test_a_failure_is_reported_to_cloudformation(self):
        body = self.run_handler(self.event("Create", Bucket="gone-bucket"))
        self.assertEqual(body["Status"], "FAILED")
        self.assertIn("NoSuchBucket", body["Reason"])
        broken = self.event("Create")
        del broken["ResourceProperties"]["FunctionArn"]
        body = self.run_handler(broken)
        self.assertEqual(body["Status"], "FAILED")
        self.assertIn("FunctionArn", body["Reason"])

    def test_the_rules_are_those_of_the_forwarders_notification_json(self):
        shipped = json.loads((HERE.parent / "lambda" / "notification.json").read_text())
        expected = shipped["LambdaFunctionConfigurations"]
        for rule in expected:
            rule["LambdaFunctionArn"] = FUNCTION
        self.assertEqual(bn.rules(FUNCTION, "home/", "flightdeck-hints"), expected)


if __name__ == "__main__":
    unittest.main()
