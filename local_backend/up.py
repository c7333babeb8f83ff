"""`enclavekit up`: endpoint, bootstrap, deploy, seal, boot, verify — with progress and a table.

Phases (each timed; `make bench` reads the same figures; the steps are local_backend.deploy):
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

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from enclavekit.cdk_errors import construct_error
from enclavekit.errors import BackendError, EnclaveKitError, InvalidInput
from local_backend import deploy, server
from local_backend.cdk import bootstrap_target
from local_backend.egress import refusal
from local_backend.parent import restart_enclaves
from local_backend.parent.view import agent_hosts
from local_backend.verify import VerifyReport, verify

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
    """Run the cdk CLI (local_backend.deploy.run_cdk), its events in the progress line; raise
    with its tail, or naming the phase it hung in after `timeout` seconds."""

    def _event(line: str) -> None:
        m = _EVENT.search(line)
        progress.update(f"{m.group(1)} {m.group(2)} {m.group(3)} {m.group(4)}" if m else line)

    run = deploy.run_cdk(endpoint, app_dir, args, timeout=timeout, on_line=_event)
    tail = [ln for ln in run.output.splitlines() if ln.strip()][-30:]
    if run.timed_out:
        shown = "\n".join(tail[-6:-1]) or "(no output)"
        raise BackendError(
            f"{phase}: `cdk {' '.join(args[:2])}` did not finish within {timeout:.0f} s "
            f"(in {app_dir}); stopped it. Last output:\n{shown}"
        )
    if run.returncode != 0:
        output = "\n".join(tail)
        refused = "".join(f"\n{refusal(*h.rsplit(':', 1))}" for h in run.refused)
        construct = construct_error(output)
        if construct is not None:
            detail = f"\n{output}" if verbose else ""
            raise InvalidInput(f"{phase}: {construct}{refused}{detail}")
        shown = "\n".join(ln for ln in tail[-15:] if "egress guard: refused" not in ln)
        shown += refused
        raise BackendError(
            f"{phase}: `cdk {' '.join(args[:2])}` failed (exit {run.returncode}):\n{shown}"
        )


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
    result.stacks = deploy.assembly_stacks(app_dir / "cdk.out")
    result.phases["synth"] = progress.done(
        f"{len(result.stacks)} stack(s): {', '.join(result.stacks)}"
    )

    progress.start("bootstrap", f"cdk bootstrap {bootstrap_target()}")
    if deploy.is_bootstrapped(endpoint):
        result.phases["bootstrap"] = progress.done("already bootstrapped")
    else:
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
    booted = deploy.wait_user_data(state_dir, result.stacks, on_progress=progress.update)
    result.restarted = restart_enclaves(state_dir, result.stacks)
    for what in result.restarted:
        progress.update(f"restarted the enclave of {what}")
    result.phases["boot"] = progress.done(
        f"{len(booted)} host(s) ran their user data"
        + (f"; restarted {'; '.join(result.restarted)}" if result.restarted else "")
    )

    progress.start("seal", "application secrets and provisioning")
    result.sealed = deploy.seal_secrets(state_dir, endpoint, result.stacks)
    hosts = deploy.wait_provisioned(state_dir, result.stacks, on_progress=progress.update)
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
