"""Memory, CPU and pids limits for one emulated enclave, from whichever cgroup the machine has.

cgroup v2 when its unified hierarchy offers the memory controller; else v1 `memory` + `cpuset` +
`pids`; each group is created *under our own* cgroup of that controller (read from
/proc/self/cgroup), never elsewhere, and removed again when the enclave is gone. When none is
usable, `EnclaveCgroup.procs_files` is empty and the launcher falls back to rlimits (warned).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PIDS_MAX = 1024


def _own_paths() -> dict[str, str]:
    """controller -> our own cgroup path ('' key for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


@dataclass
class EnclaveCgroup:
    """The cgroup directories of one enclave, and what could not be set (warnings)."""

    version: int  # 2, 1, or 0 (none usable)
    dirs: dict[str, Path] = field(default_factory=dict)  # controller -> directory
    warnings: list[str] = field(default_factory=list)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a task of this group (v1 oom_control, v2 memory.events)."""
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in (mem / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in Path(procs).read_text().split())
        return sorted(found)

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left in the groups and remove them (rmdir waits for the tasks to go)."""
        deadline = time.monotonic() + timeout
        for d in self.dirs.values():
            while d.exists():
                self.kill_all()
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        self.warnings.append(f"cgroup {d} could not be removed")
                        break
                    time.sleep(0.02)


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _create_v2(name: str, memory_mib: int, cpu_ids: list[int]) -> EnclaveCgroup | None:
    own = _own_paths().get("")
    unified = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else None
    if own is None or unified is None:
        return None
    base = unified / own.lstrip("/")
    try:
        controllers = (base / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if "memory" not in controllers:
        return None
    d = base / name
    try:
        d.mkdir()
        _write(d / "memory.max", str(memory_mib * 1024 * 1024))
        with contextlib.suppress(OSError):
            _write(d / "memory.swap.max", "0")
        cg = EnclaveCgroup(2, {"memory": d})
        if "cpuset" in controllers:
            _write(d / "cpuset.cpus", ",".join(map(str, cpu_ids)))
        else:
            cg.warnings.append("cgroup v2 cpuset controller not available: CPU affinity only")
        if "pids" in controllers:
            _write(d / "pids.max", str(PIDS_MAX))
        return cg
    except OSError:
        with contextlib.suppress(OSError):
            d.rmdir()
        return None


def _create_v1(name: str, memory_mib: int, cpu_ids: list[int]) -> EnclaveCgroup:
    own = _own_paths()
    cg = EnclaveCgroup(1)
    limit = str(memory_mib * 1024 * 1024)

    def make(controller: str, settings: list[tuple[str, str]], optional: list[str]) -> None:
        if controller not in own or not (CGROUP_ROOT / controller).is_dir():
            cg.warnings.append(f"cgroup v1 {controller} controller not mounted")
            return
        d = CGROUP_ROOT / controller / own[controller].lstrip("/") / name
        try:
            d.mkdir(exist_ok=True)
            for key, value in settings:
                try:
                    _write(d / key, value)
                except OSError:
                    if key not in optional:
                        raise
        except OSError as exc:
            cg.warnings.append(f"cgroup v1 {controller} not permitted ({exc.strerror})")
            with contextlib.suppress(OSError):
                d.rmdir()
            return
        cg.dirs[controller] = d

    make(
        "memory",
        [
            ("memory.limit_in_bytes", limit),
            ("memory.memsw.limit_in_bytes", limit),
            ("memory.swappiness", "0"),
        ],
        ["memory.memsw.limit_in_bytes", "memory.swappiness"],
    )
    mems = "0"
    with contextlib.suppress(OSError):
        parent = CGROUP_ROOT / "cpuset" / own.get("cpuset", "/").lstrip("/")
        mems = (parent / "cpuset.mems").read_text().strip() or "0"
    make("cpuset", [("cpuset.cpus", ",".join(map(str, cpu_ids))), ("cpuset.mems", mems)], [])
    make("pids", [("pids.max", str(PIDS_MAX))], [])
    return cg


def create(name: str, memory_mib: int, cpu_ids: list[int]) -> EnclaveCgroup:
    """The enclave's cgroups: v2 if it has memory, else v1, else none (rlimits, warned)."""
    v2 = _create_v2(name, memory_mib, cpu_ids)
    if v2 is not None:
        return v2
    v1 = _create_v1(name, memory_mib, cpu_ids)
    if "memory" not in v1.dirs:
        for d in v1.dirs.values():
            with contextlib.suppress(OSError):
                d.rmdir()
        return EnclaveCgroup(0, {}, [*v1.warnings, "no usable memory cgroup (v2 or v1)"])
    return v1


def leftover(name: str) -> EnclaveCgroup:
    """The groups called `name` under our own cgroups, e.g. of a monitor that was killed."""
    own = _own_paths()
    dirs: dict[str, Path] = {}
    if "" in own and (CGROUP_ROOT / "cgroup.controllers").exists():
        d = CGROUP_ROOT / own[""].lstrip("/") / name
        if d.is_dir():
            return EnclaveCgroup(2, {"memory": d})
    for controller in ("memory", "cpuset", "pids"):
        if controller in own:
            d = CGROUP_ROOT / controller / own[controller].lstrip("/") / name
            if d.is_dir():
                dirs[controller] = d
    return EnclaveCgroup(1 if dirs else 0, dirs)
