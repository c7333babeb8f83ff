"""The linter on stacks it did not write (issue 13): plain CloudFormation hosts found from what
AWS sees, the misses a new user hit, order-independent results, directory input, key policies
applied after deploy, the CI formats, the baseline mode, the pre-commit hook and the GitHub
action's lint step."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from enclavekit.cli import main as cli_main
from enclavekit.lint import lint_paths
from enclavekit.lint.docs import rules_table
from enclavekit.lint.reporters import render

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "lint"
STACKS = FIX / "stacks"
PATCHED = FIX / "key-policies" / "patched-key-policy.json"
BIN = Path(sys.executable).parent


def _ids(report) -> list[str]:  # noqa: ANN001 - Report
    return sorted({f.rule_id for f in report.findings})


@pytest.mark.parametrize(
    ("fixture", "errors"),
    [
        # miss 1: a key that only a host's role marks as an enclave key
        ("key-unmarked.fail.yaml", ["EK-KMS-001"]),
        ("key-unmarked.pass.yaml", []),
        # miss 2: an identity policy reaching every key of the account
        ("identity-wildcard.fail.json", ["EK-KMS-007"]),
        ("identity-wildcard.pass.json", []),
        # false positives on enclave-capable types (key-unmarked.pass uses m7a.xlarge)
        ("type-c6in.pass.yaml", []),
        ("type-unsupported.fail.yaml", ["EK-HOST-001"]),
    ],
)
def test_plain_cloudformation_misses_and_false_positives(fixture: str, errors: list[str]) -> None:
    report = lint_paths([STACKS / fixture])
    assert sorted({f.rule_id for f in report.errors}) == errors, [
        f.message for f in report.findings
    ]
    if not errors:
        assert report.findings == (), [f.message for f in report.findings]


def test_user_data_misses_have_rules() -> None:
    """Misses 3 and 4 of the issue (debug mode, association at boot) through user data."""
    debug = lint_paths([FIX / "rules" / "EK-UD-001.fail.yaml"])
    assert "--debug-mode" in debug.errors[0].message
    assoc = lint_paths([FIX / "rules" / "EK-UD-007.fail.yaml"])
    assert [f.rule_id for f in assoc.findings] == ["EK-UD-007"]


def test_unknown_family_is_a_warning_not_an_error() -> None:
    report = lint_paths([STACKS / "type-unknown-family.warn.yaml"])
    assert [(f.rule_id, f.severity.value) for f in report.findings] == [("EK-HOST-001", "warning")]
    assert "zz9" in report.findings[0].message and not report.failed


def _mixed_set() -> list[Path]:
    rules = FIX / "rules"
    picks = [
        rules / f"{rid}.fail.yaml"
        for rid in (
            "EK-KMS-001",
            "EK-KMS-002",
            "EK-KMS-006",
            "EK-PCR-006",
            "EK-UD-002",
            "EK-ACM-001",
            "EK-HOST-001",
        )
    ]
    picks += [FIX / "good.yaml", FIX / "aws-doc-examples.json"]
    picks += sorted(STACKS.glob("*.yaml")) + sorted(STACKS.glob("*.json"))
    return picks


def test_results_do_not_depend_on_input_order() -> None:
    """The same 16 templates (most share logical ids: HostRole, AppKey, Host...) in many orders
    give the same report."""
    paths = _mixed_set()
    assert len(paths) >= 10
    expected = render(lint_paths(paths), "json")
    assert json.loads(expected)["summary"]["errors"] >= 8
    rng = random.Random(13)
    orders = [list(reversed(paths))]
    for _ in range(6):
        order = paths[:]
        rng.shuffle(order)
        orders.append(order)
    for order in orders:
        assert render(lint_paths(order), "json") == expected
    # the pair from the issue: good next to broken, both ways round
    a, b = FIX / "good.yaml", FIX / "rules" / "EK-KMS-001.fail.yaml"
    assert render(lint_paths([a, b]), "json") == render(lint_paths([b, a]), "json")
    assert "EK-KMS-001" in _ids(lint_paths([b, a]))


def test_directory_of_templates_with_nested_stack(tmp_path: Path) -> None:
    for f in STACKS.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "child").mkdir()
    shutil.copy(FIX / "rules" / "EK-HOST-003.fail.yaml", tmp_path / "child" / "host.yaml")
    (tmp_path / "parent.yaml").write_text(
        "Resources:\n  Child:\n    Type: AWS::CloudFormation::Stack\n"
        "    Properties:\n      TemplateURL: child/host.yaml\n"
    )
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "ci.yaml").write_text("on: push\njobs: {}\n")
    (tmp_path / "params.json").write_text('[{"ParameterKey": "A", "ParameterValue": "b"}]')
    report = lint_paths([tmp_path])
    names = {Path(t).name for t in report.templates}
    assert "params.json" not in names and "ci.yaml" not in names
    assert {"host.yaml", "parent.yaml", "key-unmarked.fail.yaml"} <= names
    assert len(report.templates) == len(list(STACKS.iterdir())) + 2
    assert {"EK-HOST-003", "EK-KMS-001", "EK-KMS-007"} <= set(_ids(report))
    assert cli_main(["lint", str(tmp_path)]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["lint", str(empty)]) == 2


def test_key_policy_applied_outside_the_template(tmp_path: Path) -> None:
    tpl = STACKS / "key-default-policy.yaml"
    assert lint_paths([tpl]).findings == ()
    patched = lint_paths([tpl], key_policies=[f"DataKey={PATCHED}"])
    hits = [f for f in patched.errors if f.rule_id == "EK-KMS-001"]
    assert hits and "patched-parent" in hits[0].message and "DataKey" in hits[0].message
    # a key no template creates: judged from its policy alone, reported at the policy file
    external = lint_paths([tpl], key_policies=[f"1234abcd-12ab-34cd-56ef-1234567890ab={PATCHED}"])
    ext = [f for f in external.errors if f.rule_id == "EK-KMS-001"]
    assert ext and ext[0].location.template == str(PATCHED)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    for spec in ("nonsense", f"DataKey={bad}", f"DataKey={tmp_path / 'none.json'}"):
        assert cli_main(["lint", str(tpl), "--key-policy", spec]) == 2


def test_gitlab_code_quality_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """GitLab's documented fields: description, check_name, fingerprint, severity,
    location.path, location.lines.begin."""
    monkeypatch.chdir(ROOT)
    report = lint_paths(_mixed_set())
    issues = json.loads(render(report, "gitlab"))
    schema = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["description", "check_name", "fingerprint", "severity", "location"],
            "properties": {
                "description": {"type": "string", "minLength": 1},
                "check_name": {"type": "string", "pattern": "^EK-"},
                "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "severity": {"enum": ["info", "minor", "major", "critical", "blocker"]},
                "location": {
                    "type": "object",
                    "required": ["path", "lines"],
                    "properties": {
                        "path": {"type": "string", "minLength": 1},
                        "lines": {
                            "type": "object",
                            "required": ["begin"],
                            "properties": {"begin": {"type": "integer", "minimum": 1}},
                        },
                    },
                },
            },
        },
    }
    jsonschema.validate(issues, schema)
    assert len(issues) == len([f for f in report.findings if not f.acknowledged])
    assert len({i["fingerprint"] for i in issues}) == len(issues)
    assert not any(i["location"]["path"].startswith("/") for i in issues)  # relative to cwd


def test_baseline_reports_only_new_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(STACKS / "key-unmarked.fail.yaml", tmp_path / "stack.yaml")
    for fmt in ("json", "sarif", "gitlab"):
        base = tmp_path / f"base.{fmt}"
        assert cli_main(["lint", "stack.yaml", "--format", fmt, "--output", str(base)]) == 1
        assert cli_main(["lint", "stack.yaml", "--baseline", str(base)]) == 0
    # a new problem appears: only it is reported, and it fails the run
    text = (tmp_path / "stack.yaml").read_text().replace("m7a.xlarge", "t3.large")
    (tmp_path / "stack.yaml").write_text(text)
    out = tmp_path / "new.json"
    assert (
        cli_main(
            [
                "lint",
                "stack.yaml",
                "--baseline",
                "base.json",
                "--format",
                "json",
                "--output",
                str(out),
            ]
        )
        == 1
    )
    data = json.loads(out.read_text())
    assert [f["rule_id"] for f in data["findings"]] == ["EK-HOST-001"]
    assert data["summary"]["baselined"] == 2
    (tmp_path / "junk.json").write_text('"x"')
    assert cli_main(["lint", "stack.yaml", "--baseline", "junk.json"]) == 2


def test_rule_table_in_the_docs_is_generated() -> None:
    doc = (ROOT / "docs" / "lint-rules.md").read_text()
    assert rules_table() in doc, "run: python -m enclavekit.lint.docs (docs/lint-rules.md)"
    for words in ("--baseline", "Adopting on an existing stack", "--key-policy", "gitlab"):
        assert words in doc


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PRE_COMMIT"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.test", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.slow
def test_pre_commit_hook_definition(tmp_path: Path) -> None:
    """pre-commit validates the manifest, then runs the hook through `pre-commit try-repo`.
    try-repo would pip-install this repository for `language: python` (all of aws-cdk-lib from
    PyPI), so the run uses a copy of the definition with `language: system` (the enclavekit of
    this venv); entry, file selection and exit codes are the published ones."""
    env = _env()
    env["PRE_COMMIT_HOME"] = str(tmp_path / "cache")
    hooks = ROOT / ".pre-commit-hooks.yaml"
    check = subprocess.run(
        [str(BIN / "pre-commit"), "validate-manifest", str(hooks)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    (hook,) = yaml.safe_load(hooks.read_text())
    assert hook["language"] == "python" and hook["entry"].startswith("enclavekit lint")
    hook_repo = tmp_path / "hook-repo"
    hook_repo.mkdir()
    (hook_repo / ".pre-commit-hooks.yaml").write_text(
        yaml.safe_dump([{**hook, "language": "system"}])
    )
    _git(hook_repo, "init", "-q")
    _git(hook_repo, "add", ".")
    _git(hook_repo, "commit", "-qm", "hook")
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q")
    shutil.copy(STACKS / "key-unmarked.pass.yaml", work / "stack.yaml")
    (work / "ci.yaml").write_text("on: push\njobs: {}\n")  # YAML, not a template: passed over
    (work / "package.json").write_text('{"name": "x"}')
    _git(work, "add", ".")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "pre-commit"), "try-repo", str(hook_repo), "enclavekit-lint", "--all-files"],
            cwd=work,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shutil.copy(STACKS / "key-unmarked.fail.yaml", work / "broken.yaml")
    _git(work, "add", ".")
    bad = run()
    assert bad.returncode == 1 and "EK-KMS-001" in bad.stdout, bad.stdout + bad.stderr


@pytest.mark.slow
def test_action_lint_step_runs_locally(tmp_path: Path) -> None:
    """The composite action's lint step, run with bash as the runner would: SARIF written and
    valid, exit code handed to the later steps, the step itself never failing before upload."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    steps = {s.get("id") or s["name"]: s for s in action["runs"]["steps"]}
    lint = steps["lint"]
    assert lint["shell"] == "bash" and "${{" not in lint["run"]
    upload = next(s for s in action["runs"]["steps"] if "upload-sarif" in s.get("uses", ""))
    assert upload["with"]["sarif_file"] == "${{ inputs.sarif-file }}"
    schema = json.loads((ROOT / "enclavekit" / "data" / "sarif-2.1.0.json").read_text())
    shutil.copy(STACKS / "key-unmarked.fail.yaml", tmp_path / "stack.yaml")
    cases = [
        ({"EK_PATHS": "stack.yaml"}, "1"),
        (
            {
                "EK_PATHS": str(STACKS / "key-default-policy.yaml"),
                "EK_KEY_POLICIES": f"DataKey={PATCHED}",
            },
            "1",
        ),
        ({"EK_PATHS": str(STACKS / "key-unmarked.pass.yaml")}, "0"),
    ]
    for extra, code in cases:
        out = tmp_path / "github_output"
        out.write_text("")
        env = {
            **_env(),
            "EK_BASELINE": "",
            "EK_KEY_POLICIES": "",
            "EK_SARIF": "r.sarif",
            "GITHUB_OUTPUT": str(out),
            **extra,
        }
        proc = subprocess.run(
            ["bash", "-e", "-c", lint["run"]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"exit-code={code}" in out.read_text()
        sarif = json.loads((tmp_path / "r.sarif").read_text())
        jsonschema.validators.validator_for(schema)(schema).validate(sarif)
        assert bool(sarif["runs"][0]["results"]) == (code == "1")
    env = {
        **_env(),
        "EK_PATHS": "missing.yaml",
        "EK_BASELINE": "",
        "EK_KEY_POLICIES": "",
        "EK_SARIF": "r.sarif",
        "GITHUB_OUTPUT": str(tmp_path / "o"),
    }
    proc = subprocess.run(
        ["bash", "-e", "-c", lint["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "::error::" in proc.stdout
