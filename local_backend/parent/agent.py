"""The instance role's credentials as EC2 hands them to an instance, for the machine side.

A host's IMDS (`local_backend.host.imds`) serves `iam/security-credentials/<role>` from
`ec2_sts` (STS as ec2.amazonaws.com calls it: only a role whose trust policy names EC2 gets
through); verify and the readers of `local_backend.parent.view` take the same credentials with
`AssumeRoleCredentials`, to make the calls a parent-side process of the host could make.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from botocore.config import Config

from enclavekit import provisioning as prov
from enclavekit.agent import REFRESH_MARGIN_S
from enclavekit.errors import ParentAgentError
from enclavekit.localenv import local_client

__all__ = ["AssumeRoleCredentials", "ec2_sts"]


class AssumeRoleCredentials:
    """The instance role's credentials through STS AssumeRole: the local stand-in for IMDS.

    Cached like `enclavekit.agent.ImdsCredentials` until `REFRESH_MARGIN_S` before expiry.
    """

    def __init__(self, sts: Any, role_arn: str | None, session_name: str) -> None:
        self._sts = sts
        self.role_arn = role_arn
        self.session_name = session_name
        self._lock = threading.Lock()
        self._cached: prov.Credentials | None = None
        self._until = 0.0

    def credentials(self) -> prov.Credentials:
        with self._lock:
            if self._cached is not None and time.time() < self._until:
                return self._cached
            if not self.role_arn:
                raise ParentAgentError(
                    f"instance {self.session_name}: expected an instance role, found none"
                )
            out = self._sts().assume_role(
                RoleArn=self.role_arn, RoleSessionName=self.session_name, DurationSeconds=3600
            )["Credentials"]
            expiration = out["Expiration"]
            expires = expiration.timestamp() if hasattr(expiration, "timestamp") else None
            self._cached = prov.Credentials(
                access_key_id=out["AccessKeyId"],
                secret_access_key=out["SecretAccessKey"],
                session_token=out["SessionToken"],
                expiration=expiration.isoformat()
                if hasattr(expiration, "isoformat")
                else str(expiration),
            )
            self._until = (expires - REFRESH_MARGIN_S) if expires else time.time() + 60
            return self._cached

    def is_role(self, role_arn: str) -> bool:
        return role_arn == self.role_arn


def ec2_sts(endpoint: str, region: str) -> Any:
    """STS as EC2 itself (ec2.amazonaws.com) calls it to assume an instance's role: only a role
    whose trust policy names ec2.amazonaws.com gets through, as on AWS. A host's IMDS and
    the machine-side readers (verify) get instance-role credentials this way."""
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    return local_client(
        "sts",
        endpoint,
        region=region,
        access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )
