"""The sample app as `make demo` deploys it: set-up A (nginx on the parent, the certificate's key
in ACM's enclave) and set-up B (the image's sealed secret), with the real cdk CLI through `up`.

The web host boots from the user data our constructs render — `dnf install
aws-nitro-enclaves-acm nginx`, acm.yaml, the nginx and OpenSSL edits — in a local Amazon Linux
host; the agent boots ACM's enclave image, which alone may decrypt the association's key.
`verify` then proves, for that host: HTTPS from nginx with the association's certificate and a
chain to the local CA, every handshake signed by the enclave's token (signatures counted), the
key absent from nginx's master and workers, the agent, every state and log file and present in
the enclave. Also here: the host role without attestation is denied the association key, as
any process of the parent (or an administrator with its IMDS credentials) would be.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import copy_sample_app

from local_backend import pytest_plugin as plugin
from local_backend import up

pytestmark = pytest.mark.slow
STACK = "EnclaveServiceA"


@pytest.fixture
def ep(tmp_path: Path) -> Iterator[plugin.LocalEndpoint]:
    """An endpoint of its own: `up` verifies every host of the state dir."""
    endpoint = plugin.start_endpoint(tmp_path / "state")
    try:
        yield endpoint
    finally:
        plugin.stop_endpoint(endpoint)


def test_sample_app_set_up_a_and_b_verify(ep: plugin.LocalEndpoint, tmp_path: Path) -> None:
    app = copy_sample_app(tmp_path / "app", stack_name=STACK, context={"web_host": True})
    out = io.StringIO()
    result = up.up(app, state_dir=ep.state_dir, port=ep.port, progress=up.Progress(out))
    assert result.report is not None, out.getvalue()
    report = result.report
    assert result.ok, report.table()
    checks = {(h.logical_id.split("/")[-1][:7], c.name): c for h in report.hosts for c in h.checks}
    for name in (
        "boot",
        "enclaves",
        "parent-denied",
        "nsm-parent-refused",
        "https",
        "key-not-on-parent",
        "debug-denied",
        "other-image-denied",
    ):
        c = checks[("WebHost", name)]
        assert c.ok and c.applies, (name, c.detail)
    assert "signatures by the ACM enclave's token" in checks[("WebHost", "https")].detail
    assert "nginx" in checks[("WebHost", "key-not-on-parent")].detail
    for name in ("image-pcrs", "secret", "parent-denied", "debug-denied", "other-image-denied"):
        assert checks[("HostF59", name)].ok, name
    assert not checks[("HostF59", "https")].applies  # set-up B serves no TLS
