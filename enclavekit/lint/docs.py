"""The rule table of docs/lint-rules.md, generated from the rules themselves.

`python -m enclavekit.lint.docs` prints it; a test keeps the document equal to it.
"""

from __future__ import annotations

from enclavekit.lint.engine import all_rules


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rules_table() -> str:
    """Markdown tables in id order: id, severity, title, why, fix of every rule; then its file."""
    rows = ["| Id | Severity | Title | Why | Fix |", "|---|---|---|---|---|"]
    for r in all_rules():
        cells = (r.id, r.severity.value, r.title, r.explanation, r.fix)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    rows += ["", "Each rule's code, named by what it checks:", "", "| Id | File |", "|---|---|"]
    from enclavekit.lint.rules import MODULE_OF

    for r in all_rules():
        rows.append(f"| {r.id} | `enclavekit/lint/rules/{MODULE_OF[r.id]}.py` |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(rules_table(), end="")
