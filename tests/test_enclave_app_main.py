"""The enclave program as it ships: built into an EIF by `build-enclave` from its manifest,
unpacked as the emulator unpacks it, and started with the image's own /cmd and /env — so only
the vendored core modules are importable — then driven over vsock like the parent drives it.

Process isolation (namespaces, /dev/nsm bind mount) is the emulator's part and tested there;
here the image's paths for the NSM socket and the vsock root are passed as arguments.
Budget: ~8 s.
"""

from __future__ import annotations

import base64
import hmac
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enclave_app_support import ENCLAVE_CID, MODULE_ID, SECRET, kms_world, nsm_device

from enclavekit.build import build_enclave, extract_customer_ramdisk, load_manifest
from enclavekit.eif import read_eif
from enclavekit.localenv import strip_aws_env
from enclavekit.provisioning import (
    Challenge,
    ChallengeAnswer,
    Provision,
    Provisioned,
    SecretSpec,
    Status,
    StatusReport,
    exchange,
)

APP_DIR = Path(__file__).resolve().parent.parent / "enclave_app"


def test_manifest_vendors_only_pure_modules_and_declares_its_runtime() -> None:
    manifest = load_manifest(APP_DIR)
    assert manifest.cmd == ("python3", "-m", "app")
    assert set(manifest.vendor) == {
        f"enclavekit.{m}"
        for m in (
            "errors",
            "contract",
            "pcr",
            "nsm",
            "attestation",
            "cms",
            "transport",
            "provisioning",
        )
    }
    assert set(manifest.runtime_packages) >= {"cbor2", "cryptography", "boto3"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"enclave program exited with {proc.returncode}: "
                f"{proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def test_built_image_boots_and_serves_the_protocol(tmp_path: Path) -> None:
    result = build_enclave(APP_DIR, tmp_path / "app.eif")
    launch = extract_customer_ramdisk(read_eif(result.path), tmp_path / "root")
    root = launch.root
    assert (root / "app" / "__main__.py").is_file()
    assert sorted(p.name for p in (root / "app" / "enclavekit").glob("*.py")) == sorted(
        [
            "__init__.py",
            "attestation.py",
            "cms.py",
            "contract.py",
            "errors.py",
            "nsm.py",
            "pcr.py",
            "provisioning.py",
            "transport.py",
        ]
    )
    assert launch.cmd == ["python3", "-m", "app"]

    with kms_world(tmp_path / "world") as world, nsm_device(world.nsm_path, world.state):
        (world.vsock_root / "self").write_text(f"{ENCLAVE_CID}\n")
        env = strip_aws_env(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(launch.env)
        # the image's "/" is `root` here: rebase its absolute paths
        env["PYTHONPATH"] = os.pathsep.join(
            str(root) + p if p != "/" else str(root) for p in launch.env["PYTHONPATH"].split(":")
        )
        argv = [
            sys.executable,
            *launch.cmd[1:],
            "--nsm-device",
            str(world.nsm_path),
            "--vsock-root",
            str(world.vsock_root),
            "--platform-ca",
            str(world.kms_ca),
        ]
        proc = subprocess.Popen(
            argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(world.vsock_root / str(ENCLAVE_CID) / "5005", proc)
            parent = world.parent_vsock()
            with parent.connect(ENCLAVE_CID, 5005) as sock:
                sock.settimeout(30)
                status = exchange(sock, Status())
                assert isinstance(status, StatusReport) and status.state == "waiting"
                assert status.module_id == MODULE_ID
                reply = exchange(
                    sock,
                    Provision(
                        region="us-east-1",
                        credentials=world.role_credentials,
                        certificate=world.bundle,
                        secrets=(
                            SecretSpec("app-secret", base64.b64encode(world.secret_blob).decode()),
                        ),
                    ),
                )
                assert isinstance(reply, Provisioned) and reply.state == "ready", reply
                nonce = os.urandom(32)
                answer = exchange(sock, Challenge("app-secret", nonce))
                assert answer == ChallengeAnswer(
                    "app-secret", hmac.new(SECRET, nonce, "sha256").digest()
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                pytest.fail("enclave program did not stop on SIGTERM")
    console = err.decode()
    assert proc.returncode == 0, console
    assert "waiting for Provision on vsock port 5005" in console
    assert "provisioned: certificate" in console and "stopping" in console
    # the console never shows key material, secrets or credentials
    for material in (
        "PRIVATE KEY",
        SECRET.decode("latin-1"),
        world.role_credentials.secret_access_key,
        world.role_credentials.session_token,
    ):
        assert material not in console
    # the program imported only what the image carries (no enclavekit from the checkout)
    assert f"core modules from {root / 'app' / 'enclavekit'}" in console
    assert "Traceback" not in console
