"""Tests of the hint forwarder against a local HTTP server (standard library only).

    python3 -m unittest deploy/lambda/test_forward.py      # from the repository root
"""

import http.server
import json
import os
import socket
import sys
import threading
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import forward  # noqa: E402

TOKEN = "test-token-1234"


def s3_event(*keys, bucket="flightdeck-users", event_name="ObjectCreated:Put"):
    """An S3 event notification as S3 sends it to Lambda (keys URL-encoded)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "eu-west-2",
                "eventTime": "2025-01-01T12:00:00.000Z",
                "eventName": event_name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "flightdeck-hints-cf-create",
                    "bucket": {
                        "name": bucket,
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {"key": key, "size": 297, "sequencer": "0055AED6DCD90281E5"},
                },
            }
            for key in keys
        ]
    }


def sns_wrap(event):
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "Sns": {
                    "Type": "Notification",
                    "TopicArn": "arn:aws:sns:eu-west-2:123456789012:flightdeck-hints",
                    "Subject": "Amazon S3 Notification",
                    "Message": json.dumps(event),
                },
            }
        ]
    }


def sqs_wrap(*bodies):
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:flightdeck-hints",
                "body": body if isinstance(body, str) else json.dumps(body),
            }
            for i, body in enumerate(bodies)
        ]
    }


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request; answers with the server's configured status."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.server.requests.append((self.path, dict(self.headers), body))
        status = self.server.status
        if status in (301, 302, 307, 308):
            self.send_response(status)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        reply = b'{"accepted":1}' if status < 300 else b"no"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST  # noqa: N815 (a followed redirect would arrive here)

    def log_message(self, *args):
        pass


class ForwardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        cls.server.daemon_threads = True
        cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.thread.start()
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}/hints"

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        self.server.requests = []
        self.server.status = 202
        env = {
            forward.URL_ENV: self.url,
            forward.TOKEN_ENV: TOKEN,
            forward.TIMEOUT_ENV: "2",
        }
        patcher = mock.patch.dict(os.environ, env, clear=False)
        patcher.start()
        self.addCleanup(patcher.stop)

    def forward(self, event):
        with self.assertLogs("flightdeck.forward", level="INFO") as logs:
            result = forward.handler(event, None)
        return result, logs.output

    def test_body_forwarded_unchanged_with_bearer_token(self):
        event = s3_event("home/alice/x.cf-create", "home/bob/my+cluster%3Fx.cf-delete")
        result, logs = self.forward(event)
        self.assertEqual(len(self.server.requests), 1)
        path, headers, body = self.server.requests[0]
        self.assertEqual(path, "/hints")
        self.assertEqual(json.loads(body), event)
        self.assertEqual(headers["Authorization"], f"Bearer {TOKEN}")
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(result, {"forwarded": 2, "posts": 1, "status": 202})
        self.assertEqual(len(logs), 1, logs)
        self.assertIn("forwarded 2 record(s)", logs[0])
        self.assertIn("flightdeck-users/home/alice/x.cf-create", logs[0])
        self.assertNotIn(TOKEN, logs[0])

    def test_token_is_stripped(self):
        with mock.patch.dict(os.environ, {forward.TOKEN_ENV: f"  {TOKEN}\n"}):
            self.forward(s3_event("home/alice/x.cf-create"))
        self.assertEqual(self.server.requests[0][1]["Authorization"], f"Bearer {TOKEN}")

    def test_non_2xx_raises(self):
        for status in (401, 413, 500, 503):
            with self.subTest(status=status):
                self.server.status = status
                with self.assertLogs("flightdeck.forward", level="ERROR") as logs:
                    with self.assertRaises(forward.ForwardError) as raised:
                        forward.handler(s3_event("home/alice/x.cf-create"), None)
                self.assertIn(f"HTTP {status}", str(raised.exception))
                self.assertEqual(len(logs.output), 1)
                self.assertIn("FAILED", logs.output[0])

    def test_redirect_is_not_followed(self):
        self.server.status = 302
        with self.assertLogs("flightdeck.forward", level="ERROR"):
            with self.assertRaises(forward.ForwardError) as raised:
                forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertIn("HTTP 302", str(raised.exception))
        self.assertEqual(len(self.server.requests), 1)

    def test_network_error_raises(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}/hints"
        with mock.patch.dict(os.environ, {forward.URL_ENV: closed}):
            with self.assertLogs("flightdeck.forward", level="ERROR"):
                with self.assertRaises(forward.ForwardError) as raised:
                    forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertIn("network error", str(raised.exception))

    def test_timeout_raises(self):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)  # accepts the connection, never answers
            silent = f"http://127.0.0.1:{listener.getsockname()[1]}/hints"
            env = {forward.URL_ENV: silent, forward.TIMEOUT_ENV: "0.3"}
            with mock.patch.dict(os.environ, env):
                with self.assertLogs("flightdeck.forward", level="ERROR"):
                    with self.assertRaises(forward.ForwardError):
                        forward.handler(s3_event("home/alice/x.cf-create"), None)

    def test_sns_wrapped_event_is_unwrapped(self):
        inner = s3_event("home/alice/x.cf-create")
        result, _ = self.forward(sns_wrap(inner))
        self.assertEqual(json.loads(self.server.requests[0][2]), inner)
        self.assertEqual(result["forwarded"], 1)

    def test_sqs_wrapped_events_are_unwrapped(self):
        a = s3_event("home/alice/x.cf-create")
        b = s3_event("home/bob/y.cf-delete", event_name="ObjectRemoved:Delete")
        self.forward(sqs_wrap(a, b))
        self.assertEqual(len(self.server.requests), 1)
        body = json.loads(self.server.requests[0][2])
        self.assertEqual(body, {"Records": a["Records"] + b["Records"]})

    def test_sns_in_sqs_is_unwrapped(self):
        inner = s3_event("home/alice/x.cf-create")
        envelope = {"Type": "Notification", "MessageId": "1", "Message": json.dumps(inner)}
        self.forward(sqs_wrap(envelope))
        self.assertEqual(json.loads(self.server.requests[0][2]), inner)

    def test_event_without_s3_records_posts_nothing(self):
        test_event = {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Bucket": "flightdeck-users",
        }
        malformed = (sqs_wrap("not json"), sqs_wrap({"Type": "Notification"}), sns_wrap(None))
        for event in (test_event, sqs_wrap(test_event), *malformed, {}):
            with self.subTest(event=event):
                with self.assertLogs("flightdeck.forward", level="INFO") as logs:
                    result = forward.handler(event, None)
                self.assertEqual(result["forwarded"], 0)
                self.assertIn("nothing forwarded", logs.output[-1])
        self.assertEqual(self.server.requests, [])

    def test_large_batches_are_split_under_the_limit(self):
        key = "home/alice/" + "k" * 900 + ".cf-create"
        records = s3_event(*[f"{key}{i}" for i in range(400)])["Records"]
        wrapped = sqs_wrap(*({"Records": [r]} for r in records))
        result, _ = self.forward(wrapped)
        self.assertGreater(result["posts"], 1)
        forwarded = []
        for _, _, body in self.server.requests:
            self.assertLessEqual(len(body), forward.MAX_BODY)
            forwarded.extend(json.loads(body)["Records"])
        self.assertEqual(forwarded, records)

    def test_missing_url_fails_clearly(self):
        with mock.patch.dict(os.environ):
            del os.environ[forward.URL_ENV]
            with self.assertRaises(forward.ForwardError) as raised:
                forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertIn("FLIGHTDECK_HINTS_URL is not set", str(raised.exception))
        self.assertEqual(self.server.requests, [])

    def test_bad_url_and_missing_token_fail_clearly(self):
        cases = {
            forward.URL_ENV: ("ftp://x/hints", "must be an http:// or https:// URL"),
            forward.TOKEN_ENV: ("", "FLIGHTDECK_HINT_TOKEN is not set"),
            forward.TIMEOUT_ENV: ("soon", "must be a number of seconds"),
        }
        for name, (value, message) in cases.items():
            with self.subTest(name=name):
                with mock.patch.dict(os.environ, {name: value}):
                    with self.assertRaises(forward.ForwardError) as raised:
                        forward.handler(s3_event("home/alice/x.cf-create"), None)
                self.assertIn(message, str(raised.exception))
        self.assertEqual(self.server.requests, [])


class Replica(http.server.BaseHTTPRequestHandler):
    """One controller replica: the leader takes hints (202), a standby answers as the
    controller's does (503, Retry-After, the leader's identity in a JSON body)."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        self.server.requests.append((dict(self.headers), self.rfile.read(length)))
        status = self.server.status
        if status == 503:
            reply = json.dumps({"error": "not the leader", "leader": self.server.leader}).encode()
        else:
            reply = b'{"accepted":1}' if status < 300 else b"no"
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


HOST = "controllers.flightdeck.test"
REAL_GETADDRINFO = socket.getaddrinfo


class ReplicasTest(unittest.TestCase):
    """Several controllers behind one name (AWS Cloud Map: one A record per task).

    The replicas listen on 127.0.0.1, .2 and .3 (all loopback on Linux) at one port, and
    the name resolves to those addresses in that order.
    """

    ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]

    @classmethod
    def setUpClass(cls):
        cls.replicas = []
        for _ in range(20):  # a port free on all three addresses
            port = 0
            servers = []
            try:
                for address in cls.ADDRESSES:
                    server = http.server.ThreadingHTTPServer((address, port), Replica)
                    port = server.server_address[1]
                    servers.append(server)
            except OSError:
                for server in servers:
                    server.server_close()
                continue
            cls.replicas, cls.port = servers, port
            break
        if not cls.replicas:
            raise RuntimeError("no port free on 127.0.0.1-3 for the replicas")
        for server in cls.replicas:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        for server in cls.replicas:
            server.shutdown()
            server.server_close()

    def setUp(self):
        for server in self.replicas:
            server.requests = []
            server.status = 503
            server.leader = "flightdeck-7d9f-x2"
        self.answers = list(self.ADDRESSES)
        env = {
            forward.URL_ENV: f"http://{HOST}:{self.port}/hints",
            forward.TOKEN_ENV: TOKEN,
            forward.TIMEOUT_ENV: "2",
        }
        for patcher in (
            mock.patch.dict(os.environ, env, clear=False),
            mock.patch.object(socket, "getaddrinfo", self.resolve),
        ):
            patcher.start()
            self.addCleanup(patcher.stop)

    def resolve(self, host, port, *args, **kwargs):
        """The name resolves to self.answers; any other name as usual."""
        if host != HOST:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        if not self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.answers]

    def asked(self):
        """How many requests each replica received."""
        return [len(server.requests) for server in self.replicas]

    def test_standby_is_passed_over_for_the_leader(self):
        self.replicas[1].status = 202
        with self.assertLogs("flightdeck.forward", level="INFO") as logs:
            result = forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertEqual(result, {"forwarded": 1, "posts": 1, "status": 202})
        self.assertEqual(self.asked(), [1, 1, 0])
        for headers, body in self.replicas[0].requests + self.replicas[1].requests:
            self.assertEqual(headers["Host"], f"{HOST}:{self.port}")
            self.assertEqual(headers["Authorization"], f"Bearer {TOKEN}")
            self.assertEqual(json.loads(body), s3_event("home/alice/x.cf-create"))
        self.assertEqual(len(logs.output), 1, logs.output)
        self.assertIn("from 127.0.0.2", logs.output[0])
        self.assertIn("127.0.0.1: HTTP 503", logs.output[0])
        self.assertIn("leader flightdeck-7d9f-x2", logs.output[0])

    def test_no_leader_anywhere_raises_after_asking_each_once(self):
        self.replicas[2].leader = None  # a standby that has not seen a leader yet
        with self.assertLogs("flightdeck.forward", level="ERROR") as logs:
            with self.assertRaises(forward.ForwardError) as raised:
                forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertEqual(self.asked(), [1, 1, 1])
        message = str(raised.exception)
        for address in self.ADDRESSES:
            self.assertIn(f"{address}: HTTP 503", message)
        self.assertEqual(len(logs.output), 1)
        self.assertIn("FAILED", logs.output[0])

    def test_an_address_nobody_listens_on_is_passed_over(self):
        self.answers = ["127.0.0.4", "127.0.0.3"]  # a task gone, its record not yet
        self.replicas[2].status = 202
        with self.assertLogs("flightdeck.forward", level="INFO") as logs:
            result = forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertEqual(result["status"], 202)
        self.assertEqual(self.asked(), [0, 0, 1])
        self.assertIn("127.0.0.4: network error", logs.output[0])

    def test_an_answer_every_replica_would_give_fails_at_once(self):
        for status in (401, 413, 500):
            with self.subTest(status=status):
                self.setUp()
                self.replicas[0].status = status
                self.replicas[1].status = 202
                with self.assertLogs("flightdeck.forward", level="ERROR"):
                    with self.assertRaises(forward.ForwardError) as raised:
                        forward.handler(s3_event("home/alice/x.cf-create"), None)
                self.assertIn(f"HTTP {status}", str(raised.exception))
                self.assertEqual(self.asked(), [1, 0, 0])

    def test_later_batches_go_to_the_leader_first(self):
        self.replicas[2].status = 202
        key = "home/alice/" + "k" * 900 + ".cf-create"
        records = s3_event(*[f"{key}{i}" for i in range(400)])["Records"]
        with self.assertLogs("flightdeck.forward", level="INFO"):
            result = forward.handler(sqs_wrap(*({"Records": [r]} for r in records)), None)
        self.assertGreater(result["posts"], 1)
        self.assertEqual(self.asked(), [1, 1, result["posts"]])
        forwarded = [r for _, body in self.replicas[2].requests for r in json.loads(body)["Records"]]
        self.assertEqual(forwarded, records)

    def test_repeated_addresses_are_asked_once(self):
        self.answers = ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
        with self.assertLogs("flightdeck.forward", level="ERROR"):
            with self.assertRaises(forward.ForwardError):
                forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertEqual(self.asked(), [1, 1, 0])

    def test_a_name_without_addresses_fails_clearly(self):
        self.answers = []  # no task registered
        with self.assertLogs("flightdeck.forward", level="ERROR"):
            with self.assertRaises(forward.ForwardError) as raised:
                forward.handler(s3_event("home/alice/x.cf-create"), None)
        self.assertIn(f"cannot resolve {HOST}", str(raised.exception))
        self.assertEqual(self.asked(), [0, 0, 0])


if __name__ == "__main__":
    unittest.main()
