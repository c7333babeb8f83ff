"""`enclavekit attest verify|show`: check or print a Nitro attestation document.

Exit status: 0 verified, 1 rejected (the reason on stderr), 2 unreadable input or bad usage.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclavekit import attestation
from enclavekit.cli.common import add_state_dir, command
from enclavekit.errors import (
    AttestationDecodeError,
    AttestationError,
    EnclaveKitError,
    InvalidInput,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    group = sub.add_parser("attest", help="verify or show a Nitro attestation document")
    cmds = group.add_subparsers(dest="attest_command", metavar="COMMAND", parser_class=type(group))
    cmds.required = True

    verify = command(cmds, "verify", _verify)
    verify.add_argument("file", metavar="FILE", help="document, base64 or raw; - for stdin")
    verify.add_argument(
        "--trust",
        default="aws",
        metavar="aws|local|PEMFILE",
        help="the only root to trust: AWS Nitro Root-G1 (default), the local emulator root "
        "of --state-dir, or a PEM file",
    )
    add_state_dir(verify, help="state dir holding the local root")
    verify.add_argument(
        "--at",
        metavar="TIME",
        help="verification time: RFC 3339 (2024-09-07T14:37:39.545Z) or epoch ms; default now",
    )
    verify.add_argument(
        "--expect-pcr",
        action="append",
        default=[],
        metavar="N=HEX",
        help="require PCR N to equal HEX (repeatable)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")

    show = command(cmds, "show", _show)
    show.add_argument("file", metavar="FILE", help="document, base64 or raw; - for stdin")
    show.add_argument("--json", action="store_true", help="print the fields as JSON")


# ---------------------------------------------------------------- input parsing


def read_document(source: str) -> bytes:
    """Raw COSE_Sign1 bytes from a file or stdin holding raw bytes or base64 text."""
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"attestation document {source}: expected a readable file, found {exc.strerror}"
        ) from None
    if data[:1] in (b"\x84", b"\xd2"):  # untagged / tag-18 COSE_Sign1: raw bytes
        return data
    text = b"".join(data.split())
    padded = text + b"=" * (-len(text) % 4)
    for altchars in (None, b"-_"):  # standard, then URL-safe alphabet
        try:
            if text:
                return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise AttestationDecodeError(
        f"attestation document {source}: expected raw COSE_Sign1 bytes or base64, "
        f"found {len(data)} bytes of neither"
    )


def parse_time(value: str | None) -> datetime | int | None:
    """RFC 3339 (a zone is required) or epoch milliseconds; None means now."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidInput(
            f"--at: expected RFC 3339 with a zone (2024-09-07T14:37:39.545Z) or epoch ms, "
            f"found {value!r}"
        )
    return moment


def parse_expect(items: list[str]) -> dict[int, bytes]:
    """`N=HEX` pairs; N in 0..31, HEX a 32/48/64-byte value."""
    expected: dict[int, bytes] = {}
    for item in items:
        index, sep, hexval = item.partition("=")
        try:
            n = int(index.strip().upper().removeprefix("PCR"))
            value = bytes.fromhex(hexval.strip())
        except ValueError:
            n, value = -1, b""
        if sep and 0 <= n < 32 and 0 < len(value) < 32:
            raise InvalidInput(
                f"--expect-pcr: expected the whole PCR{n} (96 hex digits for SHA-384), found "
                f"{len(value) * 2} in {item!r}: a prefix would pass an image that only starts "
                "the same"
            )
        if not sep or not 0 <= n < 32 or len(value) not in (32, 48, 64):
            raise InvalidInput(
                f"--expect-pcr: expected N=HEX with N 0..31 and 32/48/64 bytes of hex, "
                f"found {item!r}"
            )
        expected[n] = value
    return expected


def _anchor(args: argparse.Namespace) -> attestation.TrustAnchor:
    if args.trust == "aws":
        return attestation.TrustAnchor.aws()
    if args.trust == "local":
        return attestation.TrustAnchor.local(args.state_dir)
    path = Path(args.trust)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"--trust: expected aws, local or a readable PEM file, found {args.trust!r} "
            f"({exc.strerror})"
        ) from None
    return attestation.TrustAnchor.from_pem(pem, name=str(path))


# ---------------------------------------------------------------- output


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _doc_json(doc: attestation.AttestationDocument) -> dict[str, Any]:
    def opt(value: bytes | None) -> str | None:
        return None if value is None else value.hex()

    try:
        when: str | None = _iso(doc.time)
    except AttestationError:
        when = None
    return {
        "module_id": doc.module_id,
        "timestamp": doc.timestamp,
        "time": when,
        "mode": "debug" if doc.is_debug else "production",
        "digest": doc.digest,
        "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()},
        "public_key": opt(doc.public_key),
        "user_data": opt(doc.user_data),
        "nonce": opt(doc.nonce),
        "cabundle_length": len(doc.cabundle),
    }


def _size(value: bytes | None) -> str:
    return "-" if value is None else f"{len(value)} bytes"


def _table(doc: attestation.AttestationDocument, status: str) -> str:
    info = _doc_json(doc)
    rows = [
        ("status", status),
        ("module id", doc.module_id),
        ("time", f"{info['time'] or '?'} ({doc.timestamp} ms)"),
        ("mode", info["mode"]),
        ("public_key", _size(doc.public_key)),
        ("user_data", _size(doc.user_data)),
        ("nonce", _size(doc.nonce)),
    ]
    rows += [(f"PCR{i}", v.hex()) for i, v in doc.pcrs.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _fail_json(exc: EnclaveKitError) -> int:
    print(json.dumps({"verified": False, "error": str(exc), "exit_code": exc.exit_code}))
    print(f"enclavekit: error: {exc}", file=sys.stderr)
    return exc.exit_code


# ---------------------------------------------------------------- handlers


def _verify(args: argparse.Namespace) -> int:
    """verify a document against one trust anchor"""
    with warnings.catch_warnings():
        # cryptography warns about malformed certificates that the verifier then rejects.
        warnings.simplefilter("ignore")
        try:
            raw = read_document(args.file)
            at = parse_time(args.at)
            expected = parse_expect(args.expect_pcr)
            trust = _anchor(args)
            doc = attestation.verify(raw, trust, at)
            for index, value in sorted(expected.items()):
                found = doc.pcrs.get(index)
                if found != value:
                    raise AttestationError(
                        f"PCR{index}: expected {value.hex()}, "
                        f"found {found.hex() if found is not None else 'no such PCR'}"
                    )
        except EnclaveKitError as exc:
            if args.json:
                return _fail_json(exc)
            raise
    when = at if isinstance(at, datetime) else None
    if isinstance(at, int):
        when = datetime.fromtimestamp(at / 1000, tz=UTC)
    when = when or datetime.now(UTC)
    if args.json:
        result = {"verified": True, "trust": trust.name, "at": _iso(when), **_doc_json(doc)}
        print(json.dumps(result, indent=2))
    else:
        print(_table(doc, f"verified against {trust.name} at {_iso(when)}"))
    return 0


def _show(args: argparse.Namespace) -> int:
    """print a document's fields without verifying it"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = attestation.decode(read_document(args.file))
    if args.json:
        print(json.dumps({"verified": None, **_doc_json(doc)}, indent=2))
    else:
        print(_table(doc, "NOT verified (show only decodes)"))
    return 0
