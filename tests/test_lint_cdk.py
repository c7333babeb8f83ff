"""The linter inside CDK: the real `cdk synth` of a deliberately broken copy of a small enclave
app fails with the rule ids, the acknowledgment helper writes Metadata the rules honour, and the
sample app synthesizes clean with no acknowledgment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enclavekit.errors import InvalidInput
from enclavekit.lint import lint_paths
from enclavekit.lint.acknowledgments import ACK_METADATA
from enclavekit.toolchain import cdk_command, tool_path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "fixtures" / "lint" / "cdkapp"

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env["PATH"] = tool_path(env.get("PATH"))
    env["PYTHONPATH"] = str(ROOT)
    env["CDK_DISABLE_VERSION_CHECK"] = "1"
    return env


def test_broken_copy_fails_real_cdk_synth(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(APP, app_dir, ignore=shutil.ignore_patterns("cdk.out"))
    src = (app_dir / "app.py").read_text()
    broken = (
        src.replace('INSTANCE_TYPE = "m5a.xlarge"', 'INSTANCE_TYPE = "t3.large"')
        .replace("require_imdsv2=True", "require_imdsv2=False")
        .replace(
            "app.synth()",
            "from enclave_constructs.lint import acknowledge\n"
            'acknowledge(host, "EK-HOST-004", "test: IMDSv1 accepted on purpose")\napp.synth()',
        )
    )
    assert broken.count("t3.large") == 1 and "require_imdsv2=False" in broken
    (app_dir / "app.py").write_text(broken)
    (app_dir / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} app.py"}))
    out = tmp_path / "cdk.out"
    proc = subprocess.run(
        [*cdk_command(ROOT), "synth", "-q", "--no-notices", "--output", str(out)],
        cwd=app_dir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "[EK-HOST-001]" in text and "t3.large" in text
    assert "EK-HOST-004, acknowledged: test: IMDSv1 accepted on purpose" in text
    report = json.loads((out / "validation-report.json").read_text())
    ours = next(p for p in report["pluginReports"] if p["pluginName"] == "enclavekit")
    assert ours["conclusion"] == "failure"
    assert {"EK-HOST-001", "EK-HOST-004"} <= {v["ruleName"] for v in ours["violations"]}
    # the same assembly through the standalone linter: acknowledged, not dropped
    lint = lint_paths([out])
    acked = [f for f in lint.findings if f.acknowledged]
    assert [f.rule_id for f in acked] == ["EK-HOST-004"]
    assert [f.rule_id for f in lint.errors] == ["EK-HOST-001"]
    assert acked[0].location.cdk_path == "LintFixtureStack/Host/Resource"


def test_acknowledge_helper_validates_and_merges() -> None:
    import aws_cdk as cdk
    from enclave_constructs.lint import acknowledge

    app = cdk.App()
    stack = cdk.Stack(app, "S")
    res = cdk.CfnResource(stack, "R", type="AWS::S3::Bucket")
    with pytest.raises(InvalidInput, match="non-empty"):
        acknowledge(res, "EK-PCR-002", "  ")
    with pytest.raises(InvalidInput, match="EK-KMS-001"):
        acknowledge(res, "PCR-2", "reason")
    acknowledge(res, "EK-PCR-002", "first")
    acknowledge(res, "EK-PCR-002", "second")
    acknowledge(stack, "EK-KMS-003", "whole scope")
    assert res.get_metadata(ACK_METADATA) == [
        {"id": "EK-PCR-002", "reason": "second"},
        {"id": "EK-KMS-003", "reason": "whole scope"},
    ]


def test_sample_app_synthesizes_clean_without_acknowledgments(tmp_path: Path) -> None:
    if not (ROOT / "app.py").exists():
        pytest.fail("the sample app app.py is missing")
    out = tmp_path / "cdk.out"
    env = _env() | {"CDK_OUTDIR": str(out)}
    proc = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = lint_paths([out])
    assert not report.findings, [f.message for f in report.findings]
