"""The one YAML bounding mechanism (enclavekit.yamlsafe), as user data and the vsock-proxy
allowlist use it; the linter's templates go through the same checks (test_lint_hostile)."""

from __future__ import annotations

import pytest

from enclavekit import yamlsafe
from enclavekit.errors import InvalidInput, TemplateError


def _laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_plain_yaml_loads_as_safe_load() -> None:
    text = "allowlist:\n  - {address: kms.us-east-1.amazonaws.com, port: 443}\n"
    assert yamlsafe.load(text, what="cfg") == {
        "allowlist": [{"address": "kms.us-east-1.amazonaws.com", "port": 443}]
    }
    assert yamlsafe.load("", what="cfg") is None


def test_many_small_aliases_are_fine() -> None:
    """Expansion, not the alias count, is what is bounded: 500 references to one scalar."""
    text = "base: &b x\nitems: [" + ", ".join(["*b"] * 500) + "]\n"
    assert len(yamlsafe.load(text, what="cfg")["items"]) == 500


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_laughs(), "an alias bomb"),
        ("[" * 5000 + "]" * 5000, "at most 64 levels deep, found more (line 1)"),
        ("a: &r\n  b: *r\n", "found a recursive YAML alias"),
        ("a: [unclosed\n", "cfg: expected YAML, found"),
    ],
)
def test_hostile_yaml_is_one_line(text: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as info:
        yamlsafe.load(text, what="cfg")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_callers_choose_error_class_and_noun() -> None:
    with pytest.raises(TemplateError, match="t.yaml: expected a template nested at most 3"):
        yamlsafe.check_depth(
            "[[[[x]]]]", "t.yaml", max_depth=3, error=TemplateError, noun="a template"
        )
