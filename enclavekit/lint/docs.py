"""The rule table of docs/lint-rules.md, generated from the rules themselves.

`python -m enclavekit.lint.docs` prints it; a test keeps the document equal to it.
"""

from __future__ import annotations

from enclavekit.lint.engine import all_rules


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rules_table() -> str:
    """Markdown table: id, severity, title, why, fix of every rule in id order."""
    rows = ["| Id | Severity | Title | Why | Fix |", "|---|---|---|---|---|"]
    for r in all_rules():
        cells = (r.id, r.severity.value, r.title, r.explanation, r.fix)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(rules_table(), end="")
