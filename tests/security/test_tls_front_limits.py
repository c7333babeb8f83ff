"""The endpoint's TLS front picks a certificate by the client's SNI name: any local client
chooses that name, so what the front keeps per name must be bounded."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from local_backend import tls_front


def test_per_name_contexts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every new `*.amazonaws.com` name issued and kept one more certificate and
    context for the endpoint's lifetime (memory and CA work grew without limit)."""
    monkeypatch.setattr(tls_front, "MAX_CONTEXTS", 4)  # the bound's logic, at a small size
    front = tls_front.TlsFront(tls_front.endpoint_ca(tmp_path), ("127.0.0.1", 9)).start()
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / tls_front.CA_CERT))
        for i in range(tls_front.MAX_CONTEXTS + 3):
            name = f"svc{i}.us-east-1.amazonaws.com"
            raw = socket.create_connection(("127.0.0.1", front.port), timeout=10)
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.getpeercert()["subjectAltName"][0] == ("DNS", name)
        assert len(front._contexts) == tls_front.MAX_CONTEXTS
        assert "svc0.us-east-1.amazonaws.com" not in front._contexts  # the oldest went first
    finally:
        front.stop()
