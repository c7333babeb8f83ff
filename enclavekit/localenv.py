"""Process environments aimed at the local endpoint, with every trace of real AWS removed.

Everything enclavekit starts against the local endpoint (the cdk CLI, the AWS CLI, parent
processes, tests) gets its environment from `local_aws_env`, so a local deploy can never pick
up a real credential, profile, SSO session or endpoint and reach an AWS account.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enclavekit.errors import InvalidInput

LOCAL_ACCOUNT = "123456789012"
LOCAL_REGION = "us-east-1"
# The access key the local endpoint maps to the account root (moto's default identity).
LOCAL_ACCESS_KEY_ID = "testing"
LOCAL_SECRET_ACCESS_KEY = "testing"
# The loopback source address of the relays that carry an instance's requests to the local
# endpoint (the endpoint refuses the constant keys above from it: moto_ext.identity).
INSTANCE_SOURCE_ADDRESS = "127.0.0.2"

# Variables that could reach a real account: credentials, profiles and SSO, config and
# credential files, endpoints and endpoint routing, roles and web identities. An app's own
# variables (AWS_ACCOUNT, AWS_STAGE, ...) are kept: apps read them at synth time.
_STRIPPED_NAMES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_CREDENTIAL_FILE",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SDK_LOAD_CONFIG",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "BOTO_CONFIG",
        "BOTO3_DEFAULT_PROFILE",
        "CDK_DEFAULT_ACCOUNT",
        "CDK_DEFAULT_REGION",
    }
)
_STRIPPED_PREFIXES = (
    "AWS_ENDPOINT_URL",  # AWS_ENDPOINT_URL and every AWS_ENDPOINT_URL_<SERVICE>
    "AWS_CONTAINER_",  # container (ECS/EKS) credential endpoints and tokens
    "AWS_SSO_",
    "AWS_BEARER_TOKEN_",
    "AWS_CREDENTIAL",
)
_STRIPPED_SUFFIXES = ("_ROLE_ARN",)  # AWS_*_ROLE_ARN: assume-role targets of any tool


def _reaches_an_account(name: str) -> bool:
    upper = name.upper()
    if upper in _STRIPPED_NAMES or upper.startswith(_STRIPPED_PREFIXES):
        return True
    return upper.startswith("AWS_") and upper.endswith(_STRIPPED_SUFFIXES)


def strip_aws_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without any AWS credential, profile, config file, endpoint or role
    (names compared case-insensitively); everything else, AWS_* app settings included, stays."""
    return {k: v for k, v in env.items() if not _reaches_an_account(k)}


def local_aws_env(
    endpoint: str,
    *,
    base: Mapping[str, str] | None = None,
    region: str = LOCAL_REGION,
    access_key_id: str = LOCAL_ACCESS_KEY_ID,
    secret_access_key: str = LOCAL_SECRET_ACCESS_KEY,
    session_token: str | None = None,
    scratch_dir: Path | None = None,
) -> dict[str, str]:
    """An environment for a process that must talk only to the local `endpoint`.

    Config and credential files point at empty files under `scratch_dir` (or /dev/null),
    so ~/.aws is never read; IMDS is disabled so no instance credentials are picked up.
    """
    if not endpoint.startswith(("http://localhost:", "http://127.", "http://[::1]:")):
        raise InvalidInput(f"local endpoint must be a loopback http URL, got {endpoint!r}")
    env = strip_aws_env(os.environ if base is None else base)
    empty = str(scratch_dir / "aws-empty-config") if scratch_dir else os.devnull
    if scratch_dir:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        Path(empty).touch()
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=access_key_id,
        AWS_SECRET_ACCESS_KEY=secret_access_key,
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
        AWS_CONFIG_FILE=empty,
        AWS_SHARED_CREDENTIALS_FILE=empty,
        AWS_EC2_METADATA_DISABLED="true",
        CDK_DEFAULT_ACCOUNT=LOCAL_ACCOUNT,
        CDK_DEFAULT_REGION=region,
    )
    if session_token:
        env["AWS_SESSION_TOKEN"] = session_token
    return env


def local_client(
    service: str,
    endpoint: str,
    *,
    region: str = LOCAL_REGION,
    access_key_id: str = LOCAL_ACCESS_KEY_ID,
    secret_access_key: str = LOCAL_SECRET_ACCESS_KEY,
    session_token: str | None = None,
    **kwargs: Any,
) -> Any:
    """A boto3 client for `service` at the local `endpoint` (the account root unless other
    credentials are given). Credentials are explicit, so no chain, profile or IMDS is read."""
    if not endpoint.startswith(("http://localhost:", "http://127.", "http://[::1]:")):
        raise InvalidInput(f"local endpoint must be a loopback http URL, got {endpoint!r}")
    import boto3

    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        **kwargs,
    )
