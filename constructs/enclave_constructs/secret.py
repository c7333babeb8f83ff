"""EnclaveSecret: an SSM parameter holding an application secret sealed under an attested key.

The parameter holds base64 KMS ciphertext, so the host role may read it: only the attested
enclave can turn it back into plaintext. It starts as a placeholder; sealing is a deploy-time
step (kms:Encrypt with the key, then ssm:PutParameter --overwrite).
"""

from __future__ import annotations

import re
from typing import Any

import jsii
from aws_cdk import Stack
from aws_cdk import aws_ssm as ssm

from constructs import Construct, IValidation
from enclavekit.contract import UNSEALED
from enclavekit.errors import InvalidInput

from .host import EnclaveHost

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@jsii.implements(IValidation)
class _KeyBoundToHost:
    def __init__(self, secret: EnclaveSecret) -> None:
        self._secret = secret

    def validate(self) -> list[str]:
        host, key = self._secret.host, self._secret.key
        if host.has_attested_key(key):
            return []
        return [
            f"secret {self._secret.name!r} is sealed under {key.node.path}, which has no "
            f"attested grant to host {host.node.path}; expected "
            "host.grant_attested_decrypt(key), got none (the enclave could never open it)"
        ]


class EnclaveSecret(Construct):
    """A sealed application secret for one host, listed in the host's Metadata `secrets`."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        host: EnclaveHost,
        key: Any,
        name: str = "app-secret",
        parameter_name: str | None = None,
    ) -> None:
        """`key`: the AttestedKey (or kms.Key) the secret is sealed under."""
        super().__init__(scope, id)
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidInput(
                f"secret name must be 1-63 of [a-z0-9-] starting with a letter or digit, "
                f"got {name!r}"
            )
        self.host = host
        self.key = key
        self.name = name
        self.parameter_name = parameter_name or f"/enclavekit/{Stack.of(self).stack_name}/{name}"
        self.parameter = ssm.StringParameter(
            self,
            "Resource",
            parameter_name=self.parameter_name,
            string_value=UNSEALED,
            description=f"enclavekit sealed secret {name} (base64 KMS ciphertext)",
        )
        self.parameter.grant_read(host.role)
        host.register_secret(name, key, self.parameter_name)
        self.node.add_validation(_KeyBoundToHost(self))
