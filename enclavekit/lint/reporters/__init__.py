"""Report writers, one module each: text (a table), json, sarif (2.1.0), junit (XML) and
gitlab (Code Quality). Imports: `enclavekit.lint.model`, `enclavekit.lint.baseline`,
`enclavekit.errors` and the stdlib only."""

from __future__ import annotations

from collections.abc import Callable

from enclavekit.errors import InvalidInput
from enclavekit.lint.model import Report

FORMATS = ("text", "json", "sarif", "junit", "gitlab")


def render(report: Report, fmt: str) -> str:
    """The report as text in format `fmt`."""
    writers: dict[str, Callable[[Report], str]]
    from enclavekit.lint.reporters import gitlab, json_report, junit, sarif, text

    writers = {
        "text": text.render,
        "json": json_report.render,
        "sarif": sarif.render,
        "junit": junit.render,
        "gitlab": gitlab.render,
    }
    if fmt not in writers:
        raise InvalidInput(f"lint format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return writers[fmt](report)
