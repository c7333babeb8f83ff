"""Where does a private key appear? Files and process memory, searched for its bytes.

Run inside the endpoint process: the endpoint plays ACM, the one party besides the enclave that
legitimately holds the certificate's key, so the key never has to leave it for the search. A
caller gets back only *where* the key was found, never the key.

A key is searched for in every form it could leak in: the PEM body (base64 text), the DER
encoding (PKCS#8 and traditional), and its secret numbers as big-endian bytes (RSA d, p, q; EC
private scalar), so a re-encoded or in-memory copy is found too.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_WINDOW = 24  # bytes of a pattern: long enough to be unique, short enough to survive chunking
_MAX_FILE = 64 << 20
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Hit:
    where: str  # a file path or "pid N (name)"
    form: str  # which encoding of the key was found


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _secret_offset(key: object, der: bytes) -> int:
    """Where a window of `der` covers only secret bytes. An EC key's DER ends with its public
    point, which every certificate of the key carries too: a window there would be "found" in
    any process that holds the certificate. So EC windows start at the private scalar; RSA's
    middle lies in d/p/q, after the public modulus."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        scalar = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
        found = der.find(scalar)
        if found >= 0:
            return found
    return len(der) // 2


def key_patterns(key_pem: bytes) -> dict[str, bytes]:
    """Distinctive byte windows of the key in each form it could appear in."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    forms: dict[str, bytes] = {}
    # PEM wraps its base64 every 64 characters: a window that spans a line break is never in
    # a PEM file as written, so the pattern is one whole line from the middle of the body.
    body = [line for line in key_pem.splitlines() if line and not line.startswith(b"-----")]
    forms["PEM text"] = body[len(body) // 2]
    for name, fmt in (
        ("PKCS#8 DER", serialization.PrivateFormat.PKCS8),
        ("traditional DER", serialization.PrivateFormat.TraditionalOpenSSL),
    ):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        at = _secret_offset(key, der)
        forms[name] = der[at : at + _WINDOW]
        b64 = base64.b64encode(der)
        at64 = at // 3 * 4 + 4  # a base64 quantum boundary inside the secret part
        forms[f"{name} as base64"] = b64[at64 : at64 + 2 * _WINDOW]
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        for name, value in (("RSA d", nums.d), ("RSA p", nums.p), ("RSA q", nums.q)):
            raw = _int_bytes(value)
            forms[f"{name} (big-endian)"] = raw[8 : 8 + _WINDOW]
            # a live key object: OpenSSL BIGNUMs are little-endian words on x86_64/aarch64
            forms[f"{name} (BIGNUM)"] = raw[::-1][8 : 8 + _WINDOW]
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        raw = _int_bytes(key.private_numbers().private_value)
        forms["EC private scalar"] = raw[:_WINDOW]
        forms["EC private scalar (BIGNUM)"] = raw[::-1][:_WINDOW]
    return forms


def _find(data: bytes, patterns: dict[str, bytes]) -> list[str]:
    return [form for form, pat in patterns.items() if pat in data]


def scan_files(paths: Iterable[Path], patterns: dict[str, bytes]) -> tuple[list[Hit], int]:
    """Search every regular file under `paths`; returns hits and the number of files read."""
    hits: list[Hit] = []
    count = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            if f.is_symlink() or f.is_socket():
                continue
            with contextlib.suppress(OSError):
                if f.stat().st_size > _MAX_FILE:
                    continue
                data = f.read_bytes()
                count += 1
                hits.extend(Hit(str(f), form) for form in _find(data, patterns))
    return hits, count


_MAPS = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) (r)")


def scan_process(pid: int, patterns: dict[str, bytes]) -> tuple[list[Hit], int]:
    """Search the readable memory of `pid`; returns hits and the number of bytes read.

    Raises PermissionError when this process may not read that memory (not root / ptrace).
    """
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    found: set[str] = set()
    total = 0
    overlap = max(len(p) for p in patterns.values())
    with open(f"/proc/{pid}/maps", "rb") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = _MAPS.match(line)
            if not m or b"[vvar]" in line or b"[vsyscall]" in line:
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            pos, tail = start, b""
            while pos < end:
                size = min(_CHUNK, end - pos)
                try:
                    mem.seek(pos)
                    chunk = mem.read(size)
                except (OSError, ValueError, OverflowError):
                    break
                total += len(chunk)
                found.update(_find(tail + chunk, patterns))
                tail = chunk[-overlap:]
                pos += size
    return [Hit(f"pid {pid} ({name})", form) for form in sorted(found)], total


def scan(key_pem: bytes, *, paths: Iterable[str], pids: Iterable[int]) -> dict[str, object]:
    """The search the endpoint runs for verify: JSON-ready, without any key bytes."""
    patterns = key_patterns(key_pem)
    file_hits, files = scan_files([Path(p) for p in paths if os.path.exists(p)], patterns)
    result: dict[str, object] = {
        "patterns": sorted(patterns),
        "files_read": files,
        "file_hits": [h.__dict__ for h in file_hits],
        "processes": {},
    }
    procs: dict[str, object] = {}
    for pid in pids:
        try:
            hits, nbytes = scan_process(int(pid), patterns)
            procs[str(pid)] = {"bytes_read": nbytes, "hits": [h.__dict__ for h in hits]}
        except (OSError, ValueError) as exc:
            procs[str(pid)] = {"error": f"cannot read the memory of pid {pid}: {exc}"}
    result["processes"] = procs
    return result
