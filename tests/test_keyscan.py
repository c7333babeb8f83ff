"""keyscan finds a private key in every form it searches for — in files and in process memory —
and nothing of another key; its answer carries no key bytes."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from local_backend import keyscan

NOISE = secrets.token_bytes(4096)


def _pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _der(key: object, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())  # type: ignore[attr-defined]


def _int(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def planted_forms(key: object) -> dict[str, bytes]:
    """The whole key as each form a leak would hold it (not just the searched window)."""
    pkcs8 = _der(key, serialization.PrivateFormat.PKCS8)
    trad = _der(key, serialization.PrivateFormat.TraditionalOpenSSL)
    forms = {
        "PEM text": _pem(key),
        "PKCS#8 DER": pkcs8,
        "traditional DER": trad,
        "PKCS#8 DER as base64": base64.b64encode(pkcs8),
        "traditional DER as base64": base64.b64encode(trad),
    }
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        for name, value in (("RSA d", nums.d), ("RSA p", nums.p), ("RSA q", nums.q)):
            forms[f"{name} (big-endian)"] = _int(value)
            forms[f"{name} (BIGNUM)"] = _int(value)[::-1]
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        scalar = _int(key.private_numbers().private_value)
        forms["EC private scalar"] = scalar
        forms["EC private scalar (BIGNUM)"] = scalar[::-1]
    return forms


KEYS = {
    "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-p256": ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": ec.generate_private_key(ec.SECP384R1()),
}
CASES = [(k, form) for k, key in KEYS.items() for form in planted_forms(key)]


def test_every_searched_form_has_a_planted_case() -> None:
    for name, key in KEYS.items():
        assert set(keyscan.key_patterns(_pem(key))) == set(planted_forms(key)), name


@pytest.mark.parametrize(("key_name", "form"), CASES)
def test_a_key_planted_in_a_file_is_found_in_that_form(
    tmp_path: Path, key_name: str, form: str
) -> None:
    key = KEYS[key_name]
    (tmp_path / "deep" / "er").mkdir(parents=True)
    leak = tmp_path / "deep" / "er" / "leak.bin"
    leak.write_bytes(NOISE + planted_forms(key)[form] + NOISE)
    (tmp_path / "clean.log").write_bytes(NOISE)
    hits, files = keyscan.scan_files([tmp_path], keyscan.key_patterns(_pem(key)))
    assert files == 2
    assert {h.where for h in hits} == {str(leak)}
    assert form in {h.form for h in hits}


def test_another_key_is_not_found(tmp_path: Path) -> None:
    mine, other = KEYS["rsa2048"], rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other.bin").write_bytes(b"".join(planted_forms(other).values()))
    hits, files = keyscan.scan_files([tmp_path], keyscan.key_patterns(_pem(mine)))
    assert files == 1 and hits == []


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process that reads a file into its memory and keeps it there."""
    data = tmp_path / "held.bin"
    ready = tmp_path / "ready"
    code = (
        "import pathlib, sys, time\n"
        "held = bytearray(pathlib.Path(sys.argv[1]).read_bytes())\n"
        "pathlib.Path(sys.argv[1]).unlink()\n"
        "pathlib.Path(sys.argv[2]).touch()\n"
        "time.sleep(120)\n"
    )
    yield_proc: list[subprocess.Popen[bytes]] = []

    def start(payload: bytes) -> subprocess.Popen[bytes]:
        data.write_bytes(payload)
        proc = subprocess.Popen([sys.executable, "-c", code, str(data), str(ready)])
        yield_proc.append(proc)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        return proc

    try:
        yield start, data  # type: ignore[misc]
    finally:
        for proc in yield_proc:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("form", ["PEM text", "PKCS#8 DER", "RSA d (BIGNUM)", "RSA p (big-endian)"])
def test_a_key_in_process_memory_is_found(holder: object, form: str) -> None:
    start, _ = holder  # type: ignore[misc]
    key = KEYS["rsa2048"]
    proc = start(NOISE + planted_forms(key)[form] + NOISE)
    hits, nbytes = keyscan.scan_process(proc.pid, keyscan.key_patterns(_pem(key)))
    assert nbytes > 1 << 20
    assert form in {h.form for h in hits}
    assert all(h.where.startswith(f"pid {proc.pid} (") for h in hits)


def test_a_process_without_the_key_has_no_hits(holder: object) -> None:
    start, _ = holder  # type: ignore[misc]
    proc = start(NOISE)
    hits, nbytes = keyscan.scan_process(proc.pid, keyscan.key_patterns(_pem(KEYS["ec-p256"])))
    assert nbytes > 1 << 20 and hits == []


def test_scan_answers_where_never_the_key(tmp_path: Path) -> None:
    key = KEYS["ec-p384"]
    pem = _pem(key)
    (tmp_path / "leak.pem").write_bytes(pem)
    result = keyscan.scan(pem, paths=[str(tmp_path), str(tmp_path / "missing")], pids=[2**22 - 1])
    text = json.dumps(result)
    assert {h["where"] for h in result["file_hits"]} == {str(tmp_path / "leak.pem")}
    assert "PEM text" in {h["form"] for h in result["file_hits"]}
    assert "cannot read the memory of pid" in result["processes"][str(2**22 - 1)]["error"]
    for pattern in keyscan.key_patterns(pem).values():
        assert pattern.decode("latin-1") not in text
        assert base64.b64encode(pattern).decode() not in text
