"""`enclavekit lint PATH... [--format text|json|sarif|junit|gitlab] [--output FILE]
[--key-policy KEYID=FILE]... [--baseline FILE] [--skip-non-templates]`.

Exit 1 when an unacknowledged error is found (after the baseline), 0 otherwise, 2 on
unreadable input or bad usage. docs/lint-rules.md documents the rules and the modes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enclavekit.cli.common import command
from enclavekit.errors import InvalidInput


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    p = command(sub, "lint", _lint)
    p.add_argument("paths", nargs="+", metavar="PATH", help="cdk.out, directory or template")
    p.add_argument("--format", choices=("text", "json", "sarif", "junit", "gitlab"), default="text")
    p.add_argument("--output", metavar="FILE", help="write the report here instead of stdout")
    p.add_argument(
        "--key-policy",
        action="append",
        default=[],
        metavar="KEYID=FILE",
        help="a key policy applied outside the templates (KEYID: logical id or key id)",
    )
    p.add_argument(
        "--baseline",
        metavar="FILE",
        help="a previous report (json, sarif or gitlab): report only findings not in it",
    )
    p.add_argument(
        "--skip-non-templates",
        action="store_true",
        help="pass over JSON/YAML files that are not templates (for pre-commit)",
    )


def _lint(args: argparse.Namespace) -> int:
    """enclave-aware policy lint of cdk.out directories or templates

    Lint CloudFormation (a cdk.out directory, a directory of templates, JSON or YAML templates,
    nested stacks) with the enclavekit rules (docs/lint-rules.md).
    """
    from enclavekit.lint import lint_paths
    from enclavekit.lint.baseline import apply_baseline, load_baseline
    from enclavekit.lint.reporters import render
    from enclavekit.lint.reporters.text import summary

    known = load_baseline(args.baseline) if args.baseline else None
    report = lint_paths(
        args.paths, key_policies=args.key_policy, skip_non_templates=args.skip_non_templates
    )
    if known is not None:
        report = apply_baseline(report, known)
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
