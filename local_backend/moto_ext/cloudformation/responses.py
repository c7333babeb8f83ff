"""CloudFormation wire handlers that differ from moto's.

- CreateChangeSet: `UsePreviousValue` re-uses the parameter's previous *input* (for an SSM-typed
  parameter such as cdk's BootstrapVersion that is the parameter name, not the resolved value
  that moto fed back into the SSM lookup); the template's resource types and SSM parameters are
  checked up front so the CLI gets AWS's ValidationError at change-set creation.
- ListImports answers from the templates of the live stacks (exports.py).
- Describe/Delete/ExecuteChangeSet pass the StackName, so same-named change sets of different
  stacks (cdk names all of them `cdk-deploy-change-set`) are not mixed up.
"""

from __future__ import annotations

from typing import Any

from moto.cloudformation.exceptions import ValidationError
from moto.cloudformation.models import Stack
from moto.cloudformation.responses import CloudFormationResponse
from moto.core.responses import ActionResult, EmptyResult

from . import exports, models


def _resolve_ssm_parameters(
    response: CloudFormationResponse, template: dict[str, Any], parameters: dict[str, Any]
) -> None:
    from moto.ssm import ssm_backends

    backend = ssm_backends[response.current_account][response.region]
    for key, spec in (template.get("Parameters") or {}).items():
        if not str(spec.get("Type", "")).startswith("AWS::SSM::Parameter::Value<"):
            continue
        name = parameters.get(key, spec.get("Default"))
        if name is not None and backend.get_parameter(name) is None:
            raise ValidationError(
                message=(
                    f"Unable to fetch parameters [{name}] from parameter store for this account."
                )
            )


def _previous_input(stack: Stack | None, key: str) -> Any:
    """The previous *input* of parameter `key`: what was passed, else the old template's
    Default (for an SSM-typed parameter that is the parameter name, resolved again later)."""
    if stack is None:
        return None
    if key in (stack.parameters or {}):
        return stack.parameters[key]
    spec = (stack.template_dict.get("Parameters") or {}).get(key)
    return spec.get("Default") if isinstance(spec, dict) else None


def create_change_set(self: CloudFormationResponse) -> ActionResult:
    stack_name = self._get_param("StackName")
    change_set_name = self._get_param("ChangeSetName")
    stack_body = self._get_param("TemplateBody")
    template_url = self._get_param("TemplateURL")
    change_set_type = self._get_param("ChangeSetType", "CREATE")
    stack: Stack | None = None
    if change_set_type == "UPDATE":
        stack = self.cloudformation_backend.get_stack(stack_name)
        self.validate_template_and_stack_body()
        if self._get_bool_param("UsePreviousTemplate", False):
            stack_body = stack.template
    elif change_set_type != "CREATE":
        raise ValidationError(
            message=(
                f"ChangeSetType: expected CREATE or UPDATE, found {change_set_type!r} "
                "(IMPORT is not emulated)"
            )
        )
    if template_url:
        stack_body = self._get_stack_from_s3_url(template_url)
    if not stack_body:
        raise ValidationError(message="Either Template URL or Template Body must be specified.")
    parameters: dict[str, Any] = {}
    for param in self._get_param("Parameters", []):
        key = param["ParameterKey"]
        if param.get("UsePreviousValue", False):
            previous = _previous_input(stack, key)
            if previous is None:
                raise ValidationError(
                    message=(
                        f"Invalid input for parameter key {key}. Cannot specify usePreviousValue "
                        "as true for a parameter key not in the previous template"
                    )
                )
            parameters[key] = previous
        else:
            parameters[key] = param.get("ParameterValue")
    try:
        template = Stack.parse_template(stack_body)
    except ValueError as exc:
        raise ValidationError(message=f"Template format error: {exc}") from exc
    if not isinstance(template, dict):
        raise ValidationError(
            message="Template format error: the template is not a JSON/YAML object"
        )
    models.check_template(template)
    _resolve_ssm_parameters(self, template, parameters)
    change_set_id, stack_id = self.cloudformation_backend.create_change_set(
        stack_name=stack_name,
        change_set_name=change_set_name,
        template=stack_body,
        parameters=parameters,
        description=self._get_param("Description"),
        notification_arns=self._get_param("NotificationARNs", []),
        tags={t["Key"]: t["Value"] for t in self._get_param("Tags", [])},
        role_arn=self._get_param("RoleARN"),
        change_set_type=change_set_type,
    )
    return ActionResult({"Id": change_set_id, "StackId": stack_id})


def describe_change_set(self: CloudFormationResponse) -> ActionResult:
    cs = self.cloudformation_backend.describe_change_set(
        self._get_param("ChangeSetName"), self._get_param("StackName")
    )
    return ActionResult(cs)


def delete_change_set(self: CloudFormationResponse) -> EmptyResult:
    self.cloudformation_backend.delete_change_set(
        self._get_param("ChangeSetName"), self._get_param("StackName")
    )
    return EmptyResult()


def execute_change_set(self: CloudFormationResponse) -> EmptyResult:
    self.cloudformation_backend.execute_change_set(
        self._get_param("ChangeSetName"), self._get_param("StackName")
    )
    return EmptyResult()


def list_imports(self: CloudFormationResponse) -> ActionResult:
    """ListImports: the stacks that import an export (moto has no handler)."""
    names = exports.list_imports(self.cloudformation_backend, self._get_param("ExportName"))
    return ActionResult({"Imports": names})


def install() -> None:
    """Swap in the handlers above (idempotent)."""
    CloudFormationResponse.create_change_set = create_change_set  # type: ignore[method-assign]
    CloudFormationResponse.describe_change_set = describe_change_set  # type: ignore[method-assign]
    CloudFormationResponse.delete_change_set = delete_change_set  # type: ignore[method-assign]
    CloudFormationResponse.execute_change_set = execute_change_set  # type: ignore[method-assign]
    CloudFormationResponse.list_imports = list_imports  # type: ignore[attr-defined]
