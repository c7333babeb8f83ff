"""Enclave-aware policy linter over synthesized CloudFormation templates.

A room above the core. `lint_paths(paths)` / `lint_templates(templates)` -> `Report`;
reporters in `enclavekit.lint.reporters`; rules in `enclavekit.lint.rules`. Its CDK face (the
synth-time plugin and `acknowledge`) needs aws_cdk and lives with the constructs:
`enclave_constructs.lint`. Imports: the core (`enclavekit.policy`, `enclavekit.attested_kms`,
`enclavekit.contract`, `enclavekit.yamlsafe`, ...) and yaml; never the backend, the
constructs, aws_cdk or another room (tests/test_import_rules.py).
"""

from __future__ import annotations

from enclavekit.lint.engine import all_rules, lint_paths, lint_templates
from enclavekit.lint.model import Finding, Location, Report, Rule, Severity
from enclavekit.lint.templates import Template, load_paths, parse_template

__all__ = [
    "Finding",
    "Location",
    "Report",
    "Rule",
    "Severity",
    "Template",
    "all_rules",
    "lint_paths",
    "lint_templates",
    "load_paths",
    "parse_template",
]
