"""EnclaveManager: run-enclave / describe-enclaves / terminate-enclave / console, as nitro-cli.

The manager validates like nitro-cli, allocates the CID and CPUs, and starts one detached
monitor process per enclave (`local_backend.emulator.monitor`), which boots and supervises it;
the manager returns once the enclave runs. All state is under one state directory, so any
process (the CLI, the local backend, tests) can describe or terminate what another started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enclavekit import eif
from enclavekit.contract import DEFAULT_ENCLAVE_CID
from enclavekit.errors import EmulatorError, InvalidInput
from local_backend.emulator import state

MIN_MEMORY_MIB = 64
MAX_ENCLAVES = 4  # per parent instance, as on AWS
AUTO_CID_START = DEFAULT_ENCLAVE_CID
MAX_CID = 0xFFFFFFFF - 1
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
KEEP_CONSOLE_ENV = "ENCLAVEKIT_EMULATOR_KEEP_CONSOLE"
RUN_KEYS = (
    "EnclaveName",
    "EnclaveID",
    "ProcessID",
    "EnclaveCID",
    "NumberOfCPUs",
    "CPUIDs",
    "MemoryMiB",
)
DESCRIBE_KEYS = (*RUN_KEYS, "State", "Flags", "Measurements")


def _smt_active() -> bool:
    try:
        return Path("/sys/devices/system/cpu/smt/active").read_text().strip() == "1"
    except OSError:
        return False


def _machine_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _check_int(name: str, value: object, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name}: expected {expected}, found {value!r}")
    return value


def _machine_available_mib() -> int:
    """MemAvailable of /proc/meminfo in MiB (outside a host, the machine bounds enclaves)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class EnclaveManager:
    """Emulated nitro-cli over one state directory."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self.layout = state.Layout(state.state_dir(state_dir))
        self._monitors: dict[int, subprocess.Popen[bytes]] = {}  # ours, reaped on terminate

    # ------------------------------------------------------------------ run
    def memory_pool_mib(self) -> tuple[int, str]:
        """(MiB enclaves may use in all, where that bound comes from)."""
        pool = self.layout.allocator_pool
        if pool.is_file():
            try:
                mib = int(state.read_json(pool)["memory_mib"])
            except (KeyError, TypeError, ValueError) as exc:
                raise EmulatorError(
                    f'{pool}: expected {{"memory_mib": <int>}} from the allocator, got {exc}'
                ) from None
            return mib, "the allocator's pool (/etc/nitro_enclaves/allocator.yaml)"
        return _machine_available_mib(), "this machine's available memory"

    def _check_memory_available(self, memory_mib: int) -> None:
        """nitro-cli's E27: enclaves get their memory from the allocator's hugepages only."""
        pool, source = self.memory_pool_mib()
        used = sum(
            int(r.get("MemoryMiB", 0))
            for r in self.describe()
            if r["State"] in (state.RUNNING, state.STARTING)
        )
        available = max(pool - used, 0)
        if memory_mib > available:
            raise EmulatorError(
                f"[ E27 ] Insufficient memory available. User provided `memory` is {memory_mib} "
                f"MB, which is more than the available hugepage memory ({available} MB of "
                f"{pool} MB in {source}, {used} MB used by running enclaves). You can increase "
                "the available memory by editing the `memory_mib` value from "
                "'/etc/nitro_enclaves/allocator.yaml' and then enable the "
                "nitro-enclaves-allocator.service."
            )

    def run_enclave(
        self,
        eif_path: str | Path,
        cpu_count: int,
        memory_mib: int,
        *,
        cid: int | None = None,
        debug_mode: bool = False,
        parent_role_arn: str | None = None,
        parent_instance_id: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Boot an enclave from `eif_path`; returns nitro-cli's run-enclave JSON once it runs."""
        cpu_count = _check_int("--cpu-count", cpu_count, "a positive integer")
        memory_mib = _check_int("--memory", memory_mib, "an integer number of MiB")
        cpus = _machine_cpus()
        if cpu_count < 1:
            raise InvalidInput(f"--cpu-count: expected a positive integer, found {cpu_count}")
        if _smt_active() and cpu_count % 2:
            raise InvalidInput(
                "--cpu-count: expected an even number (SMT is on: full cores only), "
                f"found {cpu_count}"
            )
        if cpu_count > len(cpus):
            raise InvalidInput(
                f"--cpu-count: expected at most the {len(cpus)} CPUs of this machine, "
                f"found {cpu_count}"
            )
        if memory_mib < MIN_MEMORY_MIB:
            raise InvalidInput(
                f"--memory: expected at least {MIN_MEMORY_MIB} MiB, found {memory_mib} MiB"
            )
        path = Path(eif_path)
        if not path.is_file():
            raise InvalidInput(f"--eif-path: expected an EIF file, found no file at {path}")
        self._check_memory_available(memory_mib)
        image = eif.read_eif(path)
        if not image.crc_ok:
            raise InvalidInput(f"--eif-path {path}: expected a valid CRC32, the image is corrupt")
        self.layout.ensure()
        running = [r for r in self.describe() if r["State"] in (state.RUNNING, state.STARTING)]
        if len(running) >= MAX_ENCLAVES:
            raise EmulatorError(
                f"run-enclave: at most {MAX_ENCLAVES} enclaves per parent, {len(running)} running"
            )
        used = {r["EnclaveCID"] for r in running}
        if cid is None or cid == 0:
            cid = AUTO_CID_START
            while cid in used:
                cid += 1
        else:
            cid = _check_int("--enclave-cid", cid, "an integer CID")
            if cid <= state.PARENT_CID or cid > MAX_CID:
                raise InvalidInput(
                    f"--enclave-cid: expected 4..{MAX_CID} (0-3 are reserved, 3 is the parent), "
                    f"found {cid}"
                )
            if cid in used:
                raise InvalidInput(f"--enclave-cid: CID {cid} is already used by a running enclave")
        meta_name = (image.metadata or {}).get("ImageName")
        enclave_name = name or (meta_name if isinstance(meta_name, str) else path.stem)
        if any(r["EnclaveName"] == enclave_name for r in running):
            raise InvalidInput(f"--enclave-name: {enclave_name!r} is already used by an enclave")
        instance_id = parent_instance_id or self.layout.instance_id()
        slot = state.new_slot()
        while self.layout.slot_dir(slot).exists():
            slot = state.new_slot()
        enclave_id = f"{instance_id}-enc{slot}"
        cpu_ids = cpus[-cpu_count:]  # CPU 0 stays with the parent while there is a choice
        measurements = image.measurements.to_nitro_cli()
        request = {
            "EnclaveName": enclave_name,
            "EnclaveID": enclave_id,
            "EnclaveCID": cid,
            "NumberOfCPUs": cpu_count,
            "CPUIDs": cpu_ids,
            "MemoryMiB": memory_mib,
            "Flags": "DEBUG_MODE" if debug_mode else "NONE",
            "Measurements": measurements,
            "eif_path": str(path.absolute()),
            "debug_mode": bool(debug_mode),
            "parent_role_arn": parent_role_arn,
            "instance_id": instance_id,
            "state_dir": str(self.layout.root),
            "slot": slot,
            "keep_console": os.environ.get(KEEP_CONSOLE_ENV) == "1",
        }
        d = self.layout.slot_dir(slot)
        d.mkdir(mode=0o700)
        state.private_dir(d)
        state.write_json(d / "request.json", request)
        with open(d / "monitor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "local_backend.emulator.monitor", str(d)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd="/",
                env=_monitor_env(),
            )
        # The request itself goes down the pipe: request.json is a record, and whoever can
        # write the state dir (root on the parent) could rewrite it before the monitor reads.
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError), proc.stdin:
                proc.stdin.write(json.dumps(request).encode())
        self._monitors[proc.pid] = proc
        record = self._wait_boot(d, proc)
        for warning in record.get("Warnings", []):
            print(f"enclavekit: warning: enclave {enclave_id}: {warning}", file=sys.stderr)
        return {k: record[k] for k in RUN_KEYS}

    def _wait_boot(self, d: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            record = self._read_record(d)
            st = record.get("State")
            if st == state.RUNNING:
                return record
            if st in (state.FAILED, state.TERMINATED) and proc.poll() is not None:
                reason = record.get("ExitReason", "unknown")
                self._remove(d)
                raise EmulatorError(f"run-enclave: the enclave did not start: {reason}")
            if proc.poll() is not None and st not in (state.FAILED, state.TERMINATED):
                tail = _tail(d / "monitor.log")
                self._remove(d)
                raise EmulatorError(f"run-enclave: the enclave monitor exited early: {tail}")
            if time.monotonic() > deadline:
                self._stop(d, record)
                self._remove(d)
                raise EmulatorError(f"run-enclave: the enclave did not start in {BOOT_TIMEOUT_S} s")
            time.sleep(0.01)

    # ------------------------------------------------------------------ describe
    def _read_record(self, d: Path) -> dict[str, Any]:
        try:
            return state.read_json(d / "state.json")
        except (OSError, ValueError):
            req = state.read_json(d / "request.json")
            return {
                **{k: req.get(k) for k in DESCRIBE_KEYS if k in req},
                "ProcessID": None,
                "State": state.STARTING,
            }

    def _live_record(self, slot: str) -> dict[str, Any]:
        d = self.layout.slot_dir(slot)
        record = self._read_record(d)
        pid = record.get("ProcessID")
        if (
            record.get("State") in (state.RUNNING, state.STARTING)
            and pid
            and not state.pid_alive(pid, str(d))
        ):
            record.update(State=state.TERMINATED, ExitReason="the enclave's monitor process died")
        return record

    def describe(self) -> list[dict[str, Any]]:
        """describe-enclaves: nitro-cli's keys, plus Runtime and ExitReason where known."""
        out = []
        for slot in self.layout.slots():
            record = self._live_record(slot)
            item = {k: record.get(k) for k in DESCRIBE_KEYS}
            for extra in ("ExitReason", "Runtime"):
                if record.get(extra) is not None:
                    item[extra] = record[extra]
            out.append(item)
        return out

    def record(self, enclave_id: str) -> dict[str, Any]:
        """The full record of one enclave (describe keys plus internals such as EnclavePID)."""
        return self._live_record(self.layout.slot_of(enclave_id))

    # ------------------------------------------------------------------ terminate
    def _stop(self, d: Path, record: dict[str, Any]) -> None:
        pid = record.get("ProcessID")
        if not pid:
            return
        if state.pid_alive(pid, str(d)):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while state.pid_alive(pid, str(d)):
                if time.monotonic() > deadline:
                    os.killpg(pid, signal.SIGKILL)  # the monitor's session: it and its helper
                    break
                time.sleep(0.01)
        proc = self._monitors.pop(pid, None)
        if proc is not None:  # started by this manager: reap it (no zombie left behind)
            proc.wait()

    def _reap(self, slot: str, record: dict[str, Any]) -> None:
        """What a monitor that was killed could not clean up: cgroups (and their tasks), vsock."""
        from local_backend.emulator import cgroups

        cgroups.leftover(f"enclavekit-{slot}").remove()
        cid = record.get("EnclaveCID")
        if cid is not None and not any(
            r["EnclaveCID"] == cid and r["State"] == state.RUNNING
            for r in self.describe()
            if r["EnclaveID"] != record.get("EnclaveID")
        ):
            shutil.rmtree(self.layout.vsock / str(cid), ignore_errors=True)

    def _remove(self, d: Path) -> None:
        shutil.rmtree(d, ignore_errors=True)

    def terminate(self, enclave_id: str) -> dict[str, Any]:
        """terminate-enclave: stop it (no process left behind) and forget it."""
        slot = self.layout.slot_of(enclave_id)
        d = self.layout.slot_dir(slot)
        record = self._read_record(d)
        self._stop(d, record)
        self._reap(slot, record)
        self._remove(d)
        return {
            "EnclaveName": record.get("EnclaveName"),
            "EnclaveID": enclave_id,
            "Terminated": True,
        }

    def terminate_all(self) -> list[dict[str, Any]]:
        return [self.terminate(r["EnclaveID"]) for r in self.describe()]

    # ------------------------------------------------------------------ console
    def console(
        self, enclave_id: str, *, disconnect_timeout: float | None = None, poll: float = 0.05
    ) -> Iterator[bytes]:
        """The enclave's console output (debug mode only), followed until it terminates."""
        slot = self.layout.slot_of(enclave_id)
        record = self._live_record(slot)
        if record.get("Flags") != "DEBUG_MODE":
            raise EmulatorError(
                f"console: enclave {enclave_id} was not started with --debug-mode; "
                "the console is available only for debug-mode enclaves"
            )
        path = self.layout.slot_dir(slot) / "console.log"
        started = time.monotonic()
        offset = 0
        while True:
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            alive = (
                self._live_record(slot).get("State") in (state.RUNNING, state.STARTING)
                if self.layout.slot_dir(slot).is_dir()
                else False
            )
            if not alive:
                return
            if disconnect_timeout is not None and time.monotonic() - started > disconnect_timeout:
                return
            time.sleep(poll)


def _monitor_env() -> dict[str, str]:
    """The monitor's environment: ours without AWS credentials, with our packages importable."""
    from enclavekit.localenv import strip_aws_env

    env = strip_aws_env(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"
