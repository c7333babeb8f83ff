"""IAM enforced for every call the endpoint serves, as AWS enforces it.

`actions` maps a call to its IAM action(s) and resource ARN(s); `models` gathers the policies
that apply and runs AWS's evaluation logic on `enclavekit.policy` (the evaluator the local KMS
and the linter share); `responses` hooks moto and answers denials with AWS's error shapes.
KMS is left to its own extension (key policies, attestation). `install(enabled=False)` is
`enclavekit local start --iam off`: moto's unauthenticated behaviour for everything but KMS.
"""

from __future__ import annotations

from typing import Any

from ..cfn_resource import CfnCall, extend_cfn_create
from . import actions, cfn_role, models, responses

__all__ = ["actions", "cfn_role", "install", "models", "responses"]
_PATCHED = "_enclavekit_iam_patched"
OBJECT_ACTION = {
    "GET": "GetObject",
    "HEAD": "GetObject",
    "PUT": "PutObject",
    "DELETE": "DeleteObject",
}


def install(enabled: bool = True) -> None:
    """Patch moto's authorization hooks (idempotent); `enabled` may be changed on each call."""
    responses.set_enabled(enabled)
    from moto.core.authorization import ActionAuthenticatorMixin

    models.install_aws_managed_policies()
    _install_cfn_managed_policy_arns()
    cfn_role.install()
    if getattr(ActionAuthenticatorMixin, _PATCHED, False):
        return
    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = (  # type: ignore[method-assign]
        responses.normal_action
    )
    ActionAuthenticatorMixin._authenticate_and_authorize_s3_action = (  # type: ignore[method-assign]
        responses.s3_action
    )
    from moto.s3.responses import S3Response

    original_key_response = S3Response._key_response

    def _key_response(self: Any, request: Any, full_url: str) -> Any:
        """moto answers some anonymous or policy-denied object calls itself with an empty 403;
        AWS's body is an AccessDenied error."""
        out = original_key_response(self, request, full_url)
        if not (isinstance(out, tuple) and len(out) == 3 and out[0] == 403 and not out[2]):
            return out
        self.data["Action"] = OBJECT_ACTION.get(request.method, "GetObject")
        bucket = self.parse_bucket_name_from_url(request, full_url)
        try:  # our evaluation names the principal, action and reason, as AWS does
            responses.s3_action(self, bucket, self.parse_key_name())
            denied = responses.error("s3", "AccessDenied", "Access Denied", 403)
        except responses.AwsError as exc:
            denied = exc
        return 403, {"Content-Type": "application/xml"}, denied.get_body()

    S3Response._key_response = _key_response  # type: ignore[method-assign]
    setattr(ActionAuthenticatorMixin, _PATCHED, True)


def _install_cfn_managed_policy_arns() -> None:
    """AWS::IAM::Role ManagedPolicyArns: moto's CloudFormation drops them; attach them, so a
    role's permissions are what the template gives it (the CDK's execution role among them)."""
    from moto.iam.models import Role, iam_backends

    if getattr(Role, "_enclavekit_managed_arns", False):
        return

    def attach_managed(role: Role, call: CfnCall) -> None:
        backend = iam_backends[call.account_id]["aws"]
        for arn in call.props.get("ManagedPolicyArns") or []:
            if isinstance(arn, str):
                backend.attach_role_policy(arn, role.name)

    original_delete = Role.delete_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def delete(
        cls: Any,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> None:
        # CloudFormation detaches the managed policies it attached before deleting the role
        backend = iam_backends[account_id]["aws"]
        for role in list(backend.roles.values()):
            if role.name == resource_name:
                for arn in list(role.managed_policies):
                    backend.detach_role_policy(arn, role.name)
        original_delete(cls, resource_name, cloudformation_json, account_id, region_name)

    extend_cfn_create(Role, attach_managed)
    Role.delete_from_cloudformation_json = classmethod(delete)  # type: ignore[method-assign,assignment]
    Role._enclavekit_managed_arns = True  # type: ignore[attr-defined]
