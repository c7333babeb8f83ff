"""Plumbing the command groups share: adding a command with its handler, the `--state-dir`
option, JSON on stdout. (`cli/agent.py` keeps its own: the parent agent's bundle carries only
`cli/__init__.py` and `cli/agent.py`.)"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclavekit.contract import DEFAULT_STATE_DIR

Handler = Callable[[argparse.Namespace], int]


def command(sub: Any, name: str, handler: Handler, **kwargs: Any) -> argparse.ArgumentParser:
    """Add the command `name` (argparse's `add_parser` keywords) run by `handler`, which
    returns the exit status."""
    parser = sub.add_parser(name, **kwargs)
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
