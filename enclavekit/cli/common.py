"""Plumbing the command groups share: adding a command with its handler, the `--state-dir`
option, JSON on stdout. (`cli/agent.py` keeps its own: the parent agent's bundle carries only
`cli/__init__.py` and `cli/agent.py`.)"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclavekit.contract import DEFAULT_STATE_DIR

Handler = Callable[[argparse.Namespace], int]


def command(sub: Any, name: str, handler: Handler) -> argparse.ArgumentParser:
    """Add the command `name`, run by `handler` (which returns the exit status).

    The handler's docstring is the command's text, so what a command does is said once, where
    it is done: its first paragraph the one-line help of `enclavekit --help`, the rest (if any)
    the description of `enclavekit NAME --help` (argparse re-wraps both).
    """
    head, _, rest = inspect.cleandoc(handler.__doc__ or "").partition("\n\n")
    parser = sub.add_parser(name, help=" ".join(head.split()) or None, description=rest or None)
    parser.set_defaults(handler=handler)
    return parser


def add_state_dir(
    parser: argparse.ArgumentParser,
    *,
    default: Path | None = DEFAULT_STATE_DIR,
    help: str | None = None,  # noqa: A002 - argparse's own keyword
) -> None:
    """`--state-dir`: the local endpoint's (or emulator's) state directory."""
    parser.add_argument("--state-dir", type=Path, default=default, help=help)


def print_json(obj: Any, *, indent: int = 2) -> None:
    """`obj` as indented JSON on stdout, flushed (a caller may stream more after it)."""
    json.dump(obj, sys.stdout, indent=indent)
    sys.stdout.write("\n")
    sys.stdout.flush()
