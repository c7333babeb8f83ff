"""The rules, one module each; `RULES` is the registry in id order."""

from __future__ import annotations

import importlib

from enclavekit.lint.model import Rule

_MODULES = (
    "ek_acm_001",
    "ek_acm_002",
    "acm_key_in_own_image",  # EK-ACM-003
    "ek_ack_001",
    "ek_host_001",
    "ek_host_002",
    "ek_host_003",
    "ek_host_004",
    "ek_kms_001",
    "ek_kms_002",
    "ek_kms_003",
    "ek_kms_004",
    "ek_kms_005",
    "ek_kms_006",
    "ek_kms_007",
    "ek_pcr_001",
    "ek_pcr_002",
    "ek_pcr_003",
    "ek_pcr_004",
    "ek_pcr_005",
    "ek_pcr_006",
    "ek_pol_001",
    "ek_ud_001",
    "ek_ud_002",
    "ek_ud_003",
    "ek_ud_004",
    "ek_ud_005",
    "ek_ud_006",
    "ek_ud_007",
)

RULES: tuple[Rule, ...] = tuple(
    importlib.import_module(f"{__name__}.{name}").RULE for name in _MODULES
)
BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
