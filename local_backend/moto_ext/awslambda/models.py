"""moto's `LambdaFunction._invoke_lambda` replaced by the local runtime (moto needs Docker),
and the CloudFormation parts of Lambda that layers need: a function's `Layers` (moto's create
drops them), `LayerName`, Ref / LayerVersionArn (moto's Ref gave the object), and the deletion
of a layer version with its stack."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from moto.awslambda.models import LambdaFunction, LayerVersion, lambda_backends

from ..cfn_resource import CfnCall, extend_cfn_create
from . import runtime

_original_function_update = LambdaFunction.update_from_cloudformation_json.__func__  # type: ignore[attr-defined]
_original_layer_create = LayerVersion.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]


def _invoke_lambda(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
    """(payload JSON, errored, log text) for one synchronous invocation."""
    if isinstance(event, str | bytes):
        event = json.loads(event or "{}")
    try:
        result = runtime.invoke(
            self,
            event if event is not None else {},
            account_id=self.account_id,
            region=self.region,
        )
    except runtime.RuntimeNotEmulated as exc:
        body = json.dumps({"errorType": "Runtime.InvalidRuntime", "errorMessage": str(exc)})
        return body, True, str(exc)
    if result.ok:
        return json.dumps(result.payload), False, result.logs
    return result.error_json(), True, result.logs


def _add_layers(fn: LambdaFunction, call: CfnCall) -> None:
    """After moto's create: the template's `Layers` (an unknown version fails the resource,
    as CreateFunction does)."""
    layers = call.props.get("Layers") or []
    if layers:
        try:
            fn.layers = fn._get_layers_data(layers)
        except Exception:
            lambda_backends[call.account_id][call.region].delete_function(fn.function_name)
            raise


def _update_function(
    cls: type[LambdaFunction],
    original_resource: LambdaFunction,
    new_resource_name: str,
    cloudformation_json: dict[str, Any],
    account_id: str,
    region_name: str,
) -> LambdaFunction:
    """moto's update; a template without `Layers` leaves the function without layers."""
    fn = _original_function_update(
        cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name
    )
    fn.layers = fn._get_layers_data(
        (cloudformation_json.get("Properties") or {}).get("Layers") or []
    )
    return fn


def _create_layer(
    cls: type[LayerVersion],
    resource_name: str,
    cloudformation_json: dict[str, Any],
    account_id: str,
    region_name: str,
    **kwargs: Any,
) -> LayerVersion:
    """moto's create under the template's `LayerName` (the generated name without one)."""
    name = (cloudformation_json.get("Properties") or {}).get("LayerName") or resource_name
    return _original_layer_create(cls, name, cloudformation_json, account_id, region_name)


def _layer_attribute(self: LayerVersion, attribute_name: str) -> str:
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

    if attribute_name == "LayerVersionArn":
        return self.arn
    raise UnformattedGetAttTemplateException()


def _delete_layer(self: LayerVersion, account_id: str, region: str) -> None:
    """The stack's layer version goes with the stack (AWS deletes it unless retained)."""
    with contextlib.suppress(Exception):  # already gone
        lambda_backends[account_id][region].delete_layer_version(self.name, str(self.version))


def install() -> None:
    """Swap in the runtime and the CloudFormation parts above (idempotent)."""
    LambdaFunction._invoke_lambda = _invoke_lambda  # type: ignore[method-assign,assignment]
    extend_cfn_create(LambdaFunction, _add_layers)
    LambdaFunction.update_from_cloudformation_json = classmethod(_update_function)  # type: ignore[method-assign,assignment]
    LayerVersion.create_from_cloudformation_json = classmethod(_create_layer)  # type: ignore[method-assign,assignment]
    # Ref and Fn::GetAtt LayerVersionArn: the layer version's ARN
    LayerVersion.physical_resource_id = property(lambda self: self.arn)  # type: ignore[attr-defined]
    LayerVersion.has_cfn_attr = classmethod(lambda cls, attr: attr == "LayerVersionArn")  # type: ignore[method-assign,assignment]
    LayerVersion.get_cfn_attribute = _layer_attribute  # type: ignore[attr-defined]
    LayerVersion.delete = _delete_layer  # type: ignore[attr-defined]
