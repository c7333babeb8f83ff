"""`enclavekit lint PATH... [--format text|json|sarif|junit] [--output FILE]`.

Exit 1 when an unacknowledged error is found, 0 otherwise, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enclavekit.errors import InvalidInput


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    p = sub.add_parser(
        "lint",
        help="enclave-aware policy lint of cdk.out directories or templates",
        description="Lint synthesized CloudFormation (a cdk.out directory, JSON or YAML "
        "templates) with the enclavekit rules (docs/lint-rules.md).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="cdk.out directory or template")
    p.add_argument("--format", choices=("text", "json", "sarif", "junit"), default="text")
    p.add_argument("--output", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(handler=_lint)


def _lint(args: argparse.Namespace) -> int:
    from enclavekit.lint import lint_paths
    from enclavekit.lint.reporters import render
    from enclavekit.lint.reporters.text import summary

    report = lint_paths(args.paths)
    out = render(report, args.format)
    if args.output:
        try:
            Path(args.output).write_text(out, encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"--output {args.output}: expected a writable file, {exc}") from exc
        print(summary(report), file=sys.stderr)
    else:
        sys.stdout.write(out)
    return 1 if report.failed else 0
