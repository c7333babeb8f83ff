"""`enclavekit up` on the sample app, by phase, against the CDK alone in the same run.

What runs: a copy of the sample app (app.py, cdk.json, enclave_app/ in a temp dir, so the
repository's cdk.out and .enclavekit are untouched) is brought up with a fresh state dir on a
free loopback port, twice: a first `up` (endpoint start, synth, bootstrap, deploy, boot, seal,
verify) and a second one with nothing changed.

Baselines, measured in the same run with the same CLI, environment and endpoint:
  cdk --version     the CLI's bare start-up (Node.js + aws-cdk), median of 3
  trivial synth     `cdk synth` of a plain CDK app with one SSM parameter (Python + jsii +
                    aws-cdk-lib, no enclavekit: no image build, no linter plugin)
  trivial deploy    `cdk deploy` of that synthesized stack against the same endpoint (after
                    both `up`s, as verify checks every deployed stack), first as a create, then
                    again with nothing changed (the second `up`'s counterpart)
Bootstrap is the CDK's own CDKToolkit stack, so it has no CDK-only counterpart other than
itself; the CDK-only total is trivial synth + the same bootstrap + trivial deploy.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from local_backend import server

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("endpoint", "synth", "bootstrap", "deploy", "boot", "seal", "verify")
CDK_TIMEOUT_S = 300

_TRIVIAL_APP = '''"""A plain CDK app: one SSM parameter, nothing of enclavekit (the baseline)."""
import os

import aws_cdk as cdk
from aws_cdk import aws_ssm as ssm

app = cdk.App()
stack = cdk.Stack(app, "BenchBaseline", env=cdk.Environment(
    account=os.environ["CDK_DEFAULT_ACCOUNT"], region=os.environ["CDK_DEFAULT_REGION"]))
ssm.StringParameter(stack, "Param", parameter_name="/enclavekit-bench/baseline",
                    string_value=os.environ.get("BENCH_BASELINE_VALUE", "baseline"))
app.synth()
'''


def free_port() -> int:
    """A loopback port free right now (the endpoint binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_sample_app(dest: Path, *, web_host: bool = False) -> Path:
    """app.py, cdk.json and enclave_app/ under `dest`, the app run by this interpreter (the
    set-up A web host only when asked for: the benches of the image host stay comparable)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", dest / "app.py")
    shutil.copytree(
        ROOT / "enclave_app",
        dest / "enclave_app",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    config = json.loads((ROOT / "cdk.json").read_text())
    config["app"] = f"{sys.executable} app.py"  # cdk.json names the repo-relative .venv
    config.setdefault("context", {})["web_host"] = web_host
    (dest / "cdk.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest


def write_trivial_app(dest: Path) -> Path:
    """The one-SSM-parameter CDK app the CDK-only baselines synthesize and deploy."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "app.py").write_text(_TRIVIAL_APP)
    (dest / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} app.py"}) + "\n")
    return dest


def timed_cdk(args: list[str], cwd: Path, endpoint: str) -> float:
    """Seconds one `cdk ARGS` takes in `cwd` against `endpoint`, run as `up` runs it
    (local_backend.deploy.run_cdk: the pinned CLI behind the egress guard); raises with its
    tail on failure."""
    from local_backend.deploy import run_cdk

    run = run_cdk(endpoint, cwd, args, timeout=CDK_TIMEOUT_S)
    if run.returncode != 0:
        why = f"exit {run.returncode}"
        raise RuntimeError(f"`cdk {' '.join(args)}` failed ({why}):\n{run.tail(10)}")
    return run.seconds


@dataclass(frozen=True)
class UpTiming:
    """One `enclavekit up`: its phases (seconds) and the verify checks that failed, if any."""

    phases: dict[str, float]
    failed_checks: tuple[str, ...] = ()


def timed_up(app_dir: Path, state_dir: Path, port: int, *, run_verify: bool = True) -> UpTiming:
    """Run one `enclavekit up`; raises if it fails before verify (a verify failure is kept)."""
    from local_backend.up import Progress, up

    log = io.StringIO()
    try:
        result = up(
            app_dir, state_dir=state_dir, port=port, progress=Progress(log), run_verify=run_verify
        )
    except Exception as exc:
        tail = "\n".join(log.getvalue().strip().splitlines()[-8:])
        raise RuntimeError(f"enclavekit up failed: {exc}\n{tail}") from exc
    failed: list[str] = []
    if result.report is not None:
        failed += result.report.problems
        failed += [
            f"{c.name}: {c.detail}" for h in result.report.hosts for c in h.checks if not c.ok
        ]
    return UpTiming(dict(result.phases), tuple(failed))


@dataclass(frozen=True)
class Baselines:
    """The CDK-only figures of one run, in seconds."""

    cli: float
    synth: float
    deploy_create: float
    deploy_nochange: float


def measure(work: Path) -> tuple[UpTiming, UpTiming, Baselines, int]:
    """Both `up`s and the baselines, in a fresh state dir under `work`; endpoint always stopped."""
    app = copy_sample_app(work / "app")
    trivial = write_trivial_app(work / "trivial")
    state = work / "state"
    port = free_port()
    endpoint = f"http://localhost:{port}"
    cli = statistics.median(timed_cdk(["--version"], trivial, endpoint) for _ in range(3))
    synth = timed_cdk(["synth", "--quiet"], trivial, endpoint)  # no AWS call: no lookups
    try:
        first = timed_up(app, state, port)
        second = timed_up(app, state, port)
        # after both `up`s: verify checks every deployed stack, and this one has no enclave
        deploy_args = ["deploy", "--all", "--app", "cdk.out", "--require-approval", "never"]
        create = timed_cdk(deploy_args, trivial, endpoint)
        nochange = timed_cdk(deploy_args, trivial, endpoint)
    finally:
        server.stop(state)
    return first, second, Baselines(cli, synth, create, nochange), port


def table(first: dict[str, float], second: dict[str, float], base: Baselines) -> str:
    """Each phase in seconds, x `cdk --version`, and x its CDK-only counterpart where one exists."""

    def cdk_only(phase: str, run: dict[str, float], deploy: float) -> float | None:
        if phase == "synth":
            return base.synth
        if phase == "deploy":
            return deploy
        if phase == "total":
            return base.synth + run.get("bootstrap", 0.0) + deploy
        return None

    def cells(phase: str, run: dict[str, float], deploy: float) -> str:
        secs = sum(run.values()) if phase == "total" else run.get(phase)
        if secs is None:
            return f"{'-':>8} {'':>8} {'':>9}"
        ref = cdk_only(phase, run, deploy)
        rel = f"{secs / ref:9.2f}" if ref else f"{'-':>9}"
        return f"{secs:8.1f} {secs / base.cli:8.1f} {rel}"

    lines = [
        f"baselines: cdk --version {base.cli:.2f} s (median of 3); trivial app (1 SSM parameter): "
        f"synth {base.synth:.1f} s, deploy {base.deploy_create:.1f} s (create), "
        f"{base.deploy_nochange:.1f} s (no change)",
        f"{'phase':10} {'1st up s':>8} {'x cli':>8} {'x CDK-only':>9}   "
        f"{'2nd up s':>8} {'x cli':>8} {'x CDK-only':>9}",
    ]
    for phase in (*PHASES, "total"):
        lines.append(
            f"{phase:10} {cells(phase, first, base.deploy_create)}   "
            f"{cells(phase, second, base.deploy_nochange)}"
        )
    lines.append(
        "x cli = phase / cdk --version; x CDK-only = phase / the trivial app's synth or "
        "deploy (total: trivial synth + bootstrap + trivial deploy)"
    )
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-up-") as tmp:
        first, second, base, port = measure(Path(tmp))
    print(
        f"enclavekit up of the sample app (fresh state dir, endpoint on 127.0.0.1:{port}), "
        "then again with no change"
    )
    print(table(first.phases, second.phases, base))
    failed = [
        f"{which} up: {f}"
        for which, run in (("1st", first), ("2nd", second))
        for f in run.failed_checks
    ]
    if failed:  # the figures are shown, but a run whose verify failed is not a good run
        raise RuntimeError("verify failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
