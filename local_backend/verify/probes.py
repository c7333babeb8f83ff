"""debug-denied and other-image-denied (agent host): a debug-mode enclave of the image and one
of a one-byte variant, run with the host's role and instance id, are denied what the real
enclave gets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from enclavekit import eif
from enclavekit import provisioning as prov
from enclavekit.cpio import CpioEntry, read_newc, write_newc
from enclavekit.errors import EnclaveKitError
from enclavekit.pki import LocalPki
from enclavekit.transport import EmulatedVsock
from local_backend import server
from local_backend.verify.agent_host import VERIFIER_DIR, ParentAgentHost
from local_backend.verify.keys import denied_other_resource
from local_backend.verify.parent_denied import secret_key_id
from local_backend.verify.report import short


def variant_image(source: Path, dest: Path) -> Path:
    """The same app with one file more: a different image (PCR0 and PCR2 change)."""
    image = eif.read_eif(source)
    ramdisks = list(image.ramdisks)
    entries = read_newc(ramdisks[-1])
    entries.append(CpioEntry(path="rootfs/app/.enclavekit-verify-variant", data=b"variant\n"))
    ramdisks[-1] = write_newc(entries)
    dest.write_bytes(
        eif.write_eif(
            kernel=image.kernel,
            cmdline=image.cmdline,
            ramdisks=ramdisks,
            metadata=image.metadata or {},
            arch=image.arch,
        )
    )
    return dest


@contextlib.contextmanager
def _probe_enclave(
    host: ParentAgentHost, eif_path: Path, *, debug: bool
) -> Iterator[EmulatedVsock]:
    """A probe enclave of `eif_path` with the host's role and instance id (so its PCR3/PCR4
    are the host's), on the machine in a scratch emulator directory with its own KMS
    vsock-proxy; yields the vsock its parent side (CID 3) reaches it by, at the host's CID."""
    from local_backend.emulator.runtime import EnclaveManager
    from local_backend.emulator.vsock_proxy import VsockProxy

    scratch = host.state_dir / VERIFIER_DIR / f"probe-{host.info['instance_id']}-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    LocalPki.load_or_create(host.state_dir)  # the endpoint's one root, which its KMS trusts
    (scratch / "pki").symlink_to(host.state_dir / "pki", target_is_directory=True)
    kms_host = f"kms.{host.region}.amazonaws.com"
    allowlist = scratch / "vsock-proxy.yaml"
    allowlist.write_text(f"allowlist:\n- {{address: {kms_host}, port: 443}}\n")
    info = server.read_endpoint(host.state_dir)
    proxy = VsockProxy.for_state_dir(  # where the host's vsock-proxy.service listens
        scratch,
        prov.KMS_PROXY_PORT,
        kms_host,
        443,
        config=allowlist,
        endpoint=host.endpoint,
        tls_endpoint=None if info is None else info.tls_endpoint,
    ).start()
    manager = EnclaveManager(scratch)
    enclave = host.spec.get("enclave") or {}
    try:
        manager.run_enclave(
            eif_path,
            int(enclave.get("cpu_count", 2)),
            int(enclave.get("memory_mib", 512)),
            cid=int(host.enclave["EnclaveCID"]),
            debug_mode=debug,
            parent_role_arn=(host.info.get("role_arns") or [None])[0],
            parent_instance_id=host.info["instance_id"],
            name=f"verify-probe-{os.getpid()}",
        )
        yield EmulatedVsock(scratch / "vsock", 3)
    finally:
        with contextlib.suppress(EnclaveKitError, OSError):
            manager.terminate_all()
        proxy.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _kms_proxy_port(host: ParentAgentHost) -> int:
    return int((host.spec.get("service") or {}).get("kms_proxy_port", prov.KMS_PROXY_PORT))


def _provision_probe(host: ParentAgentHost, vsock: EmulatedVsock) -> tuple[bool, str]:
    """Hand a probe enclave what the real one gets — the secrets, then the certificate — each
    on its own, so a denial of one cannot hide a release of the other."""
    creds = host.parent.role_credentials()
    sealed, _ = host.parent.sealed_secrets(creds)
    bundle = host.parent.certificate_bundle(creds)
    attempts: list[tuple[str, prov.CertificateBundle | None, tuple[prov.SecretSpec, ...]]] = []
    if sealed:
        attempts.append(("secrets", None, tuple(sealed)))
    if bundle is not None:
        attempts.append(("certificate key", bundle, ()))
    if not attempts:
        return False, "nothing sealed and no certificate: nothing to be denied"
    cid = int(host.enclave["EnclaveCID"])
    results = []
    for what, certificate, secrets_ in attempts:
        msg = prov.Provision(
            region=host.region,
            credentials=creds,
            kms_proxy_port=_kms_proxy_port(host),
            certificate=certificate,
            secrets=secrets_,
        )
        deadline = time.monotonic() + 30
        while True:  # the probe's control port comes up a moment after run-enclave returns
            try:
                with vsock.connect(cid, prov.CONTROL_PORT) as sock:
                    sock.settimeout(60)
                    reply = prov.exchange(sock, msg)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if not isinstance(reply, prov.ErrorReply):
            return False, f"the probe enclave obtained the {what}: {reply.to_json()}"
        items = [f"secret {s.name!r}" for s in secrets_] or ["certificate key"]
        keys = [secret_key_id(host, s.name) for s in secrets_] or [None]
        for item, key_id in zip(items, keys, strict=True):
            denied, why = _probe_denied(reply, item, key_id)
            if not denied:
                return False, f"could not check: {item}: {why}"
        results.append(f"{what} AccessDeniedException")
    return True, "KMS: " + ", ".join(results)


_PROBE_DENIED = "got AccessDeniedException: "


def _probe_denied(reply: prov.ErrorReply, item: str, key_id: str | None) -> tuple[bool, str]:
    """Did KMS itself deny the probe `item` (AccessDeniedException for `key_id`)? The probe's
    Error reply names each item it failed and KMS's answer for it; anything else (KMS
    unreachable, a bad request) is no evidence of a denial."""
    text = reply.message
    start = text.find(f"{item}: ")
    if reply.code != "KmsError" or start < 0:
        return False, f"the probe failed without a KMS answer: {reply.code}: {text[:200]}"
    end = min(
        (
            i
            for i in (text.find("; secret '", start + 1), text.find("; certificate key", start + 1))
            if i > 0
        ),
        default=len(text),
    )
    part = text[start + len(item) + 2 : end]
    if _PROBE_DENIED not in part:
        return False, f"KMS did not answer AccessDeniedException: {part[:200]}"
    if why := denied_other_resource(part, key_id, str(key_id)):
        return False, why
    return True, "AccessDeniedException"


def _image(host: ParentAgentHost, name: str) -> Path:
    """The host's EIF, fetched from its S3 asset with the instance role (as its user data's
    `aws s3 cp` did), into verify's own directory."""
    dest = host.state_dir / VERIFIER_DIR / f"{host.info['instance_id']}-{os.getpid()}-{name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    return host.parent.fetch_image(host.parent.role_credentials(), dest)


def check_debug_denied(host: ParentAgentHost) -> tuple[bool, str]:
    image = _image(host, "image.eif")
    try:
        with _probe_enclave(host, image, debug=True) as vsock:
            ok, detail = _provision_probe(host, vsock)
    finally:
        image.unlink(missing_ok=True)
    return ok, f"debug-mode enclave of the same image (PCR0 zero): {detail}" if ok else detail


def check_other_image_denied(host: ParentAgentHost) -> tuple[bool, str]:
    image = _image(host, "image.eif")
    variant = variant_image(image, image.with_name(image.name + ".variant"))
    image.unlink(missing_ok=True)
    try:
        pcr0 = eif.read_eif(variant).measurements.hex(0)
        with _probe_enclave(host, variant, debug=False) as vsock:
            ok, detail = _provision_probe(host, vsock)
    finally:
        variant.unlink(missing_ok=True)
    return ok, f"enclave of a different image (PCR0 {short(pcr0)}): {detail}" if ok else detail
