"""Run the project's cdk CLI aimed at the local endpoint, safe by construction.

- The CLI is always the project's pinned one (node_modules/aws-cdk on the pinned Node.js 22);
  an app's own node_modules CLI (older ones ignore the local endpoint and call real AWS
  hostnames) is bypassed with a one-line notice.
- The environment comes from `enclavekit.localenv.local_aws_env`: only what could reach a real
  account is removed (credentials, profiles, config/credential files, endpoints, role ARNs)
  and replaced by the local endpoint and its `testing` key; an app's own variables such as
  AWS_ACCOUNT stay.
- The app runs with the user's interpreter: an active venv's bin comes first on PATH (else the
  interpreter running enclavekit), and cdk.json's command runs as written.
- Every process gets the egress guard (local_backend.egress) as its HTTP(S) proxy: a
  connection to anything but loopback is refused at once and reported with its host.
- Container image assets go to docker aimed at the endpoint's own registry only
  (local_backend.docker_guard); without a working engine, one line naming them. Never real ECR.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclavekit.localenv import LOCAL_ACCOUNT, LOCAL_REGION, local_aws_env
from enclavekit.toolchain import PROJECT_ROOT, cdk_command, node_modules, tool_path
from local_backend import server
from local_backend.docker_guard import write_script
from local_backend.egress import EgressGuard, start_guard, stderr_report


@dataclass(frozen=True)
class CdkResult:
    """A finished cdk command: its status and (when captured) its output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    refused: tuple[str, ...] = ()


def bootstrap_target(region: str = LOCAL_REGION) -> str:
    """The `aws://ACCOUNT/REGION` environment `cdk bootstrap` is pointed at locally."""
    return f"aws://{LOCAL_ACCOUNT}/{region}"


def _tools_start() -> Path:
    """Where the pinned toolchain is looked up: the project's own node_modules when it has one
    (never the app's), else from the current directory up."""
    return (
        PROJECT_ROOT if node_modules(PROJECT_ROOT) == PROJECT_ROOT / "node_modules" else Path.cwd()
    )


def _interpreter_bin(base: Mapping[str, str]) -> str:
    """The bin directory of the user's interpreter: the active venv's, else this one's."""
    venv = base.get("VIRTUAL_ENV")
    if venv and Path(venv, "bin").is_dir():
        return str(Path(venv, "bin"))
    return os.path.dirname(sys.executable)


def scratch_dir(cwd: Path) -> Path:
    """The private directory (0700, in the user's cache) of the empty AWS config files and the
    CDK_DOCKER script for cdk runs in `cwd`: outside the app, so `cdk init` finds its directory
    empty, and outside any shared temp dir, as the script it holds is executed."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(cwd.resolve()).encode()).hexdigest()[:16]
    path = cache / "enclavekit" / "cdk" / key
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def cdk_env(
    endpoint: str,
    *,
    cwd: Path,
    base: Mapping[str, str] | None = None,
    proxy: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a cdk process against `endpoint` (project Node 22 first on PATH),
    with `proxy` (the egress guard's variables) when given."""
    source = os.environ if base is None else base
    scratch = scratch_dir(cwd)
    env = local_aws_env(endpoint, base=source, scratch_dir=scratch)
    # Container image assets: docker for the local registry only (never a real one).
    env["CDK_DOCKER"] = str(write_script(scratch / "bin"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        env.pop(name, None)
        env.pop(name.lower(), None)
    env.update(proxy or {})
    if proxy and "NODE_OPTIONS" in proxy:  # the user's NODE_OPTIONS stay, the guard's added
        options = (source.get("NODE_OPTIONS", ""), proxy["NODE_OPTIONS"])
        env["NODE_OPTIONS"] = " ".join(o for o in options if o)
    # Node 22 and the cdk CLI first, then the user's interpreter (so an app run as `python3
    # app.py` finds its own venv, or enclavekit's when none is active).
    path = os.pathsep.join([_interpreter_bin(source), env.get("PATH", "")])
    env["PATH"] = tool_path(path, start=_tools_start())
    env.setdefault("CDK_DISABLE_VERSION_CHECK", "1")
    # The CLI reports failures to cdk-cli-telemetry.<region>.api.aws: egress, so off.
    env["CDK_DISABLE_CLI_TELEMETRY"] = "true"
    env.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
    return env


def app_local_cli(app_dir: Path) -> str | None:
    """The version of a cdk CLI the app carries in its own node_modules (None when none)."""
    for base in (app_dir, *app_dir.parents):
        pkg = base / "node_modules" / "aws-cdk" / "package.json"
        if pkg.is_file() and base != PROJECT_ROOT:
            try:
                return str(json.loads(pkg.read_text()).get("version", "unknown"))
            except (OSError, ValueError):
                return "unknown"
    return None


def pinned_cli_version() -> str:
    """The version of the project's pinned aws-cdk CLI."""
    pkg = PROJECT_ROOT / "node_modules" / "aws-cdk" / "package.json"
    try:
        return str(json.loads(pkg.read_text()).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"


@dataclass(frozen=True)
class GuardedCdk:
    """What a guarded cdk run needs: the pinned CLI's argv prefix, the environment behind the
    running egress guard, and that guard (its `refused` list)."""

    argv: tuple[str, ...]
    env: dict[str, str]
    guard: EgressGuard
    cwd: Path

    def command(self, args: Sequence[str]) -> dict[str, Any]:
        """subprocess keywords for `cdk ARGS` in the app dir: argv, cwd, env, text, no stdin
        (every runner adds only how it reads the output)."""
        return {
            "args": [*self.argv, *args],
            "cwd": self.cwd,
            "env": self.env,
            "text": True,
            "stdin": subprocess.DEVNULL,
        }


@contextlib.contextmanager
def guarded_cdk(
    endpoint: str,
    app_dir: Path,
    *,
    base: Mapping[str, str] | None = None,
    report: Callable[[str, int], None] | None = None,
) -> Iterator[GuardedCdk]:
    """The pinned cdk CLI for `app_dir` against `endpoint`, behind an egress guard that runs for
    the block: every caller that starts the CLI (`enclavekit cdk`, `up`, the pytest plugin)
    gets the same guard. `report(host, port)` hears each refusal (default: a stderr line)."""
    own = app_local_cli(app_dir)
    if own is not None:
        print(
            f"enclavekit: bypassing the app's own cdk CLI {own}; running the pinned "
            f"aws-cdk {pinned_cli_version()}, which honours the local endpoint",
            file=sys.stderr,
        )
    guard, stop = start_guard(report or stderr_report(sys.stderr))
    try:
        yield GuardedCdk(
            tuple(cdk_command(_tools_start())),
            cdk_env(endpoint, cwd=app_dir, base=base, proxy=guard.env()),
            guard,
            app_dir,
        )
    finally:
        stop()


@contextlib.contextmanager
def _guarded_at(state_dir: Path, cwd: Path | None) -> Iterator[GuardedCdk]:
    """`guarded_cdk` in `cwd` (default: here) against the running endpoint of `state_dir`."""
    info = server.running_endpoint(state_dir)
    with guarded_cdk(info.endpoint, Path(cwd or Path.cwd()).resolve()) as cdk:
        yield cdk


def run_cdk(
    args: Sequence[str],
    *,
    state_dir: Path = server.DEFAULT_STATE_DIR,
    cwd: Path | None = None,
    capture: bool = False,
    timeout: float | None = None,
) -> CdkResult:
    """Run `cdk ARGS...` in `cwd` against the running endpoint of `state_dir`, behind the
    egress guard. Raises BackendError (one line) when the endpoint is not running."""
    with _guarded_at(state_dir, cwd) as cdk:
        command = cdk.command(args)
        proc = subprocess.run(**command, capture_output=capture, timeout=timeout)
        refused = tuple(cdk.guard.refused)
    return CdkResult(
        tuple(command["args"]), proc.returncode, proc.stdout or "", proc.stderr or "", refused
    )


def stream_cdk(
    args: Sequence[str],
    *,
    state_dir: Path = server.DEFAULT_STATE_DIR,
    cwd: Path | None = None,
    on_stderr: Callable[[str], None],
) -> int:
    """`run_cdk` for a terminal: stdout passes through, each stderr line goes to `on_stderr`
    (the CLI turns an app's traceback into one line there). Same guard, same notice."""
    with _guarded_at(state_dir, cwd) as cdk:
        proc = subprocess.Popen(**cdk.command(args), stderr=subprocess.PIPE)
        assert proc.stderr is not None
        for line in proc.stderr:
            on_stderr(line)
        return proc.wait()
