"""`AWS::SecretsManager::Secret` for CloudFormation, on moto's Secrets Manager backend.

moto has the API but no CloudFormation model, so a template with a secret was refused. This
one creates the secret in moto's backend (GetSecretValue etc. then work as usual), with
`SecretString` or `GenerateSecretString` (AWS's defaults: 32 characters, every character
class, one of each; `SecretStringTemplate` + `GenerateStringKey` put the password into the
JSON template). The password comes from `secrets` (a CSPRNG), not moto's `random`.
Ref and `Fn::GetAtt Id` are the ARN. Deleting the resource deletes the secret at once, so a
redeploy can reuse its name.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from dataclasses import dataclass, replace
from typing import Any

from moto.cloudformation.exceptions import ValidationError
from moto.core.common_models import CloudFormationModel
from moto.secretsmanager.models import secretsmanager_backends

from ..cfn_resource import CfnCall, CfnResource

_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def generate_password(spec: dict[str, Any]) -> str:
    """A password per `GenerateSecretString`'s character rules."""
    exclude = str(spec.get("ExcludeCharacters", ""))
    classes = []
    for flag, chars in (
        ("ExcludeLowercase", string.ascii_lowercase),
        ("ExcludeUppercase", string.ascii_uppercase),
        ("ExcludeNumbers", string.digits),
        ("ExcludePunctuation", _PUNCTUATION),
    ):
        if str(spec.get(flag, False)).lower() != "true":
            allowed = "".join(c for c in chars if c not in exclude)
            if allowed:
                classes.append(allowed)
    if str(spec.get("IncludeSpace", False)).lower() == "true":
        classes.append(" ")
    length = int(spec.get("PasswordLength", 32))
    require_each = str(spec.get("RequireEachIncludedType", True)).lower() == "true"
    if not classes or length < 1 or length > 4096 or (require_each and length < len(classes)):
        raise ValidationError(
            message=(
                "GenerateSecretString: expected 1..4096 characters drawn from at least one "
                f"character class, found length {length} with {len(classes)} class(es)"
            )
        )
    alphabet = "".join(classes)
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if not require_each or all(any(c in cls for c in password) for cls in classes):
            return password


def secret_string(props: dict[str, Any]) -> str:
    """The initial secret value from `SecretString` or `GenerateSecretString`."""
    generate = props.get("GenerateSecretString")
    if generate is None:
        return str(props.get("SecretString", ""))
    if "SecretString" in props:
        raise ValidationError(
            message="You can't specify both SecretString and GenerateSecretString"
        )
    password = generate_password(generate)
    template, key = generate.get("SecretStringTemplate"), generate.get("GenerateStringKey")
    if (template is None) != (key is None):
        raise ValidationError(
            message=("GenerateSecretString: SecretStringTemplate and GenerateStringKey go together")
        )
    if template is None:
        return password
    try:
        body = json.loads(template)
    except ValueError as exc:
        raise ValidationError(
            message=f"GenerateSecretString.SecretStringTemplate: expected a JSON object ({exc})"
        ) from exc
    if not isinstance(body, dict):
        raise ValidationError(
            message="GenerateSecretString.SecretStringTemplate: expected a JSON object"
        )
    body[key] = password
    return json.dumps(body)


@dataclass(eq=False)
class CfnSecret(CfnResource, CloudFormationModel):
    """The CloudFormation face of one secret in moto's backend."""

    CFN_TYPE = "AWS::SecretsManager::Secret"
    CFN_NAME_PROPERTY = "Name"
    CFN_REF = "arn"
    CFN_ATTRIBUTES = frozenset({"Id"})

    arn: str
    name: str
    account_id: str
    region_name: str
    props: dict

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        return self.arn

    @classmethod
    def cfn_create(cls, call: CfnCall) -> CfnSecret:
        props, account_id, region_name = call.props, call.account_id, call.region
        name = props.get("Name") or call.name
        backend = secretsmanager_backends[account_id][region_name]
        created = json.loads(
            backend.create_secret(
                name=name,
                secret_string=secret_string(props),
                secret_binary=None,
                description=props.get("Description"),
                tags=props.get("Tags"),
                kms_key_id=props.get("KmsKeyId"),
                client_request_token=None,
                replica_regions=props.get("ReplicaRegions") or [],
                force_overwrite=False,
            )
        )
        return cls(created["ARN"], name, account_id, region_name, props)

    @classmethod
    def cfn_update(cls, original_resource: CfnSecret, call: CfnCall) -> CfnSecret:
        props, account_id, region_name = call.props, call.account_id, call.region
        old = original_resource.props
        if (props.get("Name") or original_resource.name) != original_resource.name:
            new = cls.cfn_create(replace(call, name=props["Name"]))
            original_resource.delete(account_id, region_name)
            return new
        value_changed = props.get("SecretString") != old.get("SecretString") or props.get(
            "GenerateSecretString"
        ) != old.get("GenerateSecretString")
        backend = secretsmanager_backends[account_id][region_name]
        if value_changed:
            backend.update_secret(
                original_resource.arn,
                secret_string=secret_string(props),
                # A new version, as CloudFormation's own PutSecretValue makes: moto refuses an
                # update of an existing secret without a version token (ResourceExists).
                client_request_token=str(uuid.uuid4()),
                kms_key_id=props.get("KmsKeyId"),
                description=props.get("Description"),
            )
        else:
            backend.secrets[original_resource.arn].description = props.get("Description")
        original_resource.props = props
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        backend = secretsmanager_backends[account_id][region_name]
        backend.delete_secret(
            self.arn, recovery_window_in_days=None, force_delete_without_recovery=True
        )
