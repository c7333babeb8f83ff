"""The read-only Python runtime layer the emulator mounts into an enclave (not measured).

On AWS the image carries its whole root filesystem; an emulator image carries only the app and
the core modules it vendors, and the emulator provides the interpreter plus exactly the
third-party distributions the app's manifest declares (with their own requirements), taken from
the environment the emulator runs in. This module works out which host paths those are, and the
statement of the layer that describe-enclaves shows.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from enclavekit.errors import EmulatorError

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64")


@dataclass(frozen=True)
class RuntimeLayer:
    """The interpreter prefix, the declared distributions and their top-level host paths."""

    python: str
    prefix: str
    interpreter: str
    site_packages: str
    distributions: dict[str, str]  # name -> version
    paths: tuple[str, ...]
    system_libs: tuple[str, ...]

    def statement(self) -> dict[str, object]:
        return {
            "Provider": "enclavekit emulator (read-only mount, not measured)",
            "Python": self.python,
            "Prefix": self.prefix,
            "Packages": dict(sorted(self.distributions.items())),
        }


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: list[str]) -> dict[str, md.Distribution]:
    """The declared distributions plus their unconditional requirements, transitively."""
    found: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = _normal(name)
        if key in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise EmulatorError(
                f"runtime package {name!r}: expected it installed in the emulator's "
                f"environment ({sys.prefix}), found nothing"
            ) from None
        found[key] = dist
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            if "extra" in marker:
                continue
            m = _REQ_NAME.match(spec)
            if m:
                todo.append(m.group(1))
    return found


def _top_level_paths(dist: md.Distribution) -> set[str]:
    base = Path(str(dist.locate_file(""))).resolve()
    tops: set[str] = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        path = base / parts[0]
        if path.exists():
            tops.add(str(path))
    return tops


def resolve(packages: list[str] | tuple[str, ...], python: str | None = None) -> RuntimeLayer:
    """The runtime layer for an app that declares `packages` (and wants Python `python`)."""
    have = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python and python != have:
        raise EmulatorError(
            f"runtime python: the image declares {python}, the emulator provides {have}"
        )
    dists = _closure(list(packages))
    paths: set[str] = set()
    for dist in dists.values():
        paths |= _top_level_paths(dist)
    prefix = os.path.realpath(sys.base_prefix)
    interpreter = os.path.realpath(sys.executable)
    if not interpreter.startswith(prefix + os.sep):
        interpreter = os.path.join(prefix, "bin", f"python{have}")
    site = sysconfig.get_path("purelib", vars={"base": prefix, "platbase": prefix})
    libs = tuple(p for p in SYSTEM_LIBS if os.path.isdir(p) and not os.path.islink(p))
    return RuntimeLayer(
        python=sys.version.split()[0],
        prefix=prefix,
        interpreter=interpreter,
        site_packages=site,
        distributions={d.metadata["Name"]: d.version for d in dists.values()},
        paths=tuple(sorted(paths)),
        system_libs=libs,
    )
