"""Custom resources (`Custom::*`, `AWS::CloudFormation::CustomResource`) backed by Lambda.

CloudFormation's protocol, as AWS runs it: the function named by `ServiceToken` is invoked
(asynchronously on AWS; here by the local Lambda runtime, see moto_ext/awslambda) with a
Create / Update / Delete event carrying a response URL; the handler PUTs its answer there —
`{"Status": "SUCCESS"|"FAILED", "Reason", "PhysicalResourceId", "Data"}` — and the resource
takes that outcome. A FAILED answer fails the resource with the handler's Reason. An update
that returns a new PhysicalResourceId is a replacement: the old one gets a Delete.

The response URL points at a loopback collector in the endpoint process (its own thread and
ephemeral port). A handler that finishes without answering fails the resource at once (AWS
would wait an hour for it, then fail).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.cloudformation.exceptions import ValidationError
from moto.core.common_models import CloudFormationModel

from local_backend.moto_ext.awslambda import runtime
from local_backend.moto_ext.cfn_resource import CfnCall, CfnResource

log = logging.getLogger("enclavekit.endpoint.cloudformation")

CUSTOM_TYPE = "AWS::CloudFormation::CustomResource"
# Seconds to wait for a response after the handler exited (it normally answers before).
_GRACE = 2.0


def is_custom_type(resource_type: str) -> bool:
    """Whether `resource_type` is a custom resource (AWS's generic type or `Custom::*`)."""
    return resource_type == CUSTOM_TYPE or resource_type.startswith("Custom::")


class CustomResourceFailed(Exception):
    """The handler answered FAILED, answered nothing, or could not be run."""


class _Collector:
    """The loopback HTTP server the response URLs point at; one per endpoint process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._events: dict[str, threading.Event] = {}
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        with self._lock:
            if self._server is None:
                collector = self

                class Handler(BaseHTTPRequestHandler):
                    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                        token = self.path.split("?", 1)[0].removeprefix(runtime.RESPONSE_PREFIX)
                        size = int(self.headers.get("Content-Length") or 0)
                        body = self.rfile.read(size)
                        ok = collector.deliver(token, body)
                        self.send_response(200 if ok else 403)
                        self.send_header("Content-Length", "0")
                        self.end_headers()

                    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                        return

                self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
                self._server.daemon_threads = True
                threading.Thread(target=self._server.serve_forever, daemon=True).start()
                runtime.set_response_port(self._server.server_address[1])
            return int(self._server.server_address[1])

    def expect(self) -> tuple[str, str]:
        """A fresh (token, response URL) pair."""
        port = self.start()
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._events[token] = threading.Event()
        url = f"http://127.0.0.1:{port}{runtime.RESPONSE_PREFIX}{token}?X-Amz-Signature=local"
        return token, url

    def deliver(self, token: str, body: bytes) -> bool:
        with self._lock:
            event = self._events.get(token)
            if event is None:
                return False
            try:
                self._pending[token] = json.loads(body or b"{}")
            except ValueError:
                self._pending[token] = {"Status": "FAILED", "Reason": "response is not JSON"}
            event.set()
        return True

    def wait(self, token: str, timeout: float) -> dict[str, Any] | None:
        """The answer for `token`, waiting at most `timeout` seconds for it."""
        event = self._events.get(token)
        if event is not None:
            event.wait(timeout)
        with self._lock:
            return self._pending.pop(token, None)

    def forget(self, token: str) -> None:
        """Stop accepting answers for `token` (a late PUT then gets 403)."""
        with self._lock:
            self._events.pop(token, None)
            self._pending.pop(token, None)


COLLECTOR = _Collector()


def _function(service_token: str, account_id: str, region: str) -> Any:
    from moto.awslambda.models import lambda_backends

    if not isinstance(service_token, str) or ":lambda:" not in service_token:
        raise CustomResourceFailed(
            f"ServiceToken: expected a Lambda function ARN, found {service_token!r} "
            "(SNS-backed custom resources are not emulated)"
        )
    try:
        return lambda_backends[account_id][region].get_function(service_token)
    except Exception as exc:  # noqa: BLE001 - AWS's wording for an unknown function
        raise CustomResourceFailed(
            f"Received response status [FAILED] from custom resource. Message returned: "
            f"Function not found: {service_token}"
        ) from exc


def _service_timeout(properties: dict[str, Any]) -> float:
    try:
        return float(properties.get("ServiceTimeout") or 3600)
    except (TypeError, ValueError):
        return 3600.0


def send(
    request_type: str,
    *,
    service_token: str,
    stack_id: str,
    logical_id: str,
    resource_type: str,
    properties: dict[str, Any],
    account_id: str,
    region: str,
    physical_id: str | None = None,
    old_properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send one request to the handler and return its SUCCESS answer (else raise)."""
    fn = _function(service_token, account_id, region)
    token, url = COLLECTOR.expect()
    event: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": service_token,
        "ResponseURL": url,
        "StackId": stack_id,
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": logical_id,
        "ResourceType": resource_type,
        "ResourceProperties": properties,
    }
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    if old_properties is not None:
        event["OldResourceProperties"] = old_properties
    try:
        result = runtime.invoke(fn, event, account_id=account_id, region=region)
        answer = COLLECTOR.wait(token, 0)
        if answer is None:
            # The handler may have handed the answer to asynchronous work (cr.Provider's
            # waiter state machine): wait for it, up to the resource's ServiceTimeout
            # (AWS: 1 h), then a short grace for a PUT still on its way.
            runtime.wait_async_work(_service_timeout(properties))
            answer = COLLECTOR.wait(token, _GRACE)
    except runtime.RuntimeNotEmulated as exc:
        raise CustomResourceFailed(str(exc)) from exc
    finally:
        COLLECTOR.forget(token)
    if answer is None:
        detail = "" if result.ok else f" ({result.error_type}: {result.error_message})"
        raise CustomResourceFailed(
            f"CloudFormation did not receive a response from your Custom Resource{detail}. "
            f"Please check your logs for requestId [{event['RequestId']}]."
        )
    if answer.get("Status") != "SUCCESS":
        reason = answer.get("Reason") or "no reason given"
        raise CustomResourceFailed(
            f"Received response status [FAILED] from custom resource. Message returned: {reason}"
        )
    return answer


def stringify(value: Any) -> Any:
    """Property values as the handler receives them: CloudFormation turns every scalar into a
    string (true -> "true", 5 -> "5"), keeping lists and objects."""
    if isinstance(value, dict):
        return {k: stringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stringify(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return value
    return str(value)


class CustomResource(CfnResource, CloudFormationModel):
    """One custom resource: its physical id and the Data its handler returned."""

    CFN_TYPE = CUSTOM_TYPE
    CFN_REF = "physical_id"

    def __init__(
        self,
        logical_id: str,
        resource_type: str,
        stack_id: str,
        properties: dict[str, Any],
        account_id: str,
        region_name: str,
    ):
        self.logical_id = logical_id
        self.resource_type = resource_type
        self.stack_id = stack_id
        self.properties = properties
        self.account_id = account_id
        self.region_name = region_name
        self._apply({})

    def _apply(self, answer: dict[str, Any]) -> None:
        self.physical_id = str(answer.get("PhysicalResourceId") or self.logical_id)
        data = answer.get("Data")
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    def _send(self, request_type: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """`send` a request about this resource with `properties` (the handler's from them)."""
        return send(
            request_type,
            service_token=properties.get("ServiceToken", ""),
            stack_id=self.stack_id,
            logical_id=self.logical_id,
            resource_type=self.resource_type,
            properties=properties,
            account_id=self.account_id,
            region=self.region_name,
            **extra,
        )

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return True

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name not in self.data:
            raise ValidationError(
                message=(
                    f"CustomResource attribute error: Vendor response doesn't contain "
                    f"{attribute_name} key in object {self.stack_id}|{self.logical_id}"
                )
            )
        return self.data[attribute_name]

    @classmethod
    def cfn_create(cls, call: CfnCall) -> CustomResource:
        resource = cls(
            call.logical_id or call.name,
            call.resource_type or CUSTOM_TYPE,
            call.stack_id,
            stringify(dict(call.props)),
            call.account_id,
            call.region,
        )
        resource._apply(resource._send("Create", resource.properties))
        return resource

    @classmethod
    def cfn_update(cls, old: CustomResource, call: CfnCall) -> CustomResource:
        props = stringify(dict(call.props))
        if props == old.properties:
            return old
        old_physical, old_props = old.physical_id, old.properties
        answer = old._send("Update", props, physical_id=old_physical, old_properties=old_props)
        old.properties = props
        old._apply(answer)
        if old.physical_id != old_physical:
            # A replacement: CloudFormation deletes the old resource in its cleanup phase.
            old._send("Delete", old_props, physical_id=old_physical)
        return old

    def delete(self, account_id: str, region_name: str) -> None:
        self._send("Delete", self.properties, physical_id=self.physical_id)
