"""No process started for the stack holds the account root's key (`testing`).

On AWS an instance, its enclave and a Lambda function hold only their role's session: the
root key is what can do anything, so a process that had it would bypass every grant the
constructs narrow. Checked on the deployed sample (every process the endpoint started for it)
and on the Lambda runtime (a handler acts as its execution role and is denied what the role is
not granted).
"""

from __future__ import annotations

import io
import json
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import Target

from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_ACCOUNT
from local_backend import pytest_plugin as plugin

pytestmark = pytest.mark.slow
KINDS = {
    "enclavekit-agent.pyz": "parent agent",  # the zipapp the host's user data runs
    "local_backend.host": "instance host",
    "local_backend.emulator": "enclave monitor / isolation",
}


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None  # gone, or in a namespace we may not read
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def test_stack_processes_never_hold_the_root_key(target: Target) -> None:
    seen: dict[str, int] = {}
    for pid, cmd in _stack_processes(target.endpoint.state_dir):
        if "local_backend.server" in cmd:
            continue  # the endpoint itself: it is AWS, it knows every key
        env = _environ(pid)
        if env is None:
            continue
        kind = next((k for m, k in KINDS.items() if m in cmd), cmd.split()[0])
        seen[kind] = seen.get(kind, 0) + 1
        assert env.get("AWS_ACCESS_KEY_ID") != LOCAL_ACCESS_KEY_ID, (kind, cmd)
        assert not any(v == LOCAL_ACCESS_KEY_ID for k, v in env.items() if "KEY" in k), (kind, cmd)
    assert seen.get("parent agent"), seen  # the host's parent was among them


def _stack_processes(state_dir: Path) -> list[tuple[int, str]]:
    """Every process naming the state dir (the endpoint, host launchers) and every process of
    the instance hosts' own trees (PID 1, its services, the parent agent, enclaves)."""
    from local_backend.host import hooks
    from local_backend.verify import process_tree

    found = dict(plugin.processes_of(state_dir))
    for layout in hooks.hosts(state_dir):
        init = layout.read_host().get("init_pid")
        for pid in process_tree(int(init)) if init else []:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found.setdefault(pid, cmd.strip())
    return sorted(found.items())


def _zip(source: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", source)
    return buf.getvalue()


HANDLER = textwrap.dedent("""
    import os
    import boto3
    def handler(event, context):
        out = {"root_key": os.environ.get("AWS_ACCESS_KEY_ID") == "testing",
               "arn": boto3.client("sts").get_caller_identity()["Arn"]}
        try:
            boto3.client("s3").list_buckets()
            out["s3"] = "allowed"
        except Exception as exc:
            out["s3"] = str(exc)
        return out
""")


def _trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
            ],
        }
    )


def test_lambda_handler_acts_as_its_execution_role(target: Target) -> None:
    ep = target.endpoint
    iam, lam = ep.client("iam"), ep.client("lambda")
    role = iam.create_role(
        RoleName="fn-role", AssumeRolePolicyDocument=_trust("lambda.amazonaws.com")
    )
    lam.create_function(
        FunctionName="who-am-i", Runtime="python3.12", Role=role["Role"]["Arn"],
        Handler="app.handler", Code={"ZipFile": _zip(HANDLER)}, Timeout=20,
    )  # fmt: skip
    r = lam.invoke(FunctionName="who-am-i", Payload=b"{}")
    out = json.loads(r["Payload"].read())
    assert r.get("FunctionError") is None, out
    assert out["root_key"] is False
    assert out["arn"] == f"arn:aws:sts::{LOCAL_ACCOUNT}:assumed-role/fn-role/who-am-i", out
    assert "AccessDenied" in out["s3"] and "s3:ListAllMyBuckets" in out["s3"], out
    # a role whose trust policy does not name Lambda: the function cannot run as it
    ec2_role = iam.create_role(RoleName="not-for-lambda",
                               AssumeRolePolicyDocument=_trust("ec2.amazonaws.com"))  # fmt: skip
    lam.create_function(
        FunctionName="wrong-role", Runtime="python3.12", Role=ec2_role["Role"]["Arn"],
        Handler="app.handler", Code={"ZipFile": _zip(HANDLER)}, Timeout=20,
    )  # fmt: skip
    r = lam.invoke(FunctionName="wrong-role", Payload=b"{}")
    out = json.loads(r["Payload"].read())
    assert r.get("FunctionError") and "cannot be assumed by Lambda" in out["errorMessage"], out
