"""Each grant the constructs give the host role is needed locally, as it is on AWS.

One real deployment of the sample app (real cdk CLI, enforcement on). Then, per grant: the
statement is taken out of the role's policy through the IAM API, the parent's own step is run
again with the instance role's credentials (EC2 assumes the role, as IMDS hands it out), and
it fails at that step with the denied action named; the policy is put back and the step passes.
The parent agent's steps are made from the machine with the agent's own code
(`local_backend.parent.view.AgentHost` over the host.json its user data wrote); the agent
zipapp download (the user data's `aws s3 cp`) and the ACM agent's `iam:GetRole` are made here
with the same credentials. The EIF and the agent zipapp share one CDK asset statement (the CDK
merges the two identical bucket grants), so removing it fails both. The association's kms:Decrypt is
exercised by the ACM agent set-up (tests of the ACM agent host).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import copy_sample_app

from local_backend import pytest_plugin as plugin
from local_backend.host.layout import HostLayout
from local_backend.parent.view import AgentHost

pytestmark = pytest.mark.slow

STACK = "EnclaveService"
SECRET = b"grants e2e secret"


@dataclass
class World:
    ep: plugin.LocalEndpoint
    role_name: str
    parent: AgentHost


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ep = plugin.start_endpoint(tmp_path_factory.mktemp("grants-state"))
    try:
        app = copy_sample_app(
            tmp_path_factory.mktemp("grants-app") / "app", context={"certificate_in_image": True}
        )
        plugin.bootstrap(ep)
        deployed = plugin.deploy(ep, app, secrets={"app-secret": SECRET})
        host = deployed.host()
        role_name = deployed.outputs[STACK]["RoleArn"].rsplit("/", 1)[-1]
        yield World(ep, role_name, AgentHost(HostLayout(host.instance_dir)))
    finally:
        plugin.stop_endpoint(ep)


def _policies(w: World) -> dict[str, dict[str, Any]]:
    iam = w.ep.client("iam")
    out = {}
    for name in iam.list_role_policies(RoleName=w.role_name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=w.role_name, PolicyName=name)["PolicyDocument"]
        out[name] = json.loads(doc) if isinstance(doc, str) else doc
    return out


def _actions(stmt: dict[str, Any]) -> list[str]:
    a = stmt.get("Action", [])
    return [a] if isinstance(a, str) else list(a)


def _resources(stmt: dict[str, Any]) -> str:
    return json.dumps(stmt.get("Resource"))


@contextlib.contextmanager
def _without(w: World, drop: Callable[[dict[str, Any]], bool]) -> Iterator[int]:
    """The role's policies with the statements `drop` picks removed (restored afterwards)."""
    iam = w.ep.client("iam")
    original = _policies(w)
    removed = 0
    for name, doc in original.items():
        kept = [s for s in doc["Statement"] if not drop(s)]
        removed += len(doc["Statement"]) - len(kept)
        iam.put_role_policy(
            RoleName=w.role_name,
            PolicyName=name,
            PolicyDocument=json.dumps({**doc, "Statement": kept}),
        )
    try:
        yield removed
    finally:
        for name, doc in original.items():
            iam.put_role_policy(
                RoleName=w.role_name, PolicyName=name, PolicyDocument=json.dumps(doc)
            )


GRANTS: list[tuple[str, Callable[[dict[str, Any]], bool], str, str]] = [
    # (what, statements to drop, step, the action AWS names in the denial)
    (
        "EIF and agent asset read (CDK asset bucket)",
        lambda s: "cdk-" in _resources(s) and any(a.startswith("s3:") for a in _actions(s)),
        "fetch_image",
        "s3:GetObject",
    ),
    (
        "agent asset read (the zipapp the host's user data fetches)",
        lambda s: "cdk-" in _resources(s) and any(a.startswith("s3:") for a in _actions(s)),
        "fetch_agent_bundle",
        "s3:GetObject",
    ),
    (
        "ACM agent's iam:GetRole on its own role",
        lambda s: "iam:GetRole" in _actions(s),
        "get_own_role",
        "iam:GetRole",
    ),
    (
        "SSM parameter read",
        lambda s: any(a.startswith("ssm:") for a in _actions(s)),
        "sealed_secrets",
        "ssm:GetParameter",
    ),
    (
        "ACM association look-up",
        lambda s: "ec2:GetAssociatedEnclaveCertificateIamRoles" in _actions(s),
        "certificate_bundle",
        "ec2:GetAssociatedEnclaveCertificateIamRoles",
    ),
    (
        "ACM association bundle read (certificate bucket)",
        lambda s: "aws-ec2-enclave-certificate-" in _resources(s),
        "certificate_bundle",
        "s3:GetObject",
    ),
]


def _as_role(w: World, service: str, creds: Any) -> Any:
    return w.ep.client(
        service,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
    )


def _fetch_agent_bundle(w: World, creds: Any) -> bytes:
    """What the host's user data does (`aws s3 cp` of the agent zipapp asset) with the
    instance role's credentials."""
    s3 = w.ep.client("s3")
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "cdk-" in b["Name"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    key = next(k for k in keys if k.endswith(".pyz"))
    return bytes(_as_role(w, "s3", creds).get_object(Bucket=bucket, Key=key)["Body"].read())


def _get_own_role(w: World, creds: Any) -> Any:
    """What the ACM for Nitro Enclaves agent calls first: iam:GetRole on its own role."""
    return _as_role(w, "iam", creds).get_role(RoleName=w.role_name)["Role"]


OWN_STEPS = {"fetch_agent_bundle": _fetch_agent_bundle, "get_own_role": _get_own_role}


def _step(w: World, step: str) -> Any:
    creds = w.parent.role_credentials()
    if step in OWN_STEPS:
        return OWN_STEPS[step](w, creds)
    fn = getattr(w.parent, step)
    return fn(creds)


def _log(w: World) -> str:
    return (Path(w.ep.state_dir) / "logs" / "endpoint.log").read_text(errors="replace")


def test_deploy_ran_as_the_bootstrap_roles_without_a_denial(world: World) -> None:
    """The cdk CLI assumed the CDK's deploy and file-publishing roles (their trust policies
    allow the account) and every call they made was allowed by their own policies."""
    log = _log(world)
    assert "AccessDenied" not in log, [ln for ln in log.splitlines() if "AccessDenied" in ln]
    for role in ("deploy-role", "file-publishing-role"):
        assert re.search(rf"IAM: arn:aws:iam::\d+:root assumes \S+cdk-\w+-{role}-", log), role
    assert "IAM: ec2.amazonaws.com assumes arn:aws:iam::" in log  # the instance's role
    # CloudFormation built the app's stack as the CDK's execution role, by its own policies
    assert re.search(
        rf"IAM: CloudFormation acts as arn:aws:sts::\d+:assumed-role/cdk-\w+-cfn-exec-role-"
        rf"\S+/AWSCloudFormation for stack {STACK}\b",
        log,
    ), [ln for ln in log.splitlines() if "CloudFormation acts as" in ln]


def test_every_step_passes_with_the_grants(world: World) -> None:
    for step in {g[2] for g in GRANTS}:
        assert _step(world, step) is not None, step


@pytest.mark.parametrize(("what", "drop", "step", "action"), GRANTS, ids=[g[0] for g in GRANTS])
def test_removing_a_grant_fails_its_step(
    world: World, what: str, drop: Callable[[dict[str, Any]], bool], step: str, action: str
) -> None:
    with _without(world, drop) as removed:
        assert removed >= 1, f"no statement of the role grants {what}: {_policies(world)}"
        with pytest.raises(Exception) as info:  # noqa: PT011 - ClientError or ParentAgentError
            _step(world, step)
        text = str(info.value)
        assert "AccessDenied" in text or "UnauthorizedOperation" in text, text
        assert f"is not authorized to perform: {action}" in text, text
        assert f"assumed-role/{world.role_name}/" in text, text
    assert _step(world, step) is not None  # put back: the step passes again


def test_endpoint_log_names_each_denial(world: World) -> None:
    log = _log(world)
    for _what, _drop, _step_name, action in GRANTS:
        assert f"is not authorized to perform: {action}" in log, action
