"""Deploy a CDK app on a running local endpoint: one path for `enclavekit up`, the pytest plugin
and the benches.

The steps, each a function the callers string together with their own reporting:
  run_cdk            the pinned cdk CLI behind the egress guard (local_backend.cdk), its output
                     streamed line by line and kept, the whole process group killed on timeout
  bootstrap          `cdk bootstrap` of the local account unless its CDKToolkit stack exists
  wait_user_data     every enclave-enabled instance of the stacks has run its user data (a
                     failed one raises, naming the instance, the command and its exit status)
  seal_secrets       unsealed application secrets: KMS Encrypt by the account root, base64
                     into the host's SSM parameter, the operator's copy in <state>/verifier/
  wait_provisioned   the agents re-sync and every enclave says it was provisioned
  enclave_hosts      the stacks' running hosts with an enclave (parent.view.AgentHost)
Failures are BackendError with one line saying what and why; callers add their own framing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from enclavekit.agent import UNSEALED
from enclavekit.errors import BackendError
from enclavekit.localenv import local_client
from local_backend.cdk import bootstrap_target, guarded_cdk
from local_backend.egress import refusal
from local_backend.host.layout import HostLayout
from local_backend.parent import resync
from local_backend.parent.view import AgentHost, agent_hosts
from local_backend.verify import VERIFIER_DIR

BOOT_TIMEOUT_S = 180.0
TAIL_LINES = 40
_BOOTSTRAPPED = ("CREATE_COMPLETE", "UPDATE_COMPLETE")


@dataclass(frozen=True)
class CdkRun:
    """A finished cdk command: its output (with the egress guard's refusals as lines), the
    hosts the guard refused, and whether it was stopped for running too long (returncode -1)."""

    argv: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    refused: tuple[str, ...] = ()

    @property
    def timed_out(self) -> bool:
        return self.returncode == -1

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def run_cdk(
    endpoint: str,
    app_dir: Path,
    args: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    base: Mapping[str, str] | None = None,
) -> CdkRun:
    """`cdk ARGS` in `app_dir` against `endpoint` behind the egress guard; each output line
    (and each refusal) goes to `on_line` as it comes. After `timeout` seconds the process group
    is killed (a hanging app under cdk goes too) and the run returns with returncode -1."""
    app_dir = Path(app_dir).resolve()
    lines: queue.Queue[str | None] = queue.Queue()
    started = time.monotonic()
    with guarded_cdk(
        endpoint, app_dir, base=base, report=lambda h, p: lines.put(refusal(h, p))
    ) as cdk:
        command = cdk.command(args)
        proc = subprocess.Popen(
            **command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )

        def _read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=_read, name="cdk-output", daemon=True).start()
        output: list[str] = []
        deadline = started + timeout
        returncode = None
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                output.append(f"(timed out after {timeout:.0f} s)")
                returncode = -1
                break
            if line is None:
                break
            line = line.rstrip("\n")
            output.append(line)
            if on_line is not None and line.strip():
                on_line(line)
        if returncode is None:
            returncode = proc.wait()
        refused = tuple(cdk.guard.refused)
    text = "".join(f"{ln}\n" for ln in output)
    return CdkRun(tuple(command["args"]), returncode, text, time.monotonic() - started, refused)


def is_bootstrapped(endpoint: str) -> bool:
    """Whether the local account's CDKToolkit stack is deployed."""
    cfn = local_client("cloudformation", endpoint)
    try:
        status = cfn.describe_stacks(StackName="CDKToolkit")["Stacks"][0]["StackStatus"]
    except cfn.exceptions.ClientError:
        return False
    return status in _BOOTSTRAPPED


def bootstrap(
    endpoint: str,
    cwd: Path,
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    base: Mapping[str, str] | None = None,
) -> CdkRun | None:
    """`cdk bootstrap aws://ACCOUNT/REGION` in `cwd` unless already bootstrapped (None then)."""
    if is_bootstrapped(endpoint):
        return None
    return run_cdk(
        endpoint,
        cwd,
        ["bootstrap", bootstrap_target()],
        timeout=timeout,
        on_line=on_line,
        base=base,
    )


def assembly_stacks(cdk_out: Path) -> list[str]:
    """The CloudFormation stack names of a cloud assembly (a stack's `stackName`, which is
    its artifact id unless the app set another name)."""
    manifest = json.loads((cdk_out / "manifest.json").read_text())
    return [
        (art.get("properties") or {}).get("stackName") or name
        for name, art in manifest.get("artifacts", {}).items()
        if art.get("type") == "aws:cloudformation:stack"
    ]


def wait_user_data(
    state_dir: Path,
    stacks: Iterable[str],
    *,
    timeout: float = BOOT_TIMEOUT_S,
    fail: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Wait until the stacks' enclave-enabled instances have run their user data; returns their
    instance ids. With `fail`, a user data that failed raises, naming the instance, the failing
    command and its exit status and the tail of its console (as an enclave it did not start
    would fail on AWS too); without, a failed host counts as done."""
    from local_backend.host import control, hooks

    wanted = set(stacks)
    deadline = time.monotonic() + timeout
    while True:
        booting = []
        for layout in hooks.hosts(Path(state_dir)):
            info, host = layout.read_info(), layout.read_host()
            ours = info.get("stack_name") in wanted and info.get("enclave_enabled")
            if ours and host.get("state") in ("booting", "running", "failed"):
                booting.append((layout, host))
        failed = [(lay, err) for lay, h in booting if (err := control.boot_error(h))]
        if failed and fail:
            raise BackendError("; ".join(_boot_failure(lay, err) for lay, err in failed))
        done = {lay.dir.name for lay, _ in failed}  # only reached without `fail`
        pending = [
            lay.dir.name for lay, h in booting if not h.get("boot") and lay.dir.name not in done
        ]
        if not pending:
            return [lay.dir.name for lay, _ in booting]
        if on_progress is not None:
            on_progress(f"{len(booting) - len(pending)}/{len(booting)} hosts ran their user data")
        if time.monotonic() > deadline:
            raise BackendError(
                f"user data still running after {timeout:.0f} s on {', '.join(pending)}"
            )
        time.sleep(0.2)


def _boot_failure(layout: HostLayout, error: str) -> str:
    """One failed user data: the instance, its error, the tail of its console."""
    iid = layout.dir.name
    try:
        console = layout.console.read_text(errors="replace")
    except OSError:
        console = ""
    tail = "\n".join(console.rstrip().splitlines()[-TAIL_LINES:])
    return f"instance {iid}: {error} (aws ec2 get-console-output shows its console)" + (
        f"\n{tail}" if tail else ""
    )


def seal_secrets(
    state_dir: Path,
    endpoint: str,
    stacks: Iterable[str],
    values: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Seal the application secrets of the stacks' hosts; returns the `stack/name`s sealed.

    A name in `values` is sealed with those bytes (again, if it was sealed before); every
    other secret only while still unsealed, with a fresh random value. The operator's copy for
    verify's challenge goes to <state>/verifier/ (mode 0600), never to the parent.
    """
    values = values or {}
    cfn, kms, ssm = (local_client(s, endpoint) for s in ("cloudformation", "kms", "ssm"))
    sealed: list[str] = []
    for h in agent_hosts(state_dir, stacks):
        stack = str(h.stack)
        resources = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.describe_stack_resources(StackName=stack)["StackResources"]
            if r.get("LogicalResourceId")
        }
        for spec in h.spec.get("secrets") or []:  # the host.json its user data wrote
            name = f"{stack}/{spec['name']}"
            ref = Path(state_dir) / VERIFIER_DIR / stack / f"{spec['name']}.secret"
            given = values.get(spec["name"])
            if name in sealed:
                continue  # a fleet: the hosts of one stack share its secrets
            if given is None:
                param = ssm.get_parameter(Name=spec["parameter"])["Parameter"]["Value"]
                if param != UNSEALED and ref.is_file():
                    continue
            secret = bytes(given) if given is not None else secrets.token_bytes(32)
            blob = kms.encrypt(KeyId=resources[spec["key"]], Plaintext=secret)["CiphertextBlob"]
            ssm.put_parameter(
                Name=spec["parameter"],
                Value=base64.b64encode(blob).decode(),
                Type="String",
                Overwrite=True,
            )
            ref.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(ref, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
            sealed.append(name)
    return sealed


def wait_provisioned(
    state_dir: Path,
    stacks: Iterable[str],
    *,
    timeout: float = BOOT_TIMEOUT_S,
    since: Mapping[str, float | None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> list[AgentHost]:
    """Ask every agent of the stacks to re-sync, then wait until each enclave runs and says
    (its Status) that it was provisioned; returns the hosts. A host in `since` must have been
    provisioned again after it (its provisioned_at differs: it took the new secrets)."""
    stacks = list(stacks)
    since = since or {}
    resync(state_dir, stacks)
    deadline = time.monotonic() + timeout
    while True:
        hosts = agent_hosts(state_dir, stacks)
        states = {h.instance_id: h.provisioning() for h in hosts}  # the enclave's Status
        pending = [
            iid
            for iid, st in states.items()
            if not st["provisioned"] or (iid in since and st["provisioned_at"] == since[iid])
        ]
        if not pending:
            return hosts
        errors = [
            f"{iid}: {st['last_error'] or st['journal']}"
            for iid, st in states.items()
            if iid in pending and (st["last_error"] or st["journal"])
        ]
        if on_progress is not None:
            on_progress(
                f"{len(hosts) - len(pending)}/{len(hosts)} enclaves provisioned"
                + (f"; {errors[0]}" if errors else "")
            )
        if time.monotonic() > deadline:
            raise BackendError(
                f"enclaves not provisioned after {timeout:.0f} s: " + "; ".join(errors or pending)
            )
        time.sleep(0.5)


def enclave_hosts(state_dir: Path, stacks: Iterable[str] | None = None) -> list[AgentHost]:
    """The running hosts (of `stacks`) whose user data started our parent agent and whose
    enclave has an id; their `state()` has the relay port, domain and enclave record."""
    return [h for h in agent_hosts(state_dir, stacks) if h.state()["enclave"].get("EnclaveID")]
