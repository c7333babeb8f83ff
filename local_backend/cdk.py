"""Run the project's cdk CLI aimed at the local endpoint, with every trace of real AWS removed.

The environment comes from `enclavekit.localenv.local_aws_env`: real credentials, profiles,
config files and endpoints are stripped and replaced by the local endpoint and its `testing`
key, so a local deploy can never reach an AWS account.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from enclavekit.localenv import LOCAL_ACCOUNT, LOCAL_REGION, local_aws_env
from enclavekit.toolchain import cdk_command, tool_path
from local_backend import server


@dataclass(frozen=True)
class CdkResult:
    """A finished cdk command: its status and (when captured) its output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def bootstrap_target(region: str = LOCAL_REGION) -> str:
    """The `aws://ACCOUNT/REGION` environment `cdk bootstrap` is pointed at locally."""
    return f"aws://{LOCAL_ACCOUNT}/{region}"


def cdk_env(endpoint: str, *, cwd: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a cdk process against `endpoint` (project Node 22 first on PATH)."""
    env = local_aws_env(
        endpoint,
        base=os.environ if base is None else base,
        scratch_dir=cwd / "cdk.out" / ".enclavekit-aws",
    )
    # Node 22 and the cdk CLI first, then this interpreter's bin (so an app run as `python3
    # app.py` finds the same venv, enclave_constructs included, activated or not).
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = tool_path(os.pathsep.join([venv_bin, env.get("PATH", "")]), start=cwd)
    env.setdefault("CDK_DISABLE_VERSION_CHECK", "1")
    env.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
    return env


def run_cdk(
    args: Sequence[str],
    *,
    state_dir: Path = server.DEFAULT_STATE_DIR,
    cwd: Path | None = None,
    capture: bool = False,
    timeout: float | None = None,
) -> CdkResult:
    """Run `cdk ARGS...` in `cwd` against the running endpoint of `state_dir`.

    Raises BackendError (one line) when the endpoint is not running.
    """
    info = server.running_endpoint(state_dir)
    workdir = Path(cwd or Path.cwd()).resolve()
    argv = (*cdk_command(workdir), *args)
    proc = subprocess.run(
        argv,
        cwd=workdir,
        env=cdk_env(info.endpoint, cwd=workdir),
        text=True,
        capture_output=capture,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CdkResult(tuple(argv), proc.returncode, proc.stdout or "", proc.stderr or "")
