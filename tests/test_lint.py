"""The policy linter on template fixtures: every rule fails its failing fixture and passes its
passing one, AWS documentation examples pass, and every report format is well formed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from enclavekit.cli import main as cli_main
from enclavekit.errors import TemplateError
from enclavekit.lint import Severity, all_rules, lint_paths, parse_template
from enclavekit.lint.reporters import render
from enclavekit.lint.resolve import Resolver

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "lint"
RULE_IDS = [r.id for r in all_rules()]
MULTITOOL = ROOT / "node_modules" / "@microsoft" / "sarif-multitool-linux" / "Sarif.Multitool"


def test_rule_table_is_stable_and_documented() -> None:
    doc = (ROOT / "docs" / "lint-rules.md").read_text()
    assert len(RULE_IDS) == len(set(RULE_IDS)) >= 20
    for rule in all_rules():
        assert f"| {rule.id} |" in doc, f"{rule.id} missing from docs/lint-rules.md"
        assert rule.title and rule.explanation and rule.fix


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_fails_its_failing_fixture(rule_id: str) -> None:
    report = lint_paths([FIX / "rules" / f"{rule_id}.fail.yaml"])
    hits = [f for f in report.findings if f.rule_id == rule_id]
    assert hits, f"{rule_id} did not fire: {[f.rule_id for f in report.findings]}"
    for f in hits:
        assert f.location.logical_id and f.location.logical_id in f.message
        assert f.location.line and f.location.line > 1


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_passes_its_passing_fixture(rule_id: str) -> None:
    report = lint_paths([FIX / "rules" / f"{rule_id}.pass.yaml"])
    assert not report.findings, [f.message for f in report.findings]


def test_complete_stack_and_aws_documentation_examples_pass() -> None:
    report = lint_paths([FIX / "good.yaml", FIX / "aws-doc-examples.json"])
    assert report.findings == ()
    assert not report.failed


def test_kms_bypass_is_judged_with_aws_semantics() -> None:
    """The same unconditioned identity grant is a bypass without the key's Deny, not with it."""
    bypass = lint_paths([FIX / "rules" / "EK-KMS-002.fail.yaml"])
    assert {"EK-KMS-002", "EK-KMS-003"} <= {f.rule_id for f in bypass.findings}
    guarded = lint_paths([FIX / "rules" / "EK-KMS-002.pass.yaml"])
    assert guarded.findings == ()


def test_json_lines_and_yaml_short_forms() -> None:
    text = '{\n "Resources": {\n  "A": {"Type": "AWS::S3::Bucket"},\n\n  "B": {\n   "Type": "X::Y",'
    text += ' "Properties": {"Ref": "A", "Name": {"Fn::Sub": "${A}-x"}}}\n }\n}\n'
    tpl = parse_template(text, Path("t.json"))
    assert {k: r.line for k, r in tpl.resources.items()} == {"A": 3, "B": 5}
    yml = parse_template(
        "Resources:\n  R:\n    Type: AWS::IAM::Role\n    Properties:\n"
        "      Path: !Sub '/${AWS::Region}/'\n      V: !Select [1, !Split [',', 'a,b']]\n"
        "      W: !GetAtt Key.Arn\n      Z: 0x12\n  Key:\n    Type: AWS::KMS::Key\n",
        Path("t.yaml"),
    )
    assert yml.resources["Key"].line == 9
    props = Resolver(yml).resolve(dict(yml.resources["R"].properties))
    assert props["Path"] == "/us-east-1/" and props["V"] == "b" and props["Z"] == "0x12"
    assert props["W"] == "arn:aws:kms:us-east-1:123456789012:key/key-t-Key"  # per stack


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{ nope", "invalid JSON at line 1"),
        ("- a\n- b\n", "found list"),
        ('{"Resources": {"A": 3}}', "resource 'A'"),
        ("Resources: [", "YAML error"),
    ],
)
def test_bad_templates_raise_one_line_errors(text: str, expected: str) -> None:
    with pytest.raises(TemplateError, match=expected) as info:
        parse_template(text, Path("bad.json"))
    assert "\n" not in str(info.value)


def test_acknowledged_findings_are_kept_and_marked(tmp_path: Path) -> None:
    src = (FIX / "rules" / "EK-PCR-002.fail.yaml").read_text()
    acked = src.replace(
        "  AppKey:\n    Type: AWS::KMS::Key\n",
        "  AppKey:\n    Type: AWS::KMS::Key\n    Metadata:\n      enclavekit:acknowledge:\n"
        "        - {id: EK-PCR-002, reason: dev stack runs the debug image}\n"
        "        - {id: EK-PCR-006, reason: drift is intended here}\n",
    )
    path = tmp_path / "acked.yaml"
    path.write_text(acked)
    report = lint_paths([path])
    assert not report.failed
    marked = {f.rule_id: f for f in report.findings if f.acknowledged}
    assert marked["EK-PCR-002"].reason == "dev stack runs the debug image"
    sarif = json.loads(render(report, "sarif"))
    results = sarif["runs"][0]["results"]
    assert all(r["suppressions"][0]["kind"] == "inSource" for r in results)
    assert json.loads(render(report, "json"))["summary"]["acknowledged"] == len(results)


def test_reports_text_json_junit() -> None:
    report = lint_paths([FIX / "rules" / "EK-HOST-001.fail.yaml"])
    assert "EK-HOST-001" in render(report, "text") and "1 error(s)" in render(report, "text")
    data = json.loads(render(report, "json"))
    assert data["failed"] and data["findings"][0]["severity"] == "error"
    suites = ET.fromstring(render(report, "junit"))
    assert suites.get("failures") == "1"
    failure = suites.find(".//testcase/failure")
    assert failure is not None and "t3.large" in failure.get("message", "")


def test_cli_exit_codes_and_output_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["lint", str(FIX / "good.yaml")]) == 0
    out = tmp_path / "r.xml"
    fail = str(FIX / "rules" / "EK-HOST-004.fail.yaml")
    assert cli_main(["lint", fail, "--format", "junit", "--output", str(out)]) == 1
    assert ET.parse(out).getroot().tag == "testsuites"
    warn_only = str(FIX / "rules" / "EK-ACM-002.fail.yaml")
    assert cli_main(["lint", warn_only, "--format", "json"]) == 0
    assert cli_main(["lint", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{")
    assert cli_main(["lint", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "expected a cdk.out directory or a template file" in err and "Traceback" not in err


def test_cloud_assembly_with_nested_stack(tmp_path: Path) -> None:
    shutil.copy(FIX / "rules" / "EK-HOST-003.fail.yaml", tmp_path / "Child.nested.template.yaml")
    parent = {
        "Resources": {
            "Nested": {
                "Type": "AWS::CloudFormation::Stack",
                "Metadata": {"aws:asset:path": "Child.nested.template.yaml"},
                "Properties": {"TemplateURL": "https://example.test/child"},
            }
        }
    }
    (tmp_path / "Parent.template.json").write_text(json.dumps(parent, indent=1))
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "version": "55.0.0",
                "artifacts": {
                    "Parent": {
                        "type": "aws:cloudformation:stack",
                        "properties": {"templateFile": "Parent.template.json"},
                    }
                },
            }
        )
    )
    report = lint_paths([tmp_path])
    assert len(report.templates) == 2
    assert [f.rule_id for f in report.errors] == ["EK-HOST-003"]


@pytest.fixture(scope="module")
def sarif_with_findings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = [FIX / "rules" / f"{rid}.fail.yaml" for rid in RULE_IDS]
    report = lint_paths(paths)
    assert report.failed and any(f.severity is Severity.WARNING for f in report.findings)
    out = tmp_path_factory.mktemp("sarif") / "lint.sarif"
    out.write_text(render(report, "sarif"))
    return out


def test_sarif_validates_against_the_official_schema(sarif_with_findings: Path) -> None:
    schema = json.loads((ROOT / "enclavekit" / "data" / "sarif-2.1.0.json").read_text())
    doc = json.loads(sarif_with_findings.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(doc)
    run = doc["runs"][0]
    first = run["results"][0]
    assert first["locations"][0]["physicalLocation"]["region"]["startLine"] > 1
    assert first["ruleId"] == run["tool"]["driver"]["rules"][first["ruleIndex"]]["id"]


def test_sarif_passes_the_multitool_validator(sarif_with_findings: Path, tmp_path: Path) -> None:
    if not os.access(MULTITOOL, os.X_OK):
        pytest.fail(f"SARIF Multitool not installed/executable at {MULTITOOL} (run setup)")
    log = tmp_path / "validation.sarif"
    proc = subprocess.run(
        [
            str(MULTITOOL),
            "validate",
            str(sarif_with_findings),
            "-o",
            str(log),
            "--level",
            "Error;Warning;Note",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(log.read_text())["runs"][0].get("results", [])
    errors = [r for r in results if r.get("level", "warning") == "error"]
    assert not errors, errors
    # the validator really looked: its advisory notes about our log are there
    assert any(r["ruleId"].startswith("SARIF") for r in results)
