"""`enclavekit up`: endpoint, bootstrap, deploy, seal, boot, verify — with progress and a table.

Phases (each timed; `make bench` reads the same figures):
  endpoint   start the local endpoint if it is not running
  synth      `cdk synth` of the app into cdk.out (the linter plugin runs here)
  bootstrap  `cdk bootstrap aws://123456789012/us-east-1` (skipped when already bootstrapped)
  deploy     `cdk deploy --all --app cdk.out` (no second synth); instances start their hosts
  boot       wait until every enclave-enabled instance of the stacks has run its user data (a
             failure fails, naming the command), and restart enclave units whose enclave stopped
  seal       application secrets still unsealed are sealed: a fresh random secret, KMS Encrypt by
             the account root (the only non-decrypt use the key policy gives it), the ciphertext
             into the host's SSM parameter; a reference copy for verify's challenge goes to
             <state>/verifier/ (mode 0600) — the operator's copy, never the parent's; then the
             agents re-sync (`systemctl reload`) and every enclave is waited for until it says
             it was provisioned
  verify     `enclavekit verify`
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from enclavekit.agent import UNSEALED
from enclavekit.cdk_errors import construct_error
from enclavekit.errors import BackendError, EnclaveKitError, InvalidInput
from enclavekit.localenv import local_client
from local_backend import server
from local_backend.cdk import GuardedCdk, bootstrap_target, guarded_cdk
from local_backend.egress import refusal
from local_backend.parent import restart_enclaves, resync
from local_backend.parent.view import AgentHost, agent_hosts
from local_backend.verify import VERIFIER_DIR, VerifyReport, verify

BOOT_TIMEOUT_S = 180.0
# A phase that runs the user's app or the cdk CLI ends in time or fails naming itself.
PHASE_TIMEOUTS_S = {"synth": 300.0, "bootstrap": 600.0, "deploy": 1800.0}
_EVENT = re.compile(r"\|\s*(\d+/\d+)\s*\|[^|]*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S+)")


class Progress:
    """Live progress on a terminal (one rewritten line), plain lines elsewhere (CI logs)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.live = out.isatty()
        self._phase = ""
        self._t0 = time.monotonic()

    def start(self, phase: str, what: str) -> None:
        self._phase, self._t0 = phase, time.monotonic()
        self._emit(f"[{phase}] {what}", final=not self.live)

    def update(self, text: str) -> None:
        if self.live:
            self._emit(f"[{self._phase}] {text}"[:120], final=False)

    def done(self, detail: str) -> float:
        seconds = time.monotonic() - self._t0
        self._emit(f"[{self._phase}] {detail} ({seconds:.1f} s)", final=True)
        return seconds

    def _emit(self, text: str, *, final: bool) -> None:
        if self.live:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


@dataclass
class UpResult:
    endpoint: str
    phases: dict[str, float] = field(default_factory=dict)
    stacks: list[str] = field(default_factory=list)
    sealed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    report: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return self.report is None or self.report.ok


def _run_cdk(
    args: list[str],
    app_dir: Path,
    endpoint: str,
    progress: Progress,
    *,
    phase: str,
    timeout: float,
    verbose: bool = False,
) -> None:
    """Run the cdk CLI, streaming its events into the progress line; raise with its tail, or
    after `timeout` seconds without it finishing (the whole process group is killed: a
    hanging app under cdk goes too) naming the phase it hung in."""
    lines: queue.Queue[str | None] = queue.Queue()
    with guarded_cdk(endpoint, app_dir, report=lambda h, p: lines.put(refusal(h, p))) as cdk:
        _follow_cdk(
            cdk, args, app_dir, lines, progress, phase=phase, timeout=timeout, verbose=verbose
        )


def _follow_cdk(
    cdk: GuardedCdk,
    args: list[str],
    app_dir: Path,
    lines: queue.Queue[str | None],
    progress: Progress,
    *,
    phase: str,
    timeout: float,
    verbose: bool = False,
) -> None:
    """`_run_cdk`'s body, while its egress guard runs (refusals arrive as output lines)."""
    proc = subprocess.Popen(
        [*cdk.argv, *args],
        cwd=app_dir,
        env=cdk.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def _read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=_read, name=f"cdk-{phase}", daemon=True).start()
    tail: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            shown = "\n".join(tail[-5:]) or "(no output)"
            raise BackendError(
                f"{phase}: `cdk {' '.join(args[:2])}` did not finish within {timeout:.0f} s "
                f"(in {app_dir}); stopped it. Last output:\n{shown}"
            ) from None
        if line is None:
            break
        line = line.rstrip()
        if not line:
            continue
        tail = [*tail[-29:], line]
        m = _EVENT.search(line)
        progress.update(f"{m.group(1)} {m.group(2)} {m.group(3)} {m.group(4)}" if m else line)
    if proc.wait() != 0:
        output = "\n".join(tail)
        refused = "".join(f"\n{refusal(*h.rsplit(':', 1))}" for h in cdk.guard.refused)
        construct = construct_error(output)
        if construct is not None:
            detail = f"\n{output}" if verbose else ""
            raise InvalidInput(f"{phase}: {construct}{refused}{detail}")
        shown = "\n".join([*(ln for ln in tail[-15:] if "egress guard: refused" not in ln)])
        shown += refused
        raise BackendError(
            f"{phase}: `cdk {' '.join(args[:2])}` failed (exit {proc.returncode}):\n{shown}"
        )


def _clients(endpoint: str) -> Callable[[str], Any]:
    return lambda service: local_client(service, endpoint)


def assembly_stacks(cdk_out: Path) -> list[str]:
    """The CloudFormation stack names of a cloud assembly (a stack's `stackName`, which is
    its artifact id unless the app set another name)."""
    manifest = json.loads((cdk_out / "manifest.json").read_text())
    return [
        (art.get("properties") or {}).get("stackName") or name
        for name, art in manifest.get("artifacts", {}).items()
        if art.get("type") == "aws:cloudformation:stack"
    ]


def _hosts(state_dir: Path, stacks: list[str]) -> list[AgentHost]:
    """The stacks' running hosts whose user data set up our parent agent."""
    return agent_hosts(state_dir, stacks)


def seal_secrets(
    state_dir: Path,
    endpoint: str,
    stacks: list[str],
    values: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Seal the application secrets of the stacks' hosts; returns the `stack/name`s sealed.

    A name in `values` is sealed with those bytes (again, if it was sealed before); every
    other secret only while still unsealed, with a fresh random value.
    """
    values = values or {}
    client = _clients(endpoint)
    cfn, kms, ssm = client("cloudformation"), client("kms"), client("ssm")
    sealed: list[str] = []
    for h in _hosts(state_dir, stacks):
        stack = str(h.stack)
        resources = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.describe_stack_resources(StackName=stack)["StackResources"]
            if r.get("LogicalResourceId")
        }
        for spec in h.spec.get("secrets") or []:  # the host.json its user data wrote
            name = f"{stack}/{spec['name']}"
            ref = state_dir / VERIFIER_DIR / stack / f"{spec['name']}.secret"
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
    state_dir: Path, stacks: list[str], progress: Progress, timeout: float = BOOT_TIMEOUT_S
) -> list[AgentHost]:
    """Ask every agent of the stacks to re-sync, then wait until each enclave runs and says
    (its Status) that it was provisioned; returns the hosts."""
    resync(state_dir, stacks)
    deadline = time.monotonic() + timeout
    while True:
        hosts = agent_hosts(state_dir, stacks)
        states = {h.instance_id: h.provisioning() for h in hosts}  # the enclave's Status
        pending = [iid for iid, st in states.items() if not st["provisioned"]]
        if not pending:
            return hosts
        errors = [
            f"{iid}: {st['last_error'] or st['journal']}"
            for iid, st in states.items()
            if iid in pending and (st["last_error"] or st["journal"])
        ]
        progress.update(
            f"{len(hosts) - len(pending)}/{len(hosts)} enclaves provisioned"
            + (f"; {errors[0]}" if errors else "")
        )
        if time.monotonic() > deadline:
            raise BackendError(
                f"enclaves not provisioned after {timeout:.0f} s: " + "; ".join(errors or pending)
            )
        time.sleep(0.5)


def wait_user_data_hosts(
    state_dir: Path, stacks: list[str], progress: Progress, timeout: float = BOOT_TIMEOUT_S
) -> list[str]:
    """Wait until the stacks' enclave-enabled instances that boot from their user data have run
    it; returns their instance ids. A user data that failed fails the boot phase, naming the
    instance, the failing command and its exit status (its console has the rest), since an
    enclave it did not start would fail on AWS too."""
    from local_backend.host import control, hooks

    deadline = time.monotonic() + timeout
    while True:
        booting = []
        for layout in hooks.hosts(state_dir):
            info, host = layout.read_info(), layout.read_host()
            ours = info.get("stack_name") in stacks and info.get("enclave_enabled")
            if ours and host.get("state") in ("booting", "running", "failed"):
                booting.append((layout.dir.name, host))
        failed = [(iid, err) for iid, h in booting if (err := control.boot_error(h))]
        if failed:
            raise BackendError(
                "; ".join(f"instance {iid}: {err}" for iid, err in failed)
                + " (aws ec2 get-console-output shows its console)"
            )
        pending = [iid for iid, h in booting if not h.get("boot")]
        if not pending:
            return [iid for iid, _ in booting]
        progress.update(f"{len(booting) - len(pending)}/{len(booting)} hosts ran their user data")
        if time.monotonic() > deadline:
            raise BackendError(
                f"user data still running after {timeout:.0f} s on {', '.join(pending)}"
            )
        time.sleep(0.2)


def up(
    app_dir: Path,
    *,
    state_dir: Path,
    port: int = server.DEFAULT_PORT,
    progress: Progress | None = None,
    run_verify: bool = True,
    timeouts: Mapping[str, float] | None = None,
    verbose: bool = False,
) -> UpResult:
    """Start (if needed), bootstrap, deploy every stack of the app, seal, boot and verify.

    A failure after the endpoint is up says so: the error ends with whether this `up` started
    the endpoint (or found it running) and how to stop it.
    """
    app_dir = Path(app_dir).resolve()
    if not (app_dir / "cdk.json").is_file():
        raise InvalidInput(f"--app: expected a CDK app directory with a cdk.json, found {app_dir}")
    state_dir = Path(state_dir).resolve()
    progress = progress or Progress()
    limits = {**PHASE_TIMEOUTS_S, **(timeouts or {})}

    progress.start("endpoint", "local endpoint")
    already = server.status(state_dir).running
    info = server.start(port, state_dir)
    result = UpResult(endpoint=info.endpoint)
    result.phases["endpoint"] = progress.done(f"{info.endpoint} (state {state_dir})")
    try:
        _deploy_phases(
            app_dir, state_dir, info.endpoint, progress, result, limits, run_verify, verbose
        )
    except EnclaveKitError as exc:
        how = "was already running" if already else "was started by this `up`"
        exc.args = (
            f"{exc}\nThe local endpoint {info.endpoint} {how} and is still running; stop it "
            f"with: enclavekit local stop --state-dir {state_dir}",
        )
        raise
    return result


def _deploy_phases(
    app_dir: Path,
    state_dir: Path,
    endpoint: str,
    progress: Progress,
    result: UpResult,
    limits: Mapping[str, float],
    run_verify: bool,
    verbose: bool,
) -> None:
    progress.start("synth", "cdk synth")
    _run_cdk(
        ["synth", "--quiet"],
        app_dir,
        endpoint,
        progress,
        phase="synth",
        timeout=limits["synth"],
        verbose=verbose,
    )
    result.stacks = assembly_stacks(app_dir / "cdk.out")
    result.phases["synth"] = progress.done(
        f"{len(result.stacks)} stack(s): {', '.join(result.stacks)}"
    )

    progress.start("bootstrap", f"cdk bootstrap {bootstrap_target()}")
    ssm = _clients(endpoint)("ssm")
    try:
        ssm.get_parameter(Name="/cdk-bootstrap/hnb659fds/version")
        result.phases["bootstrap"] = progress.done("already bootstrapped")
    except ssm.exceptions.ParameterNotFound:
        _run_cdk(
            ["bootstrap", bootstrap_target()],
            app_dir,
            endpoint,
            progress,
            phase="bootstrap",
            timeout=limits["bootstrap"],
        )
        result.phases["bootstrap"] = progress.done("CDKToolkit deployed")

    progress.start("deploy", "cdk deploy --all")
    _run_cdk(
        ["deploy", "--all", "--app", "cdk.out", "--require-approval", "never"],
        app_dir,
        endpoint,
        progress,
        phase="deploy",
        timeout=limits["deploy"],
    )
    result.phases["deploy"] = progress.done(f"deployed {', '.join(result.stacks)}")

    progress.start("boot", "hosts: user data and enclaves")
    booted = wait_user_data_hosts(state_dir, result.stacks, progress)
    result.restarted = restart_enclaves(state_dir, result.stacks)
    for what in result.restarted:
        progress.update(f"restarted the enclave of {what}")
    result.phases["boot"] = progress.done(
        f"{len(booted)} host(s) ran their user data"
        + (f"; restarted {'; '.join(result.restarted)}" if result.restarted else "")
    )

    progress.start("seal", "application secrets and provisioning")
    result.sealed = seal_secrets(state_dir, endpoint, result.stacks)
    hosts = wait_provisioned(state_dir, result.stacks, progress)
    degraded = [
        f"{h.instance_id}: {st['last_error']}"
        for h in hosts
        if (st := h.provisioning())["degraded"]
    ]
    result.phases["seal"] = progress.done(
        f"sealed {', '.join(result.sealed) or 'nothing new'}; "
        f"{len(hosts)} enclave(s) provisioned"
        + (f"; DEGRADED {'; '.join(degraded)}" if degraded else "")
    )

    if run_verify:
        progress.start("verify", "end-to-end checks")
        result.report = verify(
            state_dir,
            on_check=lambda h, c: progress.update(
                f"{h.logical_id}: {c.name} {'ok' if c.ok else 'FAILED'}"
            ),
        )
        bad = sum(not c.ok for h in result.report.hosts for c in h.checks)
        result.phases["verify"] = progress.done(
            "all checks passed" if result.report.ok else f"{bad} check(s) failed"
        )


def try_it_lines(
    state_dir: Path, stacks: list[str] | None = None, *, command: str = "enclavekit"
) -> list[str]:
    """ "Try it" curl lines, one per running enclave host that serves TLS (a domain and a
    certificate; what `up` and `demo` print after a deployment)."""
    out = []
    for h in agent_hosts(state_dir, stacks):
        st = h.state()
        if not (h.spec.get("certificate") and st["relay_port"] and st["domain"]):
            continue
        out.append(_curl(command, state_dir, st["domain"], st["relay_port"]))
    from local_backend.host import hooks
    from local_backend.verify import served_https

    for layout in hooks.hosts(state_dir):  # nginx of an ACM for Nitro Enclaves host (set-up A)
        info = layout.read_info()
        if stacks is not None and info.get("stack_name") not in stacks:
            continue
        served = served_https(layout, state_dir)
        if served:
            out.append(_curl(command, state_dir, *served))
    return out


def _curl(command: str, state_dir: Path, domain: str, port: int) -> str:
    return (
        f"Try it: curl --cacert <({command} local ca --state-dir {state_dir}) "
        f"--resolve {domain}:{port}:127.0.0.1 https://{domain}:{port}/"
    )


def phases_table(result: UpResult) -> str:
    rows = [(name, f"{secs:6.1f} s") for name, secs in result.phases.items()]
    total = sum(result.phases.values())
    width = max(len(r[0]) for r in rows + [("total", "")])
    lines = [f"{'phase'.ljust(width)}  time", f"{'-' * width}  ------"]
    lines += [f"{n.ljust(width)}  {t}" for n, t in rows]
    lines.append(f"{'total'.ljust(width)}  {total:6.1f} s")
    return "\n".join(lines)
