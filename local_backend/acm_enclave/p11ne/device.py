"""The p11ne device: 128 slots of tokens, each a SoftHSMv2 token on the enclave's tmpfs.

AWS's vtok_srv keeps its device in a JSON file inside the enclave that its PKCS#11 module reads;
here the tokens live in SoftHSMv2 (the real PKCS#11 implementation the image carries), under
`<state>/tokens` on the enclave's tmpfs, which `p11-kit server` serves through libp11ne.so
(p11ne_module.c). This process keeps what vtok_srv's file keeps: label, PIN, slot, expiry and
each key's PEM (RefreshToken compares a fresh decrypt with it) — in its own memory, which is
enclave memory. The PEM reaches SoftHSM through `softhsm2-util --import` of a PKCS#8 file that
exists on the tmpfs only for that call.

`<state>/slots/<hex(label)>` holds the slot index (libp11ne.so presents serial `EVT<slot>`),
`<state>/sign/<hex(label)>` one byte per signature the token made (libp11ne.so appends them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .rpc import MAX_SLOTS, TOKEN_EXPIRY_SECS


class DeviceError(Exception):
    """SoftHSM refused an operation (InternalError / TokenProvisioningFailed on the wire)."""


@dataclass(frozen=True)
class Key:
    id: int
    label: str
    pem: str = field(repr=False)
    encrypted_pem_b64: str = field(repr=False)
    cert_pem: str | None = field(default=None, repr=False)


@dataclass
class Slot:
    label: str
    pin: str = field(repr=False)
    keys: tuple[Key, ...]
    expiry: float

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.expiry


def _hex(label: str) -> str:
    return label.encode().hex()


class Device:
    """The slots, and SoftHSM operations for them (one RPC at a time holds `lock`)."""

    def __init__(self, state: Path, softhsm_util: str, module: str) -> None:
        self.state = state
        self.util = [softhsm_util, "--module", module]
        self.slots: list[Slot | None] = [None] * MAX_SLOTS
        self.lock = threading.Lock()
        for sub in ("tokens", "slots", "sign", "import"):
            (state / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    # ------------------------------------------------------------------ lookups
    def expire(self) -> None:
        """Tokens past their expiry leave their slot (vtok_common's `load_device`)."""
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.expired:
                self._drop(i)

    def find(self, label: str) -> int | None:
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.label == label:
                return i
        return None

    def signatures(self, label: str) -> int:
        try:
            return (self.state / "sign" / _hex(label)).stat().st_size
        except OSError:
            return 0

    # ------------------------------------------------------------------ changes
    def put(self, index: int, label: str, pin: str, keys: tuple[Key, ...]) -> None:
        """A fresh SoftHSM token for slot `index` holding `keys` (replacing what was there)."""
        if self.slots[index] is not None:
            self._drop(index)
        self._run("--init-token", "--free", "--label", label, "--pin", pin,
                  "--so-pin", secrets.token_hex(16))  # fmt: skip
        try:
            for key in keys:
                self._import(label, pin, key)
        except DeviceError:
            self._delete_token(label)
            raise
        (self.state / "slots" / _hex(label)).write_text(f"{index}\n")
        (self.state / "sign" / _hex(label)).unlink(missing_ok=True)
        self.slots[index] = Slot(label, pin, keys, time.monotonic() + TOKEN_EXPIRY_SECS)

    def remove(self, index: int) -> None:
        self._drop(index)

    def _drop(self, index: int) -> None:
        slot = self.slots[index]
        self.slots[index] = None
        if slot is None:
            return
        self._delete_token(slot.label)
        for sub in ("slots", "sign"):
            (self.state / sub / _hex(slot.label)).unlink(missing_ok=True)

    def _delete_token(self, label: str) -> None:
        with contextlib.suppress(DeviceError):
            self._run("--delete-token", "--token", label)

    def _import(self, label: str, pin: str, key: Key) -> None:
        try:
            loaded = serialization.load_pem_private_key(key.pem.encode(), password=None)
            pkcs8 = loaded.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        except (ValueError, TypeError) as exc:
            raise DeviceError(f"key {key.label!r}: not a PEM private key ({exc})") from None
        path = self.state / "import" / f"{secrets.token_hex(8)}.p8"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pkcs8)
            del pkcs8
            self._run("--import", str(path), "--token", label, "--label", key.label,
                      "--id", f"{key.id:02x}", "--pin", pin)  # fmt: skip
        finally:
            path.unlink(missing_ok=True)

    def _run(self, *args: str) -> None:
        run = subprocess.run(
            [*self.util, *args], capture_output=True, text=True, timeout=30, check=False
        )
        if run.returncode != 0:
            what = (run.stderr or run.stdout).strip().splitlines()
            raise DeviceError(f"softhsm2-util {args[0]}: {what[-1] if what else run.returncode}")

    def wipe(self) -> None:
        for i in range(MAX_SLOTS):
            self.slots[i] = None
        shutil.rmtree(self.state, ignore_errors=True)
