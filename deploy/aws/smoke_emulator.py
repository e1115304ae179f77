#!/usr/bin/env python3
"""The emulator of deploy/aws/smoke.sh: the project's (deploy/local/emulator_ext.py) plus
three resource types of the install template that moto 5.2.5's CloudFormation lacks.

Usage:  smoke_emulator.py -H HOST -p PORT      (the same command line as moto_server)

moto skips a resource type it does not know (a warning in its log, nothing in the stack),
and a stack whose template has `Fn::GetAtt` of such a resource fails to create ("instance
of Fn::GetAtt references undefined resource"). moto does have the APIs behind these three,
so here each is created through moto's own backend, where the smoke test reads it back
with the aws CLI like any other resource:

- AWS::ServiceDiscovery::PrivateDnsNamespace (Name, Vpc, Description): Ref and GetAtt Id
  are the namespace id, GetAtt Arn its ARN;
- AWS::ServiceDiscovery::Service (Name, NamespaceId, DnsConfig, HealthCheckCustomConfig):
  Ref and GetAtt Id the service id, GetAtt Arn its ARN;
- AWS::SES::EmailIdentity (EmailIdentity): Ref the identity. moto makes no DKIM tokens,
  so its DkimDNSToken* attributes are not available (the smoke test uses an address
  identity, for which the template asks for none).

And one hand-over: moto runs the function behind a custom resource in Docker, with a
response URL on the Docker host. Here, when FLIGHTDECK_SMOKE_EVENTS names a directory, such
an invocation is written there instead, as <LogicalResourceId>-<RequestType>.json, with the
response URL pointing at FLIGHTDECK_SMOKE_ENDPOINT (this server): the smoke test runs the
function's handler on it, as Lambda would, and the handler's response completes the stack.

Nothing else is added: what moto skips otherwise, it still skips (deploy/aws/README.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "local"))

import emulator_ext  # noqa: E402 (refuses any moto but the pinned one)
from emulator_ext import StackResource  # noqa: E402
from moto import server  # noqa: E402
from moto.awslambda.models import LambdaFunction  # noqa: E402
from moto.cloudformation import parsing  # noqa: E402
from moto.core.common_models import CloudFormationModel  # noqa: E402
from moto.servicediscovery.models import servicediscovery_backends  # noqa: E402
from moto.sesv2.models import sesv2_backends  # noqa: E402


class PrivateDnsNamespace(StackResource, CloudFormationModel):
    __module__ = "moto.servicediscovery.smoke_emulator"
    TYPE = "AWS::ServiceDiscovery::PrivateDnsNamespace"
    ATTRIBUTES = {"Id": "ref", "Arn": "arn"}

    def __init__(self, account_id: str, region: str, namespace: Any, logical_id: str):
        self.account_id, self.region = account_id, region
        self.ref, self.arn, self.logical_id = namespace.id, namespace.arn, logical_id

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
        **kwargs: Any,
    ) -> PrivateDnsNamespace:
        props = cloudformation_json["Properties"]
        backend = servicediscovery_backends[account_id][region_name]
        backend.create_private_dns_namespace(
            name=props["Name"], creator_request_id=kwargs["LogicalId"],
            description=props.get("Description", ""), vpc=props["Vpc"], tags=[],
            properties=props.get("Properties", {}),
        )
        namespace = next(n for n in backend.namespaces.values() if n.name == props["Name"])
        return cls(account_id, region_name, namespace, kwargs["LogicalId"])

    def delete(self, account_id: str, region_name: str) -> None:
        servicediscovery_backends[self.account_id][self.region].delete_namespace(self.ref)


class DiscoveryService(StackResource, CloudFormationModel):
    __module__ = "moto.servicediscovery.smoke_emulator"
    TYPE = "AWS::ServiceDiscovery::Service"
    ATTRIBUTES = {"Id": "ref", "Arn": "arn", "Name": "name"}

    def __init__(self, account_id: str, region: str, service: Any, logical_id: str):
        self.account_id, self.region = account_id, region
        self.ref, self.arn, self.name = service.id, service.arn, service.name
        self.logical_id = logical_id

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
        **kwargs: Any,
    ) -> DiscoveryService:
        props = cloudformation_json["Properties"]
        service = servicediscovery_backends[account_id][region_name].create_service(
            name=props["Name"], namespace_id=props["NamespaceId"],
            creator_request_id=kwargs["LogicalId"], description=props.get("Description", ""),
            dns_config=props.get("DnsConfig"), health_check_config=props.get("HealthCheckConfig"),
            health_check_custom_config=props.get("HealthCheckCustomConfig"), tags=[],
            service_type=props.get("Type"),
        )
        return cls(account_id, region_name, service, kwargs["LogicalId"])

    def delete(self, account_id: str, region_name: str) -> None:
        servicediscovery_backends[self.account_id][self.region].delete_service(self.ref)


class EmailIdentity(StackResource, CloudFormationModel):
    __module__ = "moto.sesv2.smoke_emulator"
    TYPE = "AWS::SES::EmailIdentity"

    def __init__(self, account_id: str, region: str, identity: str, logical_id: str):
        self.account_id, self.region = account_id, region
        self.ref, self.logical_id = identity, logical_id

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str,
        **kwargs: Any,
    ) -> EmailIdentity:
        identity = cloudformation_json["Properties"]["EmailIdentity"]
        sesv2_backends[account_id][region_name].create_email_identity(
            email_identity=identity, tags=None, dkim_signing_attributes=None,
            configuration_set_name=None,
        )
        return cls(account_id, region_name, identity, kwargs["LogicalId"])

    def delete(self, account_id: str, region_name: str) -> None:
        sesv2_backends[self.account_id][self.region].delete_email_identity(self.ref)


def handed_to_the_test(invoke: Any) -> Any:
    """LambdaFunction.invoke, except that custom resource requests go to FLIGHTDECK_SMOKE_EVENTS."""
    events = os.environ.get("FLIGHTDECK_SMOKE_EVENTS")
    endpoint = os.environ.get("FLIGHTDECK_SMOKE_ENDPOINT", "")

    def wrapper(self: Any, body: Any, request_headers: Any, response_headers: Any) -> Any:
        try:
            event = json.loads(body)
        except (TypeError, ValueError):
            event = None
        if not (events and isinstance(event, dict) and "ResponseURL" in event):
            return invoke(self, body, request_headers, response_headers)
        url = event["ResponseURL"]
        event["ResponseURL"] = endpoint + url[url.index("/cloudformation_"):]
        name = f"{event['LogicalResourceId']}-{event['RequestType']}.json"
        partial = pathlib.Path(events) / f".{name}"
        partial.write_text(json.dumps(event))
        partial.rename(partial.with_name(name))  # whole, or not there yet
        return ""

    return wrapper


def install() -> None:
    for cache in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cache.cache_clear()
    added = {PrivateDnsNamespace.TYPE, DiscoveryService.TYPE, EmailIdentity.TYPE}
    assert added <= parsing.get_model_map().keys(), "moto did not register the smoke test's types"
    LambdaFunction.invoke = handed_to_the_test(LambdaFunction.invoke)  # type: ignore[method-assign]
    emulator_ext.install()


if __name__ == "__main__":
    install()
    server.main(sys.argv[1:])
