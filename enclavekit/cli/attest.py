"""`enclavekit` commands of the attest group (not written yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
