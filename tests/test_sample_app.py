"""The sample app through the real cdk CLI (Node 22), cfn-lint on every template, the demo table."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from enclavekit.cli import demo
from enclavekit.localenv import local_aws_env
from enclavekit.toolchain import cdk_command, tool_path

ROOT = Path(__file__).resolve().parent.parent
# Synth makes no AWS calls; a loopback endpoint only guarantees none could reach an account.
SYNTH_ENDPOINT = "http://localhost:4599"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("cdk") / "cdk.out"
    with tempfile.TemporaryDirectory() as scratch:
        env = local_aws_env(SYNTH_ENDPOINT, scratch_dir=Path(scratch))
        env["PATH"] = tool_path(env["PATH"], start=ROOT)
        proc = subprocess.run(
            [*cdk_command(ROOT), "synth", "--quiet", "--output", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    return {"proc": proc, "out": out}


def test_cdk_synth_succeeds_on_node_22_without_eol_banner(synth: dict) -> None:
    proc = synth["proc"]
    assert proc.returncode == 0, proc.stderr
    low = proc.stderr.lower()
    assert "end-of-life" not in low and "eol" not in low.split(), proc.stderr
    assert "nodeversionsupportwarning" not in low
    assert Path(cdk_command(ROOT)[0]).parts[-3:] == ("node", "bin", "node")


def test_templates_have_the_seed_resources(synth: dict) -> None:
    template = json.loads((synth["out"] / "EnclaveService.template.json").read_text())
    types = sorted(r["Type"] for r in template["Resources"].values())
    for kind in (
        "AWS::EC2::Instance",
        "AWS::EC2::EnclaveCertificateIamRoleAssociation",
        "AWS::KMS::Key",
        "AWS::CertificateManager::Certificate",
        "AWS::SSM::Parameter",
    ):
        assert kind in types, kind
    hosts = {
        k[:7]: r for k, r in template["Resources"].items() if r["Type"] == "AWS::EC2::Instance"
    }
    assert set(hosts) == {"HostF59", "WebHost"}  # set-up B and set-up A
    for inst in hosts.values():
        assert inst["Properties"]["InstanceType"] == "m5a.xlarge"
        meta = inst["Metadata"]["enclavekit:host"]
        assert meta["enclave"] == {
            "cpu_count": 2, "memory_mib": 512, "cid": 16, "debug_mode": False
        }  # fmt: skip
        assert meta["service"]["domain"] == "enclave.example.test"
    assert "certificate" not in hosts["HostF59"]["Metadata"]["enclavekit:host"]  # not set-up C
    web = hosts["WebHost"]["Metadata"]["enclavekit:host"]
    assert "image" not in web and web["certificate"]["arn"]  # ACM's enclave, nginx on the parent
    assert set(template["Outputs"]) >= {
        "InstanceId", "RoleArn", "KeyArn", "ServicePort", "Domain", "WebInstanceId", "WebRoleArn"
    }  # fmt: skip


def test_validation_report_acknowledges_w9010_and_runs_the_linter(synth: dict) -> None:
    report = json.loads((synth["out"] / "validation-report.json").read_text())
    suppressed = [v for p in report["pluginReports"] for v in p.get("suppressedViolations", [])]
    assert any(
        v["acknowledgedId"] == "CloudFormation-Validate::W9010" and v["reason"] for v in suppressed
    )
    for p in report["pluginReports"]:
        assert p["conclusion"] == "success", p


def test_cfn_lint_reports_no_errors(synth: dict) -> None:
    templates = sorted(synth["out"].glob("*.template.json"))
    assert templates
    proc = subprocess.run(
        [sys.executable, "-m", "cfnlint", "--format", "json", *map(str, templates)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    errors = [f for f in findings if f["Level"] == "Error"]
    assert errors == [], errors


def test_demo_table_shows_bound_pcrs(synth: dict) -> None:
    rows = [r for r in demo.hosts_in_assembly(synth["out"]) if r["meta"].get("image")]
    assert len(rows) == 1  # and the web host, whose enclave is ACM's
    meta = rows[0]["meta"]
    table = demo.render(rows)
    assert meta["image"]["measurements"]["PCR0"] in table
    key = rows[0]["keys"][0]
    assert key["allow"] == {n: meta["image"]["measurements"][n] for n in ("PCR0", "PCR1", "PCR2")}
    assert key["deny"] == ["PCR0", "PCR1", "PCR2"]
    assert " NO " not in table


def test_demo_bad_project_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "enclavekit", "demo", "--project", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cdk.json" in proc.stderr


def test_web_host_role_has_the_three_acm_grants(synth: dict) -> None:
    """AWS's ACM agent reads the association's S3 object, decrypts its key (in the enclave,
    attested) and looks its own role up: s3:GetObject, kms:Decrypt, iam:GetRole on the web
    host's role, and nothing that would let the parent decrypt (no unattested key grant)."""
    template = json.loads((synth["out"] / "EnclaveService.template.json").read_text())
    web_roles = [
        k
        for k, r in template["Resources"].items()
        if r["Type"] == "AWS::IAM::Role" and k.startswith("WebHost")
    ]
    assert len(web_roles) == 1, web_roles
    actions: set[str] = set()
    for r in template["Resources"].values():
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": web_roles[0]} in r["Properties"]["Roles"]:
            for st in r["Properties"]["PolicyDocument"]["Statement"]:
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                actions.update(acts)
    assert {"s3:GetObject", "kms:Decrypt", "iam:GetRole"} <= actions, actions
