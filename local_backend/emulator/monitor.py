"""The per-enclave monitor: a detached process that owns one emulated enclave for its lifetime.

Like nitro-cli's enclave process (its pid is the enclave's ProcessID), it boots the enclave,
serves its NSM from outside the enclave, keeps its record in state.json, and on SIGTERM (or when
the enclave dies) tears everything down: the process tree, cgroups, the NSM socket and the
enclave's vsock directory. Run as `python -m local_backend.emulator.monitor <enclave dir>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from enclavekit import build, eif
from enclavekit.errors import EnclaveKitError
from local_backend.emulator import cgroups, runtime_layer, state
from local_backend.emulator.nsm_server import BootMeasurements, NsmDevice, NsmServer
from local_backend.emulator.peer import EnclaveMembership

LEAF_ROTATION_S = 2 * 3600  # leaves live 3 h; re-issue well before
log = logging.getLogger("enclavekit.monitor")


def platform_ca_pem(state_root: Path) -> str:
    """The endpoint TLS CA the enclave trusts for AWS hosts, from the platform's own PKI dir.

    Read from `<state>/pki/aws-tls/root.pem` (written by the local endpoint), the directory the
    attestation root comes from: like the NSM, it is the platform's, not the parent's, to give.
    Missing: the enclave gets none and its TLS to KMS fails closed.
    """
    from local_backend.tls_front import CA_CERT

    try:
        return (Path(state_root) / CA_CERT).read_text()
    except OSError:
        log.warning("no endpoint TLS CA at %s: the enclave will trust no KMS", state_root / CA_CERT)
        return ""


def make_signer(state_root: Path, module_id: str):  # noqa: ANN201 - a DocumentSigner
    """A DocumentSigner backed by a per-enclave leaf of the state dir's local PKI."""
    from enclavekit import attestation, pki

    local = pki.LocalPki.load_or_create(state_root)
    lock = threading.Lock()
    leaf: dict[str, Any] = {}

    def current() -> tuple[Any, bytes]:
        with lock:
            if not leaf or time.monotonic() - leaf["at"] > LEAF_ROTATION_S:
                key, cert = local.issue_leaf(module_id)
                leaf.update(key=key, cert=cert, at=time.monotonic())
            return leaf["key"], leaf["cert"]

    def sign(pcrs, user_data, nonce, public_key) -> bytes:  # noqa: ANN001
        key, cert = current()
        return attestation.encode(
            module_id=module_id,
            pcrs=pcrs,
            signing_key=key,
            certificate=cert,
            cabundle=list(local.cabundle),
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )

    current()  # issue the leaf at boot, as the hypervisor provisions the NSM
    return sign


class Monitor:
    """Boot, supervise and tear down one enclave."""

    def __init__(self, enclave_dir: Path, request: dict[str, Any]) -> None:
        self.dir = enclave_dir
        self.request = request
        self.layout = state.Layout(Path(self.request["state_dir"]))
        self.record: dict[str, Any] = {
            k: self.request[k]
            for k in (
                "EnclaveName",
                "EnclaveID",
                "EnclaveCID",
                "NumberOfCPUs",
                "CPUIDs",
                "MemoryMiB",
                "Flags",
                "Measurements",
            )
        }
        self.record.update(ProcessID=os.getpid(), State=state.STARTING)
        self.warnings: list[str] = []
        self.helper: subprocess.Popen[bytes] | None = None
        self.cgroup: cgroups.EnclaveCgroup | None = None
        self.nsm: NsmServer | None = None
        self.members = EnclaveMembership()
        self.terminate_requested = False

    # -- record
    def save(self, **changes: Any) -> None:
        self.record.update(changes)
        self.record["Warnings"] = list(self.warnings)
        state.write_json(self.dir / "state.json", self.record)

    def warn(self, text: str) -> None:
        log.warning("%s", text)
        self.warnings.append(text)

    # -- lifecycle
    def boot(self) -> None:
        req = self.request
        image = eif.read_eif(req["eif_path"])
        launch = build.extract_customer_ramdisk(image, self.dir / "image")
        rt = launch.runtime or {}
        layer = runtime_layer.resolve(list(rt.get("packages", [])), rt.get("python"))
        self.record["Runtime"] = layer.statement()
        boot = BootMeasurements(
            measurements=image.measurements,
            role_arn=req.get("parent_role_arn"),
            instance_id=req["instance_id"],
            debug_mode=req["debug_mode"],
        )
        signer = make_signer(self.layout.root, req["EnclaveID"])
        device = NsmDevice(req["EnclaveID"], boot, signer)
        state.private_dir(self.dir)
        self.nsm = NsmServer(
            device, self.dir / "nsm.sock", peer_check=self.members, log=log
        ).start()
        cid_dir = self.layout.vsock / str(req["EnclaveCID"])
        shutil.rmtree(cid_dir, ignore_errors=True)
        state.private_dir(self.layout.vsock)
        state.private_dir(cid_dir)
        state.private_dir(self.layout.vsock / str(state.PARENT_CID))
        self.cgroup = cgroups.create(f"enclavekit-{req['slot']}", req["MemoryMiB"], req["CPUIDs"])
        for w in self.cgroup.warnings:
            self.warn(w)
        (self.dir / "root").mkdir(exist_ok=True)
        console_path = self.dir / "console.log"
        keep = req["debug_mode"] or req.get("keep_console", False)
        console = os.open(
            console_path if keep else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        spec = {
            "image_root": str(launch.root),
            "cmd": launch.cmd,
            "env": launch.env,
            "new_root": str(self.dir / "root"),
            "nsm_socket": str(self.dir / "nsm.sock"),
            "vsock_root": str(self.layout.vsock),
            "cid": req["EnclaveCID"],
            "parent_cid": state.PARENT_CID,
            "cpu_ids": req["CPUIDs"],
            "memory_mib": req["MemoryMiB"],
            "runtime_prefix": layer.prefix,
            "interpreter": layer.interpreter,
            "site_packages": layer.site_packages,
            "packages": list(layer.paths),
            "system_libs": list(layer.system_libs),
            "cgroup_procs": self.cgroup.procs_files,
            "console_fd": console,
            "platform_ca_pem": platform_ca_pem(self.layout.root),
        }
        state.write_json(self.dir / "launch.json", spec)
        self.helper = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local_backend.emulator.isolation",
                str(self.dir / "launch.json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            pass_fds=(console,),
            cwd="/",
        )
        os.close(console)

    def supervise(self) -> str:
        """Follow the helper's status lines; returns why the enclave ended."""
        assert self.helper is not None and self.helper.stdout is not None
        reason = "the isolation helper ended without a status"
        for raw in self.helper.stdout:
            kind, _, text = raw.decode(errors="replace").strip().partition(" ")
            if kind == "WARN":
                self.warn(text)
                self.save()
            elif kind == "RUNNING":
                fallback = self.members.enclave_started(int(text))
                if fallback:
                    self.warn(fallback)
                self.save(State=state.RUNNING, EnclavePID=int(text))
                log.info(
                    "enclave running, pid %s; NSM peers checked by %s", text, self.members.mechanism
                )
            elif kind == "FAILED":
                self.members.enclave_gone()
                reason = f"boot failed: {text}"
                self.save(State=state.FAILED, ExitReason=reason)
            elif kind == "EXIT":
                self.members.enclave_gone()
                reason = self._exit_reason(text)
        self.helper.wait()
        return reason

    def _exit_reason(self, text: str) -> str:
        if self.terminate_requested:
            return "terminated by terminate-enclave"
        if self.cgroup is not None and self.cgroup.oom_killed():
            return (
                f"out of memory: exceeded its {self.request['MemoryMiB']} MiB "
                f"and was killed by the kernel OOM killer (cgroup v{self.cgroup.version})"
            )
        if text.startswith("SIGNAL"):
            sig = int(text.split()[1])
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            limited = self.cgroup is None or self.cgroup.version == 0
            extra = " (likely its RLIMIT_AS memory limit)" if limited and sig == 9 else ""
            return f"killed by {name}{extra}"
        return f"exited with status {text}"

    def on_term(self, _signum: int, _frame: object) -> None:
        self.terminate_requested = True
        if self.helper is not None and self.helper.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.helper.send_signal(signal.SIGTERM)

    def teardown(self) -> None:
        self.members.enclave_gone()
        if self.helper is not None and self.helper.poll() is None:
            self.helper.kill()
            self.helper.wait()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.nsm is not None:
            self.nsm.stop()
        shutil.rmtree(self.layout.vsock / str(self.request["EnclaveCID"]), ignore_errors=True)
        for sub in ("image", "root"):
            path = self.dir / sub
            with contextlib.suppress(OSError):
                if path.is_dir() and not os.path.ismount(path):
                    shutil.rmtree(path)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        try:
            self.save()
            self.boot()
            reason = self.supervise()
        except EnclaveKitError as exc:
            reason = f"boot failed: {exc}"
            self.save(State=state.FAILED, ExitReason=reason)
        except Exception as exc:  # noqa: BLE001 - the record must say why, whatever it was
            log.exception("monitor failed")
            reason = f"boot failed: {type(exc).__name__}: {exc}"
            self.save(State=state.FAILED, ExitReason=reason)
        finally:
            self.teardown()
        final = (
            state.FAILED
            if self.record.get("State") in (state.FAILED, state.STARTING)
            else state.TERMINATED
        )
        self.save(State=final, ExitReason=reason, EnclavePID=None)
        log.info("enclave %s: %s", self.record["EnclaveID"], reason)
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m local_backend.emulator.monitor ENCLAVE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(AttributeError, OSError):
        import ctypes

        ctypes.CDLL(None).prctl(15, b"enclavekit-monitor", 0, 0, 0)  # PR_SET_NAME
    # The request comes from run-enclave's pipe, never from request.json: that file lies in the
    # state dir, which root on the parent can rewrite (PCR3/PCR4, debug mode, the console).
    request = json.loads(sys.stdin.buffer.read())
    return Monitor(Path(args[0]), request).run()


if __name__ == "__main__":
    sys.exit(main())
