"""Enclave-aware policy linter over synthesized CloudFormation templates.

`lint_paths(paths)` / `lint_templates(templates)` -> `Report`; reporters in
`enclavekit.lint.reporters`; the CDK plugin in `enclavekit.lint.cdk_plugin` and the
acknowledgment helper in `enclavekit.lint.acknowledge` (both import aws_cdk, so not here).
Imports: the core (`enclavekit.policy`, `enclavekit.attested_kms`, `enclavekit.yamlsafe`, ...)
and yaml; never the backend. `cdk_plugin`/`acknowledge` are the two aws_cdk exceptions
(tests/test_import_rules.py).
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
