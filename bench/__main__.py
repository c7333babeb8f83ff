"""`make bench`: run every bench/bench_*.py module's main() and print its table."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    only = set(sys.argv[1:])
    failed = 0
    for name in names:
        if only and name not in only:
            continue
        print(f"\n=== {name} ===", flush=True)
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # a broken benchmark is reported, the others still run
            failed += 1
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
