"""Image format costs against their floor: measuring an EIF is hashing its bytes.

Baselines: hashlib.sha384 over the same bytes (read/measure), bytes concatenation (write),
and a bare loop building the same member headers (cpio).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

from enclavekit.cpio import CpioEntry, write_newc
from enclavekit.eif import read_eif, write_eif

META = {"ImageName": "b", "ImageVersion": "1", "BuildMetadata": {}, "DockerInfo": None}


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    size = 32 << 20
    kernel, boot, app = os.urandom(8 << 20), os.urandom(1 << 20), os.urandom(size)
    eif = write_eif(kernel=kernel, cmdline=b"console=ttyS0", ramdisks=[boot, app], metadata=META)

    def floor_measure() -> None:
        for parts in ((kernel, b"console=ttyS0", boot, app), (kernel, boot), (app,)):
            h = hashlib.sha384()
            for p in parts:
                h.update(p)
            hashlib.sha384(bytes(48) + h.digest())

    rows = [
        ("read_eif (measure 41 MiB)", _best(lambda: read_eif(eif)), _best(floor_measure)),
        (
            "write_eif (41 MiB)",
            _best(
                lambda: write_eif(
                    kernel=kernel, cmdline=b"console=ttyS0", ramdisks=[boot, app], metadata=META
                )
            ),
            _best(lambda: b"".join((kernel, boot, app))),
        ),
    ]
    entries = [CpioEntry(f"rootfs/app/m{i // 50}/f{i}.py", b"x" * 200) for i in range(2000)]
    rows.append(
        (
            "write_newc (2000 files)",
            _best(lambda: write_newc(entries)),
            _best(lambda: b"".join(b"%08X" % i * 13 + e.data for i, e in enumerate(entries))),
        )
    )
    print(f"{'operation':<28}{'ours (ms)':>12}{'baseline (ms)':>16}{'ratio':>8}")
    for name, ours, base in rows:
        print(f"{name:<28}{ours * 1e3:>12.1f}{base * 1e3:>16.1f}{ours / base:>8.2f}")


if __name__ == "__main__":
    main()
