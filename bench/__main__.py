"""`make bench`: run every bench/bench_*.py module's main() and print its table.

`python -m bench [NAME...]` runs a subset (`up` or `bench_up`). Each bench gets a one-line
header naming the machine (cores, Python, Node.js), since every figure is a ratio against a
baseline of the same run on that machine. A failing bench is reported and the others still run;
the exit status is 1 if any failed, 2 for an unknown name.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from enclavekit.errors import InvalidInput

HERE = Path(__file__).resolve().parent


def bench_names() -> list[str]:
    """Every bench module of this package, in name order."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def select(requested: list[str], available: list[str]) -> list[str]:
    """The benches to run: all, or the requested ones (`up` means `bench_up`)."""
    if not requested:
        return available
    chosen = []
    for name in requested:
        full = name if name.startswith("bench_") else f"bench_{name}"
        if full not in available:
            raise InvalidInput(
                f"bench name: expected one of "
                f"{', '.join(n.removeprefix('bench_') for n in available)}, "
                f"found {name!r}"
            )
        chosen.append(full)
    return list(dict.fromkeys(chosen))


def node_version() -> str:
    """The project's Node.js version (the one the cdk CLI runs on), or why it is unknown."""
    from enclavekit.toolchain import node_modules

    nm = node_modules(HERE.parent)
    node = nm / "node" / "bin" / "node" if nm else None
    if node is None or not node.exists():
        return "node missing (run make setup)"
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"node unusable ({exc})"
    return f"node {out.stdout.strip()}"


def machine() -> str:
    """Cores, Python and Node.js versions, OS and CPU architecture."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} cores, python {platform.python_version()}, {node_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        names = select(args, bench_names())
    except InvalidInput as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    host = machine()
    failed: list[str] = []
    started = time.perf_counter()
    for name in names:
        print(f"\n=== {name} · {host} ===", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # a broken benchmark is reported, the others still run
            failed.append(name)
            traceback.print_exc(file=sys.stderr)
            first_line = (str(exc).splitlines() or [""])[0]
            print(f"{name}: FAILED: {type(exc).__name__}: {first_line}", flush=True)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    total = time.perf_counter() - started
    print(
        f"\n{len(names) - len(failed)}/{len(names)} benches ran in {total:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
