"""flightdeck hint forwarder: an AWS Lambda function (Python 3.12, standard library only).

S3 tells this function when a user writes or removes a request file; the function POSTs
the S3 event notification, as JSON, to the controller's ``POST /hints`` endpoint, so the
controller looks at the named cluster at once instead of at its next periodic resync.

Events accepted (``handler(event, context)``):

- an S3 event notification, as S3 sends it to Lambda (``{"Records": [{"eventSource":
  "aws:s3", "s3": {...}}]}``): forwarded unchanged;
- an SNS-wrapped S3 event (S3 -> SNS topic -> this function): each record's
  ``Sns.Message`` is the S3 event; the S3 records are forwarded;
- an SQS-wrapped S3 event (S3 -> SQS queue -> this function): each record's ``body`` is
  the S3 event, or an SNS notification whose ``Message`` is (S3 -> SNS -> SQS without raw
  message delivery); the S3 records are forwarded.

Unwrapped S3 records are forwarded unchanged, gathered into one ``{"Records": [...]}``
document (several POSTs when that would exceed the controller's 256 KiB limit). Events
without S3 records, such as the ``s3:TestEvent`` S3 sends when a notification is
configured, and wrapped messages that are not JSON, are logged and dropped: retrying
them would not help.

Environment:

- ``FLIGHTDECK_HINTS_URL`` (required): the controller's hint endpoint, e.g.
  ``https://flightdeck.example.org/hints`` or, for controllers registered in a private DNS
  namespace, ``http://controller.flightdeck.internal:8080/hints``;
- ``FLIGHTDECK_HINT_TOKEN`` (required): the bearer token the controller expects;
- ``FLIGHTDECK_HINTS_TIMEOUT`` (optional): seconds to wait for the controller, default 5.

Several controllers: the URL's host name may resolve to several addresses (one per
controller replica, as AWS Cloud Map's multivalue answers do). Each address is tried in
turn, with the host name kept in the ``Host`` header and for TLS, until one answers 2xx.
Only the leader acts on hints: a standby answers 503 (with ``Retry-After`` and the
leader's identity in a JSON body), and so does nothing else, so a 503, a network error or a
time-out means "try the next address". Any other answer (401 bad token, 413 too large, ...)
would be the same from every replica and fails at once.

Each call logs one line. When no address accepts the hint, or on any other non-2xx
answer, the failure is logged and raised, so Lambda's own retry applies (S3 and SNS invoke asynchronously: two more tries;
SQS makes the message visible again). Losing a hint anyway is harmless: hints only make
the controller look sooner, and its periodic full resync converges to the same state
without them. The event's content is never trusted by the controller, only the keys it
names.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import time
import urllib.parse

LOG = logging.getLogger("flightdeck.forward")
LOG.setLevel(logging.INFO)

URL_ENV = "FLIGHTDECK_HINTS_URL"
TOKEN_ENV = "FLIGHTDECK_HINT_TOKEN"
TIMEOUT_ENV = "FLIGHTDECK_HINTS_TIMEOUT"
DEFAULT_TIMEOUT = 5.0

# The controller answers 413 above this; larger batches are split.
MAX_BODY = 256 * 1024
# Keys named in the log line, at most.
LOGGED_KEYS = 3


class ForwardError(RuntimeError):
    """The controller did not accept the hint (or the forwarder is not configured)."""


class _Refused(ForwardError):
    """This address did not take the hint, but another one may: a standby or a dead replica."""


class Target:
    """The hint endpoint, split: where to connect and what to ask for."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ForwardError(f"{URL_ENV} must be an http:// or https:// URL, not {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ForwardError(f"{URL_ENV} has a bad port: {url!r}") from None
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def handler(event, context):  # noqa: ARG001 (the Lambda signature)
    """Lambda entry point: forward the S3 records in ``event`` to the controller."""
    target, token, timeout = _settings()
    url = target.url
    records = s3_records(event)
    if not records:
        LOG.info("flightdeck-forward: no S3 records in the event; nothing forwarded")
        return {"forwarded": 0, "posts": 0}

    if _is_s3_event(event):
        bodies = [_dump(event)]
        if len(bodies[0]) > MAX_BODY:
            bodies = _batches(records)
    else:
        bodies = _batches(records)

    keys = [_key(r) for r in records]
    started = time.monotonic()
    statuses = []
    passed = []  # what each address said before one took the hint
    try:
        addresses = addresses_of(target)
        for body in bodies:
            status, address, refusals = _post_to_any(target, addresses, token, timeout, body)
            statuses.append(status)
            passed.extend(refusals)
            # The next batch goes first to the address that took this one (the leader).
            addresses.remove(address)
            addresses.insert(0, address)
    except ForwardError as e:
        LOG.error(
            "flightdeck-forward: FAILED %d record(s) %s to %s after %d ms: %s",
            len(records), _describe(keys), url, _ms(started), e,
        )
        raise
    LOG.info(
        "flightdeck-forward: forwarded %d record(s) %s to %s in %d post(s), status %s from %s%s, %d ms",
        len(records), _describe(keys), url, len(bodies),
        ",".join(str(s) for s in statuses), addresses[0],
        f" (passed over: {'; '.join(passed)})" if passed else "", _ms(started),
    )
    return {"forwarded": len(records), "posts": len(bodies), "status": statuses[-1]}


def addresses_of(target: Target) -> list:
    """Every address the target's host name resolves to, in the resolver's order, once each."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ForwardError(f"cannot resolve {target.host}: {e}") from e
    addresses = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    if not addresses:
        raise ForwardError(f"cannot resolve {target.host}: no addresses")
    return addresses


def _post_to_any(target, addresses, token, timeout, body):
    """POSTs ``body`` to each address in turn until one takes it.

    Returns (status, address, what the addresses tried before it said). Raises ForwardError
    when none takes it, or at once on an answer that every replica would give.
    """
    refusals = []
    for address in addresses:
        try:
            return _post(target, address, token, timeout, body), address, refusals
        except _Refused as e:
            refusals.append(f"{address}: {e}")
    raise ForwardError(f"no controller took the hint: {'; '.join(refusals)}")


def s3_records(event) -> list:
    """The S3 event records in ``event``, whether direct, SNS-wrapped or SQS-wrapped."""
    out = []
    for record in _records(event):
        source = record.get("eventSource") or record.get("EventSource")
        if _is_s3_record(record):
            out.append(record)
        elif source == "aws:sns" or "Sns" in record:
            sns = record.get("Sns")
            message = sns.get("Message") if isinstance(sns, dict) else None
            out.extend(s3_records(_parse(message, "SNS message")))
        elif source == "aws:sqs" or "body" in record:
            inner = _parse(record.get("body"), "SQS message body")
            if isinstance(inner, dict) and inner.get("Type") == "Notification":
                inner = _parse(inner.get("Message"), "SNS message in SQS body")
            out.extend(s3_records(inner))
        else:
            LOG.warning("flightdeck-forward: skipping a record of unknown source %r", source)
    return out


def _records(event) -> list:
    if not isinstance(event, dict):
        return []
    records = event.get("Records")
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _is_s3_event(event) -> bool:
    """True when ``event`` is an S3 event notification itself (nothing to unwrap)."""
    records = event.get("Records") if isinstance(event, dict) else None
    return bool(records) and isinstance(records, list) and all(
        isinstance(r, dict) and _is_s3_record(r) for r in records
    )


def _is_s3_record(record) -> bool:
    return record.get("eventSource") == "aws:s3" or "s3" in record


def _parse(text, what):
    """The JSON document in ``text``, or None (logged) when it is not one: retrying would not help."""
    if isinstance(text, dict):
        return text
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        LOG.warning("flightdeck-forward: skipping a record whose %s is not JSON: %s", what, e)
        return None


def _settings():
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        raise ForwardError(
            f"{URL_ENV} is not set: set it to the controller's hint endpoint, "
            "e.g. https://flightdeck.example.org/hints"
        )
    target = Target(url)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ForwardError(
            f"{TOKEN_ENV} is not set: set it to the controller's hint token "
            "(the content of its http.hint_token_file)"
        )
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ForwardError(f"{TIMEOUT_ENV} must be a number of seconds, not {raw!r}") from None
    if timeout <= 0:
        raise ForwardError(f"{TIMEOUT_ENV} must be positive, not {raw!r}")
    return target, token, timeout


def _dump(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _batches(records) -> list:
    """``{"Records": [...]}`` bodies of at most MAX_BODY bytes (a single record may exceed it)."""
    bodies, batch = [], []
    for record in records:
        if batch and len(_dump({"Records": batch + [record]})) > MAX_BODY:
            bodies.append(_dump({"Records": batch}))
            batch = []
        batch.append(record)
    bodies.append(_dump({"Records": batch}))
    return bodies


def _post(target, address, token, timeout, body) -> int:
    """One POST to one address of the target; the status when it is 2xx.

    Raises _Refused for a 503 (a standby), a network error or a time-out, ForwardError for
    any other answer. A redirect is an answer like any other: http.client never follows it
    (following would turn the POST into a GET).
    """
    if target.tls:
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    # Connect to this address, while the Host header and TLS (SNI, certificate check) keep
    # using the host name: http.client opens its socket through this attribute.
    def connect(host_port, *args):
        return socket.create_connection((address, host_port[1]), *args)

    connection._create_connection = connect
    try:
        connection.request(
            "POST",
            target.path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "User-Agent": "flightdeck-hint-forwarder",
            },
        )
        response = connection.getresponse()
        status, reason = response.status, response.reason
        detail = response.read(200 if status >= 300 else 4096)
    except (OSError, http.client.HTTPException) as e:
        raise _Refused(f"network error: {e or type(e).__name__}") from e
    finally:
        connection.close()
    if 200 <= status < 300:
        return status
    message = f"HTTP {status} {reason}"
    if status == 503:
        leader = _leader(detail)
        raise _Refused(message + (f" (standby; leader {leader})" if leader else " (standby)"))
    text = detail.decode("utf-8", "replace").strip()
    raise ForwardError(message + (f": {text}" if text else ""))


def _leader(body: bytes):
    """The leader named in a standby's 503 body, if it names one."""
    try:
        leader = json.loads(body).get("leader")
    except (ValueError, AttributeError):
        return None
    return leader if isinstance(leader, str) and leader else None


def _key(record) -> str:
    try:
        return f'{record["s3"]["bucket"]["name"]}/{record["s3"]["object"]["key"]}'
    except (KeyError, TypeError):
        return "?"


def _describe(keys) -> str:
    shown = ", ".join(keys[:LOGGED_KEYS])
    more = len(keys) - LOGGED_KEYS
    return f"[{shown}{f', +{more} more' if more > 0 else ''}]"


def _ms(started) -> int:
    return int((time.monotonic() - started) * 1000)
