"""The lint rules, one module each, named by what it checks (`key_allows_unattested_use.py`
holds EK-KMS-001); `RULES` is the registry, in id order.

A rule is a module of this package that defines `RULE` (an `enclavekit.lint.model.Rule`);
modules whose name starts with `_` are shared helpers. Adding a rule is adding its file: the
registry finds it. Rules import the core (`enclavekit.policy`, `enclavekit.attested_kms`, ...)
and `enclavekit.lint`, never the backend or the constructs.
"""

from __future__ import annotations

import importlib
import pkgutil

from enclavekit.lint.model import Rule


def _discover() -> dict[str, tuple[Rule, str]]:
    """id -> (RULE, module name) of every public module of this package; ids must be unique."""
    found: dict[str, tuple[Rule, str]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        rule = getattr(module, "RULE", None)
        if not isinstance(rule, Rule):
            raise ImportError(f"lint rule module {info.name}: expected a RULE, found {rule!r}")
        if rule.id in found:
            raise ImportError(
                f"lint rule {rule.id} is defined twice: {found[rule.id][1]} and {info.name}"
            )
        found[rule.id] = (rule, info.name)
    return dict(sorted(found.items()))


_FOUND = _discover()
RULES: tuple[Rule, ...] = tuple(rule for rule, _ in _FOUND.values())
BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
MODULE_OF: dict[str, str] = {rule_id: module for rule_id, (_, module) in _FOUND.items()}
