"""Lint time of enclavekit vs cfn-lint on the same files in the same run.

Two workloads: the cdk.out of a small enclave app (the linter's CDK fixture app, synthesized
once here) and 200 generated enclave templates (variants of the hand-written fixture stack).
Both tools run as a fresh process, as CI runs them. A second table: how long enclavekit takes to
refuse hostile input (a billion-laughs YAML, 200k-deep JSON, an Fn::Sub amplifier) against
linting the hand-written fixture stack, each a fresh process (the issue 8 hardening).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from enclavekit.toolchain import tool_path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "lint"
BIN = Path(sys.executable).parent


def _timed(argv: list[str], cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - start, proc.returncode


def _synth_fixture_app(dest: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env |= {"PATH": tool_path(env.get("PATH")), "PYTHONPATH": str(ROOT), "CDK_OUTDIR": str(dest)}
    subprocess.run(
        [sys.executable, "app.py"],
        cwd=FIX / "cdkapp",
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return dest


def _generate(dest: Path, n: int = 200) -> list[Path]:
    """n templates: the fixture stack with a distinct instance type / PCR per copy, some
    broken on purpose so both tools report findings."""
    base = (FIX / "good.yaml").read_text()
    types = ["m5a.xlarge", "m6i.xlarge", "c6g.large", "c5.2xlarge", "t3.large"]
    out = []
    for i in range(n):
        text = base.replace("InstanceType: m5a.xlarge", f"InstanceType: {types[i % len(types)]}")
        text = text.replace("b" * 96, f"{i:02x}" * 48 if i % 7 else "0" * 96)
        path = dest / f"stack{i:03d}.yaml"
        path.write_text(text)
        out.append(path)
    return out


def _hostile(dest: Path) -> list[tuple[str, Path]]:
    """The hostile templates of tests/test_lint_hostile.py, written to `dest`."""
    sys.path.insert(0, str(ROOT))
    from tests.test_lint_hostile import HOSTILE

    out = []
    for name in ("billion-laughs.yaml", "deep-200k.json", "amplify.json"):
        path = dest / name
        path.write_text(HOSTILE[name][0])
        out.append((name, path))
    return out


def hostile_rows(tmpdir: Path) -> list[tuple[str, float, int, float]]:
    """(input, seconds to refuse, exit status, seconds to lint good.yaml) per hostile file."""
    lint = [sys.executable, "-m", "enclavekit", "lint"]
    base = min(_timed([*lint, str(FIX / "good.yaml")], tmpdir)[0] for _ in range(3))
    rows = []
    for name, path in _hostile(tmpdir):
        seconds, rc = _timed([*lint, str(path)], tmpdir)
        rows.append((name, seconds, rc, base))
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-lint-") as tmp:
        tmpdir = Path(tmp)
        cdk_out = _synth_fixture_app(tmpdir / "cdk.out")
        templates = sorted(str(p) for p in cdk_out.glob("*.template.json"))
        (tmpdir / "gen").mkdir()
        gen = _generate(tmpdir / "gen")
        rows = []
        for label, ours_args, theirs_args in (
            ("cdk.out of a small enclave app", [str(cdk_out)], templates),
            ("200 generated templates", [str(p) for p in gen], [str(p) for p in gen]),
        ):
            ours, rc1 = _timed(
                [
                    sys.executable,
                    "-m",
                    "enclavekit",
                    "lint",
                    *ours_args,
                    "--format",
                    "sarif",
                    "--output",
                    str(tmpdir / "o.sarif"),
                ],
                tmpdir,
            )
            cfn = shutil.which("cfn-lint", path=str(BIN)) or "cfn-lint"
            theirs, rc2 = _timed([cfn, "--format", "parseable", *theirs_args], tmpdir)
            rows.append((label, ours, rc1, theirs, rc2))
    print(f"{'workload':34} {'enclavekit lint':>16} {'cfn-lint':>10} {'ratio':>7}")
    for label, ours, rc1, theirs, rc2 in rows:
        print(
            f"{label:34} {ours:>14.2f} s {theirs:>8.2f} s {ours / theirs:>6.2f}x"
            f"   (exit {rc1} / {rc2})"
        )
    print("ratio = enclavekit time / cfn-lint time on the same files (lower is faster)")
    with tempfile.TemporaryDirectory(prefix="bench-lint-hostile-") as tmp:
        head = f"{'hostile input (refused)':34} {'enclavekit lint':>16} {'good.yaml':>10}"
        print(f"\n{head} {'ratio':>7}")
        for name, seconds, rc, base in hostile_rows(Path(tmp)):
            print(
                f"{name:34} {seconds:>14.2f} s {base:>8.2f} s {seconds / base:>6.2f}x   (exit {rc})"
            )
        print("ratio = time to refuse the hostile file / time to lint the fixture stack")


if __name__ == "__main__":
    main()
