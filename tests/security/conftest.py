"""One real deployment of the sample app for the whole attack suite.

The real local endpoint (TLS front included), the real `cdk` CLI, the enclave emulator: every
attack in tests/security runs against what `make demo` deploys, and asserts AWS's answer.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import copy_sample_app

from enclavekit.localenv import LOCAL_ACCOUNT
from local_backend import pytest_plugin as plugin

STACK = "EnclaveService"
SECRET = b"attack-suite secret " + secrets.token_hex(8).encode()


@dataclass
class Target:
    """The deployed sample and the handles an attacker on the parent side would have."""

    endpoint: plugin.LocalEndpoint
    deployment: plugin.Deployment
    host: plugin.DeployedHost
    outputs: dict[str, str]
    secret_blob: bytes  # the sealed app secret, as the parent reads it from SSM

    @property
    def key_arn(self) -> str:
        return self.outputs["KeyArn"]

    @property
    def role_arn(self) -> str:
        return self.outputs["RoleArn"]

    def role_creds(self, session: str = "attacker") -> dict[str, str]:
        """Credentials of the host role: what any process on the parent can get from IMDS."""
        from local_backend.moto_ext.identity import (
            EC2_SERVICE_ACCESS_KEY_ID,
            EC2_SERVICE_SECRET_ACCESS_KEY,
        )

        sts = self.endpoint.client(  # as EC2 assumes it for IMDS (the root may not: IAM)
            "sts",
            aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
            aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
        )
        c = sts.assume_role(RoleArn=self.role_arn, RoleSessionName=session)
        return {
            "aws_access_key_id": c["Credentials"]["AccessKeyId"],
            "aws_secret_access_key": c["Credentials"]["SecretAccessKey"],
            "aws_session_token": c["Credentials"]["SessionToken"],
        }

    def user_creds(self, name: str, policy: dict[str, Any] | None = None) -> dict[str, str]:
        """A fresh IAM user of the account (with an inline policy if given)."""
        iam = self.endpoint.client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "aws_access_key_id": k["AccessKeyId"],
            "aws_secret_access_key": k["SecretAccessKey"],
        }

    def pcrs(self) -> dict[int, str]:
        """The PCR values the key policy binds (what a genuine enclave attests)."""
        raw = self.endpoint.client("kms").get_key_policy(KeyId=self.key_arn, PolicyName="default")
        found: dict[int, str] = {}
        for st in json.loads(raw["Policy"])["Statement"]:
            if st.get("Effect") != "Allow":
                continue
            for block in (st.get("Condition") or {}).values():
                for k, v in block.items():
                    if k.lower().startswith("kms:recipientattestation:pcr"):
                        found[int(k.lower().rsplit("pcr", 1)[1])] = str(v).lower()
        return found


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    state = tmp_path_factory.mktemp("attack-state")
    endpoint = plugin.start_endpoint(state)
    try:
        app = copy_sample_app(
            tmp_path_factory.mktemp("attack-app") / "app", context={"certificate_in_image": True}
        )
        deployment = plugin.deploy(endpoint, app, secrets={"app-secret": SECRET})
        outputs = deployment.outputs[STACK]
        value = endpoint.client("ssm").get_parameter(Name=outputs["SecretParameter"])
        blob = base64.b64decode(value["Parameter"]["Value"])
        yield Target(endpoint, deployment, deployment.host(), outputs, blob)
    finally:
        plugin.stop_endpoint(endpoint)


ROOT_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT}:root"
__all__ = ["ROOT_ARN", "SECRET", "STACK", "Target", "Path"]
