"""`enclavekit verify`: prove, for every enclave host of every deployed stack, the whole chain.

Every enclave-enabled instance (EnclaveOptions on it or its launch template) boots from its
user data; verify checks what each one runs. A host whose user data set up our parent agent
(the `/etc/enclavekit/host.json` it wrote names an image) gets, after `boot` (the user data
ran; else the failing command and the console's last lines):

1. image-pcrs       the enclave's fresh attestation document verifies against the local root, and
                    its PCRs are the image's and exactly those the attested key policies name;
2. secret           the enclave decrypted the application secret with attestation (it answers a
                    challenge: HMAC-SHA256 of a fresh nonce under the secret);
3. parent-denied    the same Decrypt from the parent, with the instance role but no attestation,
                    is denied (for the secret and for the certificate's private key);
   nsm-parent-refused  the enclave's NSM closes a parent-side process's connection unanswered;
4. debug-denied     a debug-mode enclave of the same image is denied;
   other-image-denied  an enclave of a different image (same app, one byte more) is denied;
5. https            an HTTPS request to the host's port gets a chain that verifies to the local
                    CA for the configured domain, and a response produced inside the enclave;
6. key-not-on-parent  the private key is not in the S3 object in plaintext, not in the
                    endpoint's state or logs, not in the parent-side processes' memory — and, as
                    a control that the search works, it IS found in the enclave's memory.

A check that cannot run counts as failed, with the reason: nothing is skipped silently.

Every other enclave-enabled instance, built with our constructs (an ACM agent host) or not, is
verified by what it runs (`local_backend.verify_hosts`): boot, enclaves and PCRs, attestation,
attested keys, parent denied, NSM refusal, HTTPS where an ACM certificate is served; a check
that does not apply there says why (N/A). Probe enclaves (debug-denied, other-image-denied)
run on the machine in a scratch emulator directory with the host's role and instance id (so
PCR3/PCR4 are the host's) and their own KMS vsock-proxy: the host's allocator pool holds
exactly its one enclave, as on EC2.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from botocore.exceptions import ClientError

from enclavekit import attestation, attested_kms, eif
from enclavekit import provisioning as prov
from enclavekit.cpio import CpioEntry, read_newc, write_newc
from enclavekit.errors import BackendError, EnclaveKitError, InvalidInput
from enclavekit.localenv import LOCAL_ACCOUNT, local_client
from enclavekit.pki import LocalPki
from enclavekit.policy import parse_policy
from enclavekit.transport import EmulatedVsock
from local_backend import server
from local_backend.host.layout import HostLayout

VERIFIER_DIR = "verifier"  # <state>/verifier/<stack>/<secret>.secret: up's reference copies


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    applies: bool = True  # False: the check does not apply to this host (`detail` says why)


@dataclass
class HostReport:
    stack: str
    logical_id: str
    instance_id: str
    enclave_id: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


@dataclass
class VerifyReport:
    hosts: list[HostReport]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and not self.problems and all(h.ok for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "hosts": [
                {
                    "stack": h.stack,
                    "logical_id": h.logical_id,
                    "instance_id": h.instance_id,
                    "enclave_id": h.enclave_id,
                    "ok": h.ok,
                    "checks": [c.__dict__ for c in h.checks],
                }
                for h in self.hosts
            ],
        }

    def table(self) -> str:
        rows = [("stack/host", "check", "result", "detail")]
        shared = Counter((h.stack, h.logical_id) for h in self.hosts)
        for h in self.hosts:
            # a fleet's instances share their launch template's logical id: name the instance
            label = f"{h.stack}/{h.logical_id}" + (
                f"/{h.instance_id}" if shared[(h.stack, h.logical_id)] > 1 else ""
            )
            for c in h.checks:
                result = "N/A" if not c.applies else "PASS" if c.ok else "FAIL"
                rows.append((label, c.name, result, c.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(widths[j]) for j in range(3)) + "  " + r[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        lines.extend(f"problem: {p}" for p in self.problems)
        passed = sum(c.ok and c.applies for h in self.hosts for c in h.checks)
        na = sum(not c.applies for h in self.hosts for c in h.checks)
        total = sum(len(h.checks) for h in self.hosts)
        lines.append(
            f"{passed} passed, {total - passed - na} failed"
            + (f", {na} did not apply" if na else "")
        )
        return "\n".join(lines)

    def to_junit(self) -> str:
        cases = []
        shared = Counter((h.stack, h.logical_id) for h in self.hosts)
        for h in self.hosts:
            fleet = f".{h.instance_id}" if shared[(h.stack, h.logical_id)] > 1 else ""
            for c in h.checks:
                detail = escape(c.detail, {'"': "&quot;"})
                body = (
                    f'<skipped message="{detail}"/>'
                    if not c.applies
                    else ""
                    if c.ok
                    else f'<failure message="{detail}"/>'
                )
                cases.append(
                    f'  <testcase classname="enclavekit.verify.{escape(h.stack)}.'
                    f'{escape(h.logical_id)}{fleet}" name="{escape(c.name)}" '
                    f'time="{c.seconds:.3f}">'
                    f"{body}</testcase>"
                )
        for p in self.problems:
            cases.append(
                f'  <testcase classname="enclavekit.verify" name="deployment">'
                f'<failure message="{escape(p, {chr(34): "&quot;"})}"/></testcase>'
            )
        failures = sum(not c.ok for h in self.hosts for c in h.checks) + len(self.problems)
        tests = sum(len(h.checks) for h in self.hosts) + len(self.problems)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuite name="enclavekit verify" tests="{tests}" failures="{failures}">\n'
            + "\n".join(cases)
            + "\n</testsuite>\n"
        )


# ---------------------------------------------------------------------------------------------


class _Host:
    """What verify knows of one enclave host running our parent agent (booted from its user
    data): the host.json its user data wrote (`spec`), its enclave (describe-enclaves inside
    the host), the agent's AWS calls with the instance role (`parent`)."""

    def __init__(self, layout: HostLayout, state_dir: Path) -> None:
        from local_backend.parent.view import AgentHost
        from local_backend.verify_hosts import UserDataHost

        self.layout = layout
        self.dir = layout.dir
        self.state_dir = state_dir
        self.parent = AgentHost(layout)  # the agent's AWS calls; boots nothing
        self.h = UserDataHost(layout, state_dir)  # for the checks verify_hosts shares
        self.info = self.parent.info
        self.spec = self.parent.spec
        self.state = self.parent.state()
        self.enclave = self.state["enclave"]
        self.h.enclaves = [self.enclave] if self.enclave.get("State") == "RUNNING" else []
        self.endpoint = self.info["endpoint"]
        self.region = self.info["region"]
        self._resources: dict[str, str] | None = None

    def client(self, service: str, creds: prov.Credentials | None = None) -> Any:
        return self.parent.client(service, creds)

    def physical_id(self, logical_id: str) -> str:
        if self._resources is None:
            cfn = self.client("cloudformation")
            rows = cfn.describe_stack_resources(StackName=self.info["stack_name"])
            self._resources = {
                r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in rows["StackResources"]
                if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
            }
        try:
            return self._resources[logical_id]
        except KeyError:
            raise EnclaveKitError(
                f"stack {self.info['stack_name']} has no deployed resource {logical_id}"
            ) from None

    def control(
        self, request: prov.Message, *, cid: int | None = None, timeout: float = 60
    ) -> prov.Message:
        return self.parent.control(
            request, cid=cid or int(self.enclave["EnclaveCID"]), timeout=timeout
        )


def _timed(name: str, fn: Callable[[], tuple[bool, str]]) -> Check:
    start = time.monotonic()
    try:
        ok, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with its reason
        ok, detail = False, f"could not check: {type(exc).__name__}: {exc}"
    return Check(name, ok, detail.replace("\n", " "), round(time.monotonic() - start, 3))


def _short(hex_value: str) -> str:
    return f"{hex_value[:8]}…"


# -------------------------------------------------------------------------- 1. image and PCRs


def _bound_pcrs(policy_text: str, role_arn: str | None) -> dict[str, set[str]]:
    """PCR condition values (lower-case) of the Allow statements that grant the host role
    (`role_arn`) under attestation keys: what the key releases to this host's enclave."""
    bound: dict[str, set[str]] = {}
    if role_arn is None:
        return bound
    for b in attested_kms.bindings(parse_policy(policy_text), principal=role_arn):
        if b.effect == "Allow":
            bound.setdefault(f"PCR{b.pcr}", set()).update(v.lower() for v in b.values)
    return bound


def check_image(host: _Host) -> tuple[bool, str]:
    nonce = secrets.token_bytes(32)
    reply = host.control(prov.Attest(nonce=nonce))
    if not isinstance(reply, prov.AttestResult):
        return False, f"the enclave did not attest: {reply.to_json()}"
    doc = attestation.verify(reply.document, LocalPki.load_or_create(host.state_dir).trust_anchor())
    if doc.nonce != nonce:
        return False, "the attestation document does not carry our nonce (replayed?)"
    if doc.module_id != host.enclave.get("EnclaveID"):
        return False, f"document module_id {doc.module_id} is not the enclave {host.enclave}"
    want = {k: v.lower() for k, v in (host.spec.get("image") or {}).get("measurements", {}).items()}
    got = {f"PCR{i}": doc.pcrs[i].hex() for i in (0, 1, 2) if i in doc.pcrs}
    for name in ("PCR0", "PCR1", "PCR2"):
        if got.get(name) != want.get(name):
            return False, (
                f"enclave {name} {_short(got.get(name, '-'))} is not the image's "
                f"{_short(want.get(name, '-'))}"
            )
    keys = host.spec.get("attested_keys") or []
    if not keys:
        return False, "the host's Metadata names no attested key: nothing binds these PCRs"
    kms = host.client("kms")
    bound_names: list[str] = []
    for logical in keys:
        key_id = host.physical_id(logical)
        policy = kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
        bound = _bound_pcrs(
            policy if isinstance(policy, str) else json.dumps(policy),
            (host.info.get("role_arns") or [None])[0],
        )
        if not bound:
            return False, (
                f"key {logical} grants the host role nothing under a "
                "kms:RecipientAttestation condition"
            )
        for name, values in sorted(bound.items()):
            index = int(name[3:])
            actual = doc.pcrs.get(index, b"").hex()
            if values != {actual}:
                shown = ", ".join(sorted(_short(v) for v in values))
                return False, (
                    f"key {logical} binds {name} to {shown}; the enclave has {_short(actual)}"
                )
        bound_names.append(f"{logical}({','.join(sorted(bound))})")
    return True, (
        f"PCR0 {_short(got['PCR0'])} attested (local root, fresh nonce) = image = "
        f"policy of {', '.join(bound_names)}"
    )


# -------------------------------------------------------------------------- 2. the secret


def reference_secret(state_dir: Path, stack: str, name: str) -> bytes | None:
    path = state_dir / VERIFIER_DIR / stack / f"{name}.secret"
    return path.read_bytes() if path.is_file() else None


def check_secret(host: _Host) -> tuple[bool, str]:
    names = [s["name"] for s in host.spec.get("secrets") or []]
    if not names:
        return False, "the host's Metadata declares no application secret to check"
    done = []
    for name in names:
        ref = reference_secret(host.state_dir, host.info["stack_name"], name)
        if ref is None:
            return False, (
                f"secret {name!r}: no reference copy under {VERIFIER_DIR}/ "
                "(sealed outside `enclavekit up`), cannot challenge the enclave"
            )
        nonce = secrets.token_bytes(32)
        reply = host.control(prov.Challenge(name=name, nonce=nonce))
        if not isinstance(reply, prov.ChallengeAnswer):
            return False, f"secret {name!r}: the enclave does not hold it: {reply.to_json()}"
        if not hmac.compare_digest(reply.mac, hmac.new(ref, nonce, hashlib.sha256).digest()):
            return False, f"secret {name!r}: the enclave's answer does not match the secret"
        done.append(name)
    return True, f"{', '.join(done)}: HMAC challenge answered from inside the enclave"


# -------------------------------------------------------------------------- 3. parent denied


def _denied(call: Callable[[], Any], key_id: str | None) -> tuple[bool, str]:
    """Did KMS itself answer AccessDeniedException for `key_id` (any key if None)? The only
    evidence of a denial: any other error (unreachable, bad ciphertext...) proves nothing."""
    try:
        call()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code, message = str(err.get("Code", "")), str(err.get("Message", ""))
        if code != "AccessDeniedException":
            return False, f"could not check: KMS answered {code or 'no error code'}: {message}"
        resource = message.partition(" on resource: ")[2].split(" ", 1)[0]
        if not resource.startswith("arn:aws:kms:") or (key_id and key_id not in resource):
            return False, (
                f"could not check: AccessDeniedException for {resource or 'no resource'}, "
                f"not for key {key_id or '(any KMS key)'}"
            )
        return True, code
    return False, "ALLOWED"


def check_parent_denied(host: _Host) -> tuple[bool, str]:
    creds = host.parent.role_credentials()
    kms = host.client("kms", creds)
    results = []
    secrets_, _ = host.parent.sealed_secrets(creds)
    for spec in secrets_:
        key_id = _secret_key_id(host, spec.name)
        ok, what = _denied(lambda s=spec: kms.decrypt(CiphertextBlob=s.ciphertext), key_id)
        if not ok:
            if what != "ALLOWED":
                return False, f"secret {spec.name!r}: {what}"
            return False, (
                f"the parent decrypted secret {spec.name!r} with the instance role "
                f"and no attestation: the key policy does not bind it"
            )
        results.append(spec.name)
    bundle = host.parent.certificate_bundle(creds)
    if bundle is not None:
        ok, what = _denied(lambda: kms.decrypt(CiphertextBlob=bundle.private_key_ciphertext), None)
        if not ok:
            if what != "ALLOWED":
                return False, f"certificate key: {what}"
            return False, "the parent decrypted the certificate's private key (ALLOWED)"
        results.append("certificate key")
    if not results:
        return False, "nothing sealed to try"
    return True, f"Decrypt without attestation: AccessDeniedException for {', '.join(results)}"


def _secret_key_id(host: _Host, name: str) -> str | None:
    """The KMS key id the host's Metadata seals secret `name` under (None if undeclared)."""
    for s in host.spec.get("secrets") or []:
        if s.get("name") == name and s.get("key"):
            return host.physical_id(s["key"]).rsplit("/", 1)[-1]
    return None


def check_nsm_parent_refused(host: _Host) -> tuple[bool, str]:
    """A parent-side process *inside the host* (root of its parent side) asking the enclave's
    NSM for a document with its own public key gets nothing, and the NSM logs refusing it."""
    from local_backend.verify_hosts import check_nsm_parent_refused as in_host

    return in_host(host.h)


# -------------------------------------------------------------------------- 4. other enclaves


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
def _probe_enclave(host: _Host, eif_path: Path, *, debug: bool) -> Iterator[EmulatedVsock]:
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


def _kms_proxy_port(host: _Host) -> int:
    return int((host.spec.get("service") or {}).get("kms_proxy_port", prov.KMS_PROXY_PORT))


def _provision_probe(host: _Host, vsock: EmulatedVsock) -> tuple[bool, str]:
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
        keys = [_secret_key_id(host, s.name) for s in secrets_] or [None]
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
    resource = part.partition(" on resource: ")[2].split(" ", 1)[0]
    if not resource.startswith("arn:aws:kms:") or (key_id and key_id not in resource):
        return False, f"AccessDeniedException for {resource or 'no resource'}, not for {key_id}"
    return True, "AccessDeniedException"


def _image(host: _Host, name: str) -> Path:
    """The host's EIF, fetched from its S3 asset with the instance role (as its user data's
    `aws s3 cp` did), into verify's own directory."""
    dest = host.state_dir / VERIFIER_DIR / f"{host.info['instance_id']}-{os.getpid()}-{name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    return host.parent.fetch_image(host.parent.role_credentials(), dest)


def check_debug_denied(host: _Host) -> tuple[bool, str]:
    image = _image(host, "image.eif")
    try:
        with _probe_enclave(host, image, debug=True) as vsock:
            ok, detail = _provision_probe(host, vsock)
    finally:
        image.unlink(missing_ok=True)
    return ok, f"debug-mode enclave of the same image (PCR0 zero): {detail}" if ok else detail


def check_other_image_denied(host: _Host) -> tuple[bool, str]:
    image = _image(host, "image.eif")
    variant = variant_image(image, image.with_name(image.name + ".variant"))
    image.unlink(missing_ok=True)
    try:
        pcr0 = eif.read_eif(variant).measurements.hex(0)
        with _probe_enclave(host, variant, debug=False) as vsock:
            ok, detail = _provision_probe(host, vsock)
    finally:
        variant.unlink(missing_ok=True)
    return ok, f"enclave of a different image (PCR0 {_short(pcr0)}): {detail}" if ok else detail


# -------------------------------------------------------------------------- 5. HTTPS


def check_https(host: _Host) -> tuple[bool, str]:
    domain = (host.spec.get("service") or {}).get("domain")
    port = host.state.get("relay_port")
    if not domain or not port:
        if reason := _certificate_not_held(host):
            return False, reason
        return False, (
            f"host has no domain ({domain}) or no machine port forwarded to its service port "
            f"{(host.spec.get('service') or {}).get('port')} (its security groups let nothing in)"
        )
    ca = server.ca_pem(host.state_dir)
    ctx = ssl.create_default_context(cadata=ca.decode())
    nonce = secrets.token_hex(8)
    try:
        with (
            socket.create_connection(("127.0.0.1", int(port)), timeout=15) as raw,
            ctx.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            request = f"GET /verify/{nonce} HTTP/1.1\r\nHost: {domain}\r\nConnection: close"
            tls.sendall(f"{request}\r\n\r\n".encode())
            data = b""
            version = tls.version()
            while chunk := tls.recv(65536):
                data += chunk
    except OSError:  # ssl.SSLError too: no handshake. Does the enclave say why?
        reason = _certificate_not_held(host)
        if reason is None:
            raise
        return False, reason
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return False, f"HTTP answer {head[:40]!r}"
    answer = json.loads(body)
    if answer.get("enclave_module_id") != host.enclave.get("EnclaveID"):
        return False, f"answered by {answer.get('enclave_module_id')}, not the enclave"
    if nonce not in answer.get("path", ""):
        return False, "the response does not echo our request"
    return True, (
        f"{version} to {domain} via 127.0.0.1:{port}: chain verifies to the local CA; "
        f"served by enclave {answer['enclave_module_id'][-8:]}"
    )


# -------------------------------------------------------------------------- 6. key not on parent


def check_key_not_on_parent(host: _Host) -> tuple[bool, str]:
    from local_backend.verify_hosts import _host_processes

    cert = host.spec.get("certificate")
    if not cert:
        return False, "the host has no certificate"
    # every process of the host's own PID namespace (the agent, socat, systemd's stand-in...)
    # is parent side; those in the enclaves' nested namespaces are the control
    pids, enclave_pids = _host_processes(host.h)
    # The S3 object as the parent downloads it, searched by the endpoint too.
    creds = host.parent.role_credentials()
    bundle = host.parent.certificate_bundle(creds)
    if bundle is None:
        return False, "could not check: the host's certificate bundle is not in S3"
    s3_copy = host.dir / "verify-s3-object.json"
    s3_copy.write_text(json.dumps(bundle.to_json()))
    try:
        req = {
            "certificate_arn": cert["arn"],
            "account_id": LOCAL_ACCOUNT,
            "region": host.region,
            "paths": [str(host.state_dir)],
            "pids": [*pids, *enclave_pids],
        }
        result = _endpoint_keyscan(host.endpoint, req, host.state_dir)
    finally:
        s3_copy.unlink(missing_ok=True)
    if "error" in result:
        return False, f"the key search failed: {result['error']}"
    leaks = [f"{h['where']} ({h['form']})" for h in result["file_hits"]]
    for pid in pids:
        proc = result["processes"].get(str(pid), {})
        leaks += [f"pid {pid}: {h['where']} ({h['form']})" for h in proc.get("hits", [])]
    if leaks:
        return False, "private key found on the parent side: " + "; ".join(leaks[:4])
    control = [result["processes"].get(str(p), {}) for p in enclave_pids]
    if not any(c.get("hits") for c in control) and (reason := _certificate_not_held(host)):
        return False, reason
    if not any(c.get("hits") for c in control):
        errors = "; ".join(c["error"] for c in control if "error" in c) or "no hits"
        return False, (
            "the search did not find the key in the enclave either, so its absence "
            f"elsewhere proves nothing ({errors})"
        )
    mib = sum(p.get("bytes_read", 0) for p in result["processes"].values()) >> 20
    return True, (
        f"absent from S3 object, {result['files_read']} state/log files and "
        f"{len(pids)} parent-side processes of the host; found only in the enclave "
        f"({mib} MiB of memory searched)"
    )


def _certificate_not_held(host: _Host) -> str | None:
    """Why the enclave holds no certificate key, when its Status says it holds none. An image
    of ours that claims ACM's certificate (set-up C) ends here on AWS too: ACM releases the key
    only to its own enclave image, so the image's Decrypt is AccessDeniedException."""
    try:
        status = host.control(prov.Status(), timeout=15)
    except (OSError, EnclaveKitError):
        return None
    if not isinstance(status, prov.StatusReport) or status.certificate_sha256:
        return None
    return f"the enclave holds no certificate key ({status.state}): {status.last_error}"


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the enclave's process tree, seen from the host)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _endpoint_keyscan(endpoint: str, req: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    body = json.dumps(req).encode()
    r = urllib.request.Request(
        endpoint + server.KEYSCAN_PATH,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            server.ADMIN_TOKEN_HEADER: server.admin_token(state_dir),
        },
    )
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b'{"error": "HTTP error"}')


# -------------------------------------------------------------------------- driver

TLS_CHECKS = ("https", "key-not-on-parent")


def _not_applicable(name: str, host: _Host) -> str | None:
    """Why check `name` does not apply to `host`, or None when it does.

    A host whose image holds secrets but no certificate (set-up B) serves no TLS: there is no
    HTTPS to try and no certificate key to search for."""
    if name in TLS_CHECKS and not host.spec.get("certificate"):
        return "no certificate is associated with this host (its image serves no TLS)"
    return None


def check_boot(host: _Host) -> tuple[bool, str]:
    """The user data ran to completion (the driver runs it first and stops on a failure)."""
    from local_backend.verify_hosts import boot_check

    c = boot_check(host.h)
    return c.ok, c.detail


CHECKS: tuple[tuple[str, Callable[[_Host], tuple[bool, str]]], ...] = (
    ("boot", check_boot),
    ("image-pcrs", check_image),
    ("secret", check_secret),
    ("parent-denied", check_parent_denied),
    ("nsm-parent-refused", check_nsm_parent_refused),
    ("debug-denied", check_debug_denied),
    ("other-image-denied", check_other_image_denied),
    ("https", check_https),
    ("key-not-on-parent", check_key_not_on_parent),
)


def deployed_stacks(state_dir: Path) -> list[str]:
    try:
        endpoint = server.running_endpoint(state_dir).endpoint
    except BackendError:
        raise BackendError(
            f"the local endpoint of {Path(state_dir).resolve()} is not running, so nothing is "
            "deployed to verify: deploy with `enclavekit up` (it starts the endpoint)"
        ) from None
    cfn = local_client("cloudformation", endpoint)
    done = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
    return [
        s["StackName"]
        for s in cfn.describe_stacks()["Stacks"]
        if s["StackStatus"] in done and s["StackName"] != "CDKToolkit"
    ]


def _running_instances(state_dir: Path) -> set[str]:
    ec2 = local_client("ec2", server.running_endpoint(state_dir).endpoint)
    return {
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    }


def verify_agent_host(
    layout: HostLayout,
    state_dir: Path,
    checks: Sequence[str] | None = None,
    on_check: Callable[[HostReport, Check], None] | None = None,
) -> HostReport:
    """The checks of `CHECKS` on one host running our parent agent, in order: a failed boot,
    an enclave that is not running or one not provisioned is reported first."""
    from local_backend.verify_hosts import OPT_IN, boot_check

    host = _Host(layout, state_dir)
    hr = HostReport(
        stack=host.info.get("stack_name") or "(no stack)",
        logical_id=host.info.get("logical_id") or host.info["instance_id"],
        instance_id=host.info["instance_id"],
        enclave_id=host.enclave.get("EnclaveID"),
    )

    def add(check: Check) -> None:
        hr.checks.append(check)
        if on_check:
            on_check(hr, check)

    boot = boot_check(host.h)
    if not boot.ok:
        add(boot)
        return hr
    enclave_state = host.state["enclave_state"]
    if enclave_state != "RUNNING":
        add(
            Check(
                "enclave",
                False,
                f"enclave {hr.enclave_id or '(none)'} is {enclave_state}: "
                f"{host.enclave.get('ExitReason') or 'not listed'} (nitro-cli describe-enclaves "
                f"in the host, CID {host.parent.cid}); `enclavekit up` starts it again",
            )
        )
        return hr
    if not host.state["provisioned"]:
        why = host.state["last_error"] or host.state["journal"] or host.state["enclave_status"]
        add(Check("provisioned", False, f"the enclave was not provisioned: {why}"))
    for name, fn in CHECKS:
        if checks and name not in checks:
            continue
        if name == "boot":
            add(boot)
            continue
        why_not = _not_applicable(name, host)
        add(
            Check(name, True, f"does not apply: {why_not}", applies=False)
            if why_not
            else _timed(name, lambda fn=fn, host=host: fn(host))
        )
    for name in [n for n in checks or () if n in OPT_IN]:  # verify_hosts' opt-in checks
        add(Check(name, True, "does not apply: the host's image terminates TLS itself, no ACM "
                  "agent renews", applies=False))  # fmt: skip
    return hr


def verify(
    state_dir: Path,
    *,
    stack: str | None = None,
    checks: Sequence[str] | None = None,
    on_check: Callable[[HostReport, Check], None] | None = None,
) -> VerifyReport:
    """Run every check (or those named in `checks`) on every enclave host of the deployed
    stacks (or of `stack`)."""
    state_dir = Path(state_dir).resolve()
    from local_backend.verify_hosts import CHECKS as HOST_CHECKS

    known = [name for name, _ in CHECKS]
    known += [name for name, _ in HOST_CHECKS if name not in known]
    unknown = sorted(set(checks or ()) - set(known))
    if unknown:
        raise InvalidInput(f"--check: expected some of {', '.join(known)}, found {unknown}")
    stacks = deployed_stacks(state_dir)
    if stack is not None:
        if stack not in stacks:
            raise InvalidInput(
                f"--stack: expected one of the deployed stacks {stacks}, found {stack!r}"
            )
        stacks = [stack]
    live = _running_instances(state_dir)
    report = VerifyReport(hosts=[])
    from local_backend.parent.view import agent_config
    from local_backend.verify_hosts import enclave_enabled_hosts, verify_host

    # Every enclave-enabled instance, booted from its user data: ours (the agent's host.json
    # names an image, and its stack resolves the key and secret names in it) by the chain
    # above, any other by what it runs.
    for layout in enclave_enabled_hosts(state_dir, None if stack is None else stacks, live):
        info = layout.read_info()
        if info.get("stack_name") is not None and info["stack_name"] not in stacks:
            continue  # a stack not (or no longer) deployed
        if info.get("stack_name") and (agent_config(layout) or {}).get("image"):
            report.hosts.append(verify_agent_host(layout, state_dir, checks, on_check))
        else:
            report.hosts.append(verify_host(layout, state_dir, checks, on_check))
    covered = {h.stack for h in report.hosts}
    report.problems.extend(
        f"stack {s}: no enclave host found to verify" for s in stacks if s not in covered
    )
    return report
