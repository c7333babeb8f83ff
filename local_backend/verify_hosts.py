"""`enclavekit verify` for instances booted from their user data: every enclave-enabled host.

Such a host need not be ours: nothing here reads enclavekit Metadata. What verify checks is what
the host runs, as seen from outside (the `local_backend.host.hooks` reader interface):

  boot               the user data ran and succeeded (else: the failing command, its status and
                     the console's last lines);
  enclaves           `nitro-cli describe-enclaves` inside the host: each RUNNING, with its PCRs;
  attestation        each enclave's fresh attestation document (its control port, vsock 5005)
                     verifies to the local root: our nonce, its own module id, the PCR0-2
                     nitro-cli reports, PCR3 of the instance role and PCR4 of the instance;
  keys               every KMS key whose policy grants the host role under
                     kms:RecipientAttestation conditions binds the PCRs an enclave here has;
  parent-denied      Decrypt under those keys with the instance role and no attestation is
                     AccessDeniedException;
  nsm-parent-refused a parent-side process of the host asking an enclave's NSM gets nothing;
  https, key-not-on-parent  where an ACM certificate is associated with the host role.

A check that does not apply says why (`Check.applies` False); one that cannot run fails.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclavekit import attestation, pcr
from enclavekit import provisioning as prov
from enclavekit.errors import CheckFailed
from enclavekit.localenv import local_client
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend.host import control, hooks
from local_backend.host.layout import HOST_EMULATOR_STATE, HostLayout
from local_backend.verify import Check, HostReport, _bound_pcrs, _denied, _short, _timed

CONSOLE_LINES = 8  # of a failed boot's console, in its check's detail
CheckFn = Callable[["UserDataHost"], tuple[bool, str] | Check]


class UserDataHost:
    """What verify knows of one running instance host (host.json, instance.json, its enclaves)."""

    def __init__(self, layout: HostLayout, state_dir: Path) -> None:
        self.layout = layout
        self.state_dir = state_dir
        self.info = layout.read_info()
        self.host = layout.read_host()
        self.region: str = self.info["region"]
        self.endpoint: str = self.info["endpoint"]
        self.role_arn: str | None = (self.info.get("role_arns") or [None])[0]
        self.enclaves: list[dict[str, Any]] = []
        self.documents: dict[str, attestation.AttestationDocument] = {}  # by EnclaveID
        self._creds: Any = None

    @property
    def vsock(self) -> EmulatedVsock:
        """The host's emulated vsock as its parent side (CID 3) sees it, from the machine."""
        root = Path(f"/proc/{self.host.get('init_pid')}/root{HOST_EMULATOR_STATE}/vsock")
        return EmulatedVsock(root, PARENT_CID)

    def client(self, service: str, creds: prov.Credentials | None = None) -> Any:
        if creds is None:
            return local_client(service, self.endpoint, region=self.region)
        return local_client(
            service,
            self.endpoint,
            region=self.region,
            access_key_id=creds.access_key_id,
            secret_access_key=creds.secret_access_key,
            session_token=creds.session_token,
        )

    def role_credentials(self) -> prov.Credentials:
        """The instance role's credentials, as the host's IMDS hands them out."""
        from local_backend.parent.agent import AssumeRoleCredentials, ec2_sts

        if self._creds is None:
            self._creds = AssumeRoleCredentials(
                lambda: ec2_sts(self.endpoint, self.region),
                self.role_arn,
                self.info["instance_id"],
            )
        return self._creds.credentials()

    def control(self, cid: int, request: prov.Message, timeout: float = 30) -> prov.Message:
        with self.vsock.connect(cid, prov.CONTROL_PORT) as sock:
            sock.settimeout(timeout)
            return prov.exchange(sock, request)


def _not_applicable(name: str, why: str) -> Check:
    return Check(name, True, f"does not apply: {why}", applies=False)


# -------------------------------------------------------------------------- boot and enclaves


def boot_check(h: UserDataHost) -> Check:
    host = h.host
    error = control.boot_error(host)
    if error is None and (host.get("boot") or {}).get("state") == "done":
        return Check("boot", True, "user data ran to completion (cloud-init: done)")
    if error is None:
        return Check("boot", False, f"user data still running (host {host.get('state')})")
    try:
        tail = h.layout.console.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        tail = []
    last = " | ".join(line.strip() for line in tail[-CONSOLE_LINES:] if line.strip())
    return Check("boot", False, f"{error}; console: {last or '(empty)'}")


def check_enclaves(h: UserDataHost) -> tuple[bool, str]:
    h.enclaves = hooks.host_enclaves(h.layout)
    if not h.enclaves:
        return False, "nitro-cli describe-enclaves lists no enclave: the user data started none"
    parts, ok = [], True
    for e in h.enclaves:
        m = e.get("Measurements") or {}
        parts.append(
            f"{e.get('EnclaveID')} CID {e.get('EnclaveCID')} {e.get('State')} "
            f"PCR0 {_short(str(m.get('PCR0', '-')))}"
        )
        ok = ok and e.get("State") == "RUNNING"
    return ok, "; ".join(parts)


def _running(h: UserDataHost) -> list[dict[str, Any]]:
    return [e for e in h.enclaves if e.get("State") == "RUNNING"]


def check_attestation(h: UserDataHost) -> tuple[bool, str] | Check:
    anchor = attestation.TrustAnchor.local(h.state_dir)
    done, silent = [], []
    for e in _running(h):
        eid, cid = str(e["EnclaveID"]), int(e["EnclaveCID"])
        nonce = secrets.token_bytes(32)
        try:
            reply = h.control(cid, prov.Attest(nonce=nonce))
        except (ConnectionRefusedError, FileNotFoundError):
            silent.append(eid)
            continue
        if not isinstance(reply, prov.AttestResult):
            return False, f"enclave {eid} did not attest: {reply.to_json()}"
        doc = attestation.verify(reply.document, anchor)
        if doc.nonce != nonce:
            return False, f"enclave {eid}: the document does not carry our nonce (replayed?)"
        if doc.module_id != eid:
            return False, f"document module_id {doc.module_id} is not the enclave {eid}"
        want = {i: str((e.get("Measurements") or {}).get(f"PCR{i}", "")).lower() for i in (0, 1, 2)}
        if h.role_arn:
            want[3] = pcr.pcr3_of_role_arn(h.role_arn).hex()
        want[4] = pcr.pcr4_of_instance_id(h.info["instance_id"]).hex()
        for i, value in want.items():
            if doc.pcrs.get(i, b"").hex() != value:
                return False, (
                    f"enclave {eid}: attested PCR{i} {_short(doc.pcrs.get(i, b'').hex() or '-')}"
                    f" is not {_short(value or '-')}"
                )
        h.documents[eid] = doc
        done.append(eid)
    if not done:
        return _not_applicable(
            "attestation",
            f"enclave(s) {', '.join(silent)} answer nothing on vsock port "
            f"{prov.CONTROL_PORT} (not an enclavekit image): their PCRs are nitro-cli's",
        )
    more = f"; {', '.join(silent)} answer nothing on port 5005" if silent else ""
    return True, (
        f"{', '.join(done)}: fresh document verifies to the local root; PCR0-2 = "
        f"describe-enclaves, PCR3 = instance role, PCR4 = instance{more}"
    )


# -------------------------------------------------------------------------- keys


def _attested_keys(h: UserDataHost) -> dict[str, dict[str, set[str]]]:
    """key ARN -> the PCR values its policy releases to the host role under attestation."""
    kms = h.client("kms")
    out: dict[str, dict[str, set[str]]] = {}
    for page in kms.get_paginator("list_keys").paginate():
        for k in page["Keys"]:
            policy = kms.get_key_policy(KeyId=k["KeyId"], PolicyName="default")["Policy"]
            text = policy if isinstance(policy, str) else json.dumps(policy)
            bound = _bound_pcrs(text, h.role_arn)
            if bound:
                out[k["KeyArn"]] = bound
    return out


def _enclave_pcrs(h: UserDataHost, e: dict[str, Any]) -> dict[str, str]:
    doc = h.documents.get(str(e["EnclaveID"]))
    if doc is not None:
        return {f"PCR{i}": v.hex() for i, v in doc.pcrs.items()}
    m = {k: str(v).lower() for k, v in (e.get("Measurements") or {}).items()}
    if h.role_arn:
        m["PCR3"] = pcr.pcr3_of_role_arn(h.role_arn).hex()
    m["PCR4"] = pcr.pcr4_of_instance_id(h.info["instance_id"]).hex()
    return m


def check_keys(h: UserDataHost) -> tuple[bool, str] | Check:
    keys = _attested_keys(h)
    if not keys:
        return _not_applicable(
            "keys", "no KMS key policy grants the host role under kms:RecipientAttestation"
        )
    running = [_enclave_pcrs(h, e) for e in _running(h)]
    parts = []
    for arn, bound in sorted(keys.items()):
        key = arn.rsplit("/", 1)[-1]
        if not any(all(have.get(n) in vals for n, vals in bound.items()) for have in running):
            shown = ", ".join(f"{n} {_short(min(v))}" for n, v in sorted(bound.items()))
            return False, f"key {key} releases to {shown}: no enclave of this host has them"
        parts.append(f"{key}({','.join(sorted(bound))})")
    return True, f"bound to an enclave running here: {', '.join(parts)}"


def check_parent_denied(h: UserDataHost) -> tuple[bool, str] | Check:
    keys = _attested_keys(h)
    if not keys and _acm_tokens(h):
        return _association_key_denied(h)
    if not keys:
        return _not_applicable(
            "parent-denied", "no KMS key grants the host role under attestation conditions"
        )
    creds = h.role_credentials()
    root_kms, role_kms = h.client("kms"), h.client("kms", creds)
    tried = []
    for arn in sorted(keys):
        key = arn.rsplit("/", 1)[-1]
        blob = None
        for kms in (root_kms, role_kms):
            try:
                out = kms.encrypt(KeyId=arn, Plaintext=b"enclavekit verify probe")
                blob = out["CiphertextBlob"]
                break
            except Exception:  # noqa: BLE001 - denied Encrypt: try the other principal
                continue
        if blob is None:
            return False, (
                f"could not check: neither the account root nor the host role may Encrypt "
                f"under key {key}, so there is no ciphertext to try"
            )
        ok, what = _denied(lambda b=blob: role_kms.decrypt(CiphertextBlob=b), key)
        if not ok:
            if what == "ALLOWED":
                return False, f"the instance role decrypted under key {key} without attestation"
            return False, f"key {key}: {what}"
        tried.append(key)
    return True, f"Decrypt without attestation: AccessDeniedException for {', '.join(tried)}"


def _association_key_denied(h: UserDataHost) -> tuple[bool, str]:
    """An ACM agent host (set-up A): the role's credentials, as the host's IMDS gives them to
    any parent-side process, read the association's S3 object but cannot decrypt the
    certificate's key in it — ACM releases it only to its own attested enclave image."""
    import base64

    creds = h.role_credentials()
    kms = h.client("kms", creds)
    done = []
    for token in _acm_tokens(h):
        arn = token.source.certificate_arn
        roles = h.client("ec2").get_associated_enclave_certificate_iam_roles(  # verify asks
            CertificateArn=arn
        )["AssociatedRoles"]
        mine = [r for r in roles if r.get("AssociatedRoleArn") == h.role_arn]
        if not mine:
            return False, f"certificate {arn.rsplit('/', 1)[-1]} is not associated with the role"
        obj = h.client("s3", creds).get_object(
            Bucket=mine[0]["CertificateS3BucketName"], Key=mine[0]["CertificateS3ObjectKey"]
        )
        sealed = json.loads(obj["Body"].read())
        blob = base64.b64decode(sealed["encryptedPrivateKey"])
        ok, what = _denied(lambda b=blob: kms.decrypt(CiphertextBlob=b), None)
        if not ok:
            if what == "ALLOWED":
                return (
                    False,
                    "the instance role decrypted the certificate's key without attestation",
                )
            return False, f"certificate key: {what}"
        done.append(token.label)
    return True, (
        "Decrypt of the association's certificate key with the instance role, no attestation: "
        f"AccessDeniedException ({', '.join(done)})"
    )


# -------------------------------------------------------------------------- NSM

# Run inside the host (as root of its parent side): ask the enclave's NSM for a document with
# our own public key; print what happened and whether the NSM logged refusing this process.
_NSM_PROBE = """
import json, os, secrets, sys, time
from enclavekit import nsm
from enclavekit.errors import EnclaveKitError
from enclavekit.transport import SocketNsm, nsm_request
from local_backend.emulator.state import Layout, state_dir
layout = Layout(state_dir(sys.argv[1]))
slot = layout.slot_dir(layout.slot_of(sys.argv[2]))
log = slot / "monitor.log"
seen = log.stat().st_size if log.is_file() else 0
client = SocketNsm(slot / "nsm.sock")
out = {"pid": os.getpid()}
try:
    reply = nsm_request(client, nsm.Attestation(nonce=secrets.token_bytes(16),
                                                public_key=secrets.token_bytes(64)))
    out["answered"] = type(reply).__name__
except EnclaveKitError as exc:
    out["error"] = str(exc)
finally:
    client.close()
mine = "refused a connection to nsm.sock from pid %d " % os.getpid()
deadline = time.monotonic() + 3
while True:
    with open(log, "rb") as fh:
        fh.seek(seen)
        out["logged"] = mine in fh.read().decode(errors="replace")
    if out["logged"] or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(json.dumps(out))
"""


def check_nsm_parent_refused(h: UserDataHost) -> tuple[bool, str]:
    results = []
    for e in _running(h):
        eid = str(e["EnclaveID"])
        run = control.host_exec(
            h.layout, [sys.executable, "-c", _NSM_PROBE, HOST_EMULATOR_STATE, eid], timeout=60
        )
        if run.returncode != 0:
            return False, f"could not check: the probe in the host failed: {run.stderr[-300:]}"
        out = json.loads(run.stdout.strip().splitlines()[-1])
        if "answered" in out:
            return False, f"enclave {eid}'s NSM answered a parent-side process: {out['answered']}"
        if "expected a listening socket" in out.get("error", ""):
            return False, f"could not check: enclave {eid}'s NSM socket does not answer"
        if not out.get("logged"):
            return False, (
                f"could not check: enclave {eid}'s NSM closed without a reply to pid "
                f"{out['pid']} but recorded no refusal of it"
            )
        results.append(f"{eid} (pid {out['pid']} in the host)")
    return True, f"closed unanswered, refusal in the monitor log: {', '.join(results)}"


# -------------------------------------------------------------------------- TLS


def _associated_certificates(h: UserDataHost) -> list[str]:
    """ACM certificates associated with the host role (ACM for Nitro Enclaves)."""
    acm, ec2 = h.client("acm"), h.client("ec2")
    out = []
    for c in acm.list_certificates().get("CertificateSummaryList", []):
        arn = c["CertificateArn"]
        roles = ec2.get_associated_enclave_certificate_iam_roles(CertificateArn=arn)
        if any(r.get("AssociatedRoleArn") == h.role_arn for r in roles["AssociatedRoles"]):
            out.append(arn)
    return out


def check_tls(h: UserDataHost) -> list[Check]:
    """https and key-not-on-parent apply where the host serves an ACM certificate."""
    certs = _associated_certificates(h)
    if not certs:
        why = "no ACM certificate is associated with the host role: the host serves no TLS of ours"
        return [_not_applicable("https", why), _not_applicable("key-not-on-parent", why)]
    tokens = _acm_tokens(h)
    if not tokens:
        why = (
            f"could not check: certificate {certs[0].rsplit('/', 1)[-1]} is associated with the "
            f"host role, but the host runs no ACM for Nitro Enclaves agent ({ACM_CONFIG} with a "
            "token whose target is an nginx stanza) that could serve it"
        )
        return [Check("https", False, why), Check("key-not-on-parent", False, why)]
    token = next((t for t in tokens if t.source.certificate_arn in certs), tokens[0])
    waiting = wait_for_stanza(h, token)
    if waiting:
        return [Check("https", False, waiting), Check("key-not-on-parent", False, waiting)]
    https = _timed("https", lambda: check_acm_https(h, token))
    key = _timed("key-not-on-parent", lambda: check_acm_key_not_on_parent(h, token))
    return [https, key]


# ACM for Nitro Enclaves on the host (set-up A): nginx on the parent, the key in ACM's enclave.
ACM_CONFIG = "/etc/nitro_enclaves/acm.yaml"
ACM_UNIT = "nitro-enclaves-acm.service"
ACM_READY_TIMEOUT_S = 120.0  # boot of the ACM enclave + AddToken (attested KMS) + nginx start
HTTPS_PORT = 443


def _host_path(h: UserDataHost, path: str) -> Path:
    """A path of the host's root filesystem, seen from the machine."""
    return Path(f"/proc/{h.host.get('init_pid')}/root") / path.lstrip("/")


def _acm_tokens(h: UserDataHost) -> list[Any]:
    """The ACM-sourced tokens of the host's acm.yaml that target an nginx stanza."""
    try:
        conf = _acm_conf(h)
    except OSError:
        return []
    return [t for t in conf.tokens if t.source.kind == "Acm" and t.target is not None]


def wait_for_stanza(
    h: UserDataHost, token: Any, timeout: float = ACM_READY_TIMEOUT_S
) -> str | None:
    """Wait until the agent has provisioned the token (its stanza exists): the agent does that
    after the user data has run. None when it is there; else why not, with the journal's end."""
    path = _host_path(h, token.target.path)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            journal = control.host_exec(h.layout, ["journalctl", "-u", ACM_UNIT]).stdout
            tail = " | ".join(x.strip() for x in journal.strip().splitlines()[-4:])
            return (
                f"the ACM agent wrote no {token.target.path} for token {token.label} within "
                f"{timeout:.0f} s; {ACM_UNIT}: {tail or '(no journal)'}"
            )
        time.sleep(0.5)
    return None


def _stanza_pin(h: UserDataHost, token: Any) -> str:
    """The PIN the agent wrote into the token's nginx stanza (`...?pin-value=<pin>"`)."""
    text = _host_path(h, token.target.path).read_text()
    if "pin-value=" not in text:
        raise CheckFailed(f"{token.target.path}: no pin-value in the agent's stanza")
    return text.split("pin-value=", 1)[1].split('"', 1)[0]


def _acm_enclave(h: UserDataHost) -> dict[str, Any]:
    if not h.enclaves:  # outside verify's run (benches): ask the host
        h.enclaves = hooks.host_enclaves(h.layout)
    running = _running(h)
    if len(running) != 1:
        raise CheckFailed(f"expected the one ACM enclave RUNNING, found {len(running)}")
    return running[0]


def _signatures(h: UserDataHost, token: Any, pin: str) -> int:
    """The token's signature count (DescribeToken over the ACM enclave's RPC port, as the
    agent asks it), which grows by one per private-key operation done in the enclave."""
    from local_backend.acm_enclave import RPC_PORT
    from local_backend.acm_enclave.p11ne import rpc

    cid = int(_acm_enclave(h)["EnclaveCID"])
    with h.vsock.connect(cid, RPC_PORT) as sock:
        sock.settimeout(10)
        answer = rpc.call(sock, rpc.Request("DescribeToken", {"label": token.label, "pin": pin}))
    if "Ok" not in answer:
        raise CheckFailed(f"DescribeToken {token.label}: {answer.get('Err')}")
    return int(answer["Ok"]["TokenDescription"]["signatures"])


def _https_port(h: UserDataHost) -> int:
    for row in h.host.get("ports") or []:
        if row.get("port") == HTTPS_PORT:
            return int(row["host_port"])
    raise CheckFailed(
        f"port {HTTPS_PORT} of the instance is not forwarded (its security groups allow no "
        "ingress to it)"
    )


def check_acm_https(h: UserDataHost, token: Any) -> tuple[bool, str]:
    """HTTPS from the host's web server with the association's certificate and a chain to the
    local CA, each handshake's private-key operation done in the ACM enclave."""
    import socket
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from local_backend import server

    arn = token.source.certificate_arn
    got = h.client("acm").get_certificate(CertificateArn=arn)
    want_leaf = x509.load_pem_x509_certificate(got["Certificate"].encode())
    domain = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"]
    pin = _stanza_pin(h, token)
    port = _https_port(h)
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    before = _signatures(h, token, pin)
    handshakes = 2
    for _ in range(handshakes):  # fresh connections: each one a full handshake, signed
        with (
            socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
            ctx.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(65536)
            version = tls.version()
            leaf = tls.getpeercert(binary_form=True)
    signed = _signatures(h, token, pin) - before
    if not head.startswith(b"HTTP/1.1 "):
        return False, f"no HTTP answer over TLS: {head[:40]!r}"
    if leaf != want_leaf.public_bytes(serialization.Encoding.DER):
        return False, f"the server's certificate is not {arn.rsplit('/', 1)[-1]}'s"
    if signed < handshakes:
        return False, (
            f"{handshakes} handshakes but the ACM enclave's token signed {signed} times: the key "
            "used is not the enclave's"
        )
    return True, (
        f"{version} to {domain} via 127.0.0.1:{port}: certificate {arn.rsplit('/', 1)[-1][:8]}… "
        f"chain verifies to the local CA; {handshakes} handshakes, {signed} signatures by the "
        f"ACM enclave's token {token.label}"
    )


def _host_processes(h: UserDataHost) -> tuple[list[int], list[int]]:
    """(parent side, enclave side) machine pids of the host: processes in the host's own PID
    namespace (nginx, the agent, systemd's stand-in...) and those in the enclaves' nested ones."""
    from local_backend.verify import _tree

    init = int(h.host["init_pid"])
    own = os.readlink(f"/proc/{init}/ns/pid")  # "pid:[inode]"
    parent, enclave = [], []
    for pid in _tree(init):
        try:
            ns = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            continue
        (parent if ns == own else enclave).append(pid)
    return parent, enclave


def check_acm_key_not_on_parent(h: UserDataHost, token: Any) -> tuple[bool, str]:
    """The certificate's key is in none of the host's parent-side processes (nginx's master and
    workers, the agent), the S3 object, the state and log files — and is in the enclave
    (positive control, searched while it signs)."""
    from local_backend.verify import _endpoint_keyscan

    parent, enclave = _host_processes(h)
    req = {
        "certificate_arn": token.source.certificate_arn,
        "account_id": h.info.get("account_id") or h.role_arn.split(":")[4],
        "region": h.region,
        "paths": [str(h.state_dir)],
        "pids": [*parent, *enclave],
    }
    result = _endpoint_keyscan(h.endpoint, req, h.state_dir)
    if "error" in result:
        return False, f"the key search failed: {result['error']}"
    leaks = [f"{x['where']} ({x['form']})" for x in result["file_hits"]]
    names = {}
    for pid in parent:
        found = result["processes"].get(str(pid), {})
        if found.get("hits"):
            names[pid] = _comm(pid)
            leaks += [f"pid {pid} {names[pid]}: {x['where']} ({x['form']})" for x in found["hits"]]
    if leaks:
        return False, "private key found on the parent side: " + "; ".join(leaks[:4])
    if not any(result["processes"].get(str(p), {}).get("hits") for p in enclave):
        return False, (
            "the search did not find the key in the ACM enclave either, so its absence "
            "elsewhere proves nothing"
        )
    nginx = sum(1 for p in parent if _comm(p) == "nginx")
    mib = sum(p.get("bytes_read", 0) for p in result["processes"].values()) >> 20
    return True, (
        f"absent from {result['files_read']} state/log files and {len(parent)} parent-side "
        f"processes ({nginx} nginx); found only in the ACM enclave ({mib} MiB searched)"
    )


# -------------------------------------------------------------------------- ACM probes

ACM_PROBES = ("debug-denied", "other-image-denied")
ACM_PROBE_TIMEOUT_S = 180.0  # one probe: run-enclave, boot, AddToken (attested KMS), console
VARIANT_EIF = "/run/enclavekit-verify/p11ne-variant.eif"

# Run inside the host as root, as the agent runs: boot one enclave from argv's image, give it
# the token the agent gives its own (acm.yaml's, the association's S3 object, the role's IMDS
# credentials as the envelope key: `ManagedToken`), print its AddToken answer and the lines it
# wrote about KMS to its console (a debug-mode enclave's only), then terminate it.
_ACM_PROBE = """
import json, subprocess, sys, time
from pathlib import Path
from local_backend.host import acm_config
from local_backend.host.acm_agent import ApiError, Imds, ManagedToken, rpc_call
from local_backend.emulator.runtime import EnclaveManager
from local_backend.host.layout import HOST_EMULATOR_STATE
args = json.loads(sys.argv[1])
conf = acm_config.load()
token = next(t for t in conf.tokens if t.label == args["label"])
eif = conf.enclave.image_path
if args["variant"]:
    from local_backend.verify import variant_image
    Path(args["variant"]).parent.mkdir(parents=True, exist_ok=True)
    eif = str(variant_image(Path(eif), Path(args["variant"])))
cmd = ["nitro-cli", "run-enclave", "--eif-path", eif, "--cpu-count",
       str(conf.enclave.cpu_count), "--memory", str(conf.enclave.memory_mib),
       "--enclave-name", "enclavekit-verify-probe"] + (["--debug-mode"] if args["debug"] else [])
run = subprocess.run(cmd, capture_output=True, text=True)
if run.returncode:
    print(json.dumps({"error": "nitro-cli run-enclave: " + run.stderr.strip()[-300:]}))
    sys.exit(0)
info = json.loads(run.stdout)
eid, cid = info["EnclaveID"], int(info["EnclaveCID"])
out = {"enclave_id": eid}
try:
    listed = json.loads(subprocess.run(["nitro-cli", "describe-enclaves"], capture_output=True,
                                       text=True).stdout)
    me = next(e for e in listed if e["EnclaveID"] == eid)
    out.update(pcr0=me["Measurements"]["PCR0"], flags=me.get("Flags"))
    deadline = time.monotonic() + 60
    while True:
        try:
            rpc_call(cid, conf.enclave.rpc_port, "DescribeDevice", timeout=1.0)
            break
        except (OSError, ApiError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    tok = ManagedToken(token, None, Imds(), conf.options.service)
    try:
        rpc_call(cid, conf.enclave.rpc_port, {"AddToken": {"token": tok._schema_token()}})
        out["answer"] = "Ok"
    except ApiError as exc:
        out["answer"] = exc.value
    layout = EnclaveManager(HOST_EMULATOR_STATE).layout
    console = layout.slot_dir(layout.slot_of(eid)) / "console.log"
    wanted = ("KMS Decrypt failed", "decrypted with attestation")
    end = time.monotonic() + 5
    while True:
        text = console.read_text(errors="replace") if console.is_file() else ""
        out["console"] = [x for x in text.splitlines() if any(w in x for w in wanted)]
        if out["console"] or not args["debug"] or time.monotonic() > end:
            break
        time.sleep(0.1)
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
finally:
    subprocess.run(["nitro-cli", "terminate-enclave", "--enclave-id", eid], capture_output=True)
    if args["variant"]:
        Path(args["variant"]).unlink(missing_ok=True)
print(json.dumps(out))
"""


def _run_acm_probe(h: UserDataHost, token: Any, *, debug: bool, variant: bool) -> dict[str, Any]:
    """One probe enclave inside the host (`_ACM_PROBE`): its AddToken answer and console lines."""
    args = {"label": token.label, "debug": debug, "variant": VARIANT_EIF if variant else None}
    run = control.host_exec(
        h.layout,
        [sys.executable, "-c", _ACM_PROBE, json.dumps(args)],
        timeout=ACM_PROBE_TIMEOUT_S,
    )
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise CheckFailed(f"the probe in the host failed: {run.stderr.strip()[-300:]}")
    return json.loads(lines[-1])


def _association_key(h: UserDataHost, token: Any) -> str | None:
    """The KMS key id the association's object is encrypted under (None: an S3 source, whose
    key the object does not name)."""
    if token.source.kind != "Acm":
        return None
    roles = h.client("ec2").get_associated_enclave_certificate_iam_roles(
        CertificateArn=token.source.certificate_arn
    )["AssociatedRoles"]
    mine = [r for r in roles if r.get("AssociatedRoleArn") == h.role_arn]
    return str(mine[0]["EncryptionKmsKeyId"]).rsplit("/", 1)[-1] if mine else None


def judge_acm_probe(out: dict[str, Any], key_id: str | None, *, debug: bool) -> tuple[bool, str]:
    """Was the probe enclave refused the certificate's key by KMS itself? AddToken must answer
    KmsDecryptFailed (AWS's RPC says no more). A debug-mode enclave's console shows KMS's own
    answer, which must be AccessDeniedException for the key; a production enclave has no
    console on Nitro, so there the positive control (the real image, same call) is the evidence
    that the call reached KMS."""
    what = "debug-mode copy of the ACM image" if debug else "one-byte variant of the ACM image"
    if "error" in out:
        return False, f"could not check: {what}: {out['error']}"
    pcr0 = "attests PCR0 zero" if debug else f"PCR0 {_short(str(out.get('pcr0')))}"
    if out.get("answer") == "Ok":
        return False, f"the {what} ({pcr0}) was given the certificate's key: AddToken answered Ok"
    if out.get("answer") != "KmsDecryptFailed":
        return False, f"could not check: {what}: AddToken answered {out.get('answer')!r}"
    if not debug:
        return True, f"{what} ({pcr0}): KmsDecryptFailed"
    said = " ".join(out.get("console") or [])
    if "got AccessDeniedException: " not in said:
        return False, f"could not check: KMS did not answer AccessDeniedException: {said[-300:]}"
    resource = said.partition(" on resource: ")[2].split(" ", 1)[0]
    if not resource.startswith("arn:aws:kms:") or (key_id and key_id not in resource):
        return False, (
            f"could not check: AccessDeniedException for {resource or 'no resource'}, not for "
            f"the association's key {key_id}"
        )
    return True, f"{what} ({pcr0}): KmsDecryptFailed; KMS: AccessDeniedException for {key_id}"


def check_acm_probes(h: UserDataHost, token: Any) -> list[Check]:
    """debug-denied and other-image-denied for an ACM agent host: a debug-mode copy and a
    one-byte variant of the package's p11ne.eif, booted in the host as the agent boots its
    own and given the same token, are each refused the certificate's key; the real image,
    booted the same way, is given it (positive control). The allocator's pool holds one ACM
    enclave, so the agent is stopped while the probes run and started again after; verify
    waits until nginx serves through its new enclave."""
    started = time.monotonic()
    key_id = _association_key(h, token)
    stop = control.host_exec(h.layout, ["systemctl", "stop", ACM_UNIT], timeout=60)
    if stop.returncode != 0:
        why = f"could not check: systemctl stop {ACM_UNIT}: {stop.stderr.strip()[-200:]}"
        return [Check(n, False, why) for n in ACM_PROBES]
    try:
        control_out = _run_acm_probe(h, token, debug=False, variant=False)
        debug_out = _run_acm_probe(h, token, debug=True, variant=False)
        variant_out = _run_acm_probe(h, token, debug=False, variant=True)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
        why = f"could not check: {type(exc).__name__}: {exc}"
        control_out = debug_out = variant_out = {"error": why}
    finally:
        restart = control.host_exec(h.layout, ["systemctl", "start", ACM_UNIT], timeout=60)
    back = (
        _wait_serving(h, token)
        if restart.returncode == 0
        else f"systemctl start {ACM_UNIT} failed: {restart.stderr.strip()[-200:]}"
    )
    seconds = round(time.monotonic() - started, 3)
    if control_out.get("answer") != "Ok":
        why = (
            "could not check: the positive control (the real p11ne.eif, booted the same way) "
            f"was not given the key either: {control_out.get('error') or control_out.get('answer')}"
        )
        return [Check(n, False, why, seconds) for n in ACM_PROBES]
    out = []
    for name, got, debug in (
        ("debug-denied", debug_out, True),
        ("other-image-denied", variant_out, False),
    ):
        ok, detail = judge_acm_probe(got, key_id, debug=debug)
        if ok and back:
            ok, detail = False, f"{detail}; but after the probes {back}"
        elif ok:
            detail += "; the real image, same call: Ok (positive control)"
        out.append(Check(name, ok, detail, seconds))
    return out


def _wait_serving(h: UserDataHost, token: Any, timeout: float = ACM_READY_TIMEOUT_S) -> str | None:
    """Wait until nginx completes a TLS handshake again (the agent restarted: new enclave,
    token, nginx restart). None when it does; else why not."""
    import ssl

    from local_backend import server

    domain = (
        h.client("acm").describe_certificate(CertificateArn=token.source.certificate_arn)[
            "Certificate"
        ]["DomainName"]
        if token.source.kind == "Acm"
        else None
    )
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            _get(_https_port(h), ctx, domain)
            return None
        except (OSError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    return f"nginx did not serve HTTPS again within {timeout:.0f} s ({last})"


def _get(port: int, ctx: Any, domain: str | None, timeout: float = 20) -> tuple[bytes, bytes]:
    """One GET / on a fresh TLS connection: (the first bytes of the answer, the leaf DER)."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        host = domain or "localhost"
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(65536)
        leaf = tls.getpeercert(binary_form=True)
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer over TLS: {head[:40]!r}")
    return head, leaf or b""


# -------------------------------------------------------------------------- renewal

RENEWAL = "renewal"  # opt-in: it waits for the agent's sync (acm.yaml sync_interval_secs)
RENEWAL_MARGIN_S = 60.0  # past sync_interval_secs: S3 fetch, UpdateToken, nginx's restart
RENEWAL_SETTLE_S = 3.0  # requests kept up after the renewed certificate is first served
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Request:
    at: float  # seconds after the renewal (negative: before it)
    leaf: bytes | None  # the certificate served (DER), None when the request failed
    error: str | None


class HttpsClient(threading.Thread):
    """HTTPS requests to nginx until stopped, one fresh connection (full handshake) each,
    verified against the local CA for the domain: a client of the site during the renewal."""

    def __init__(self, port: int, ctx: Any, domain: str) -> None:
        super().__init__(daemon=True)
        self.port, self.ctx, self.domain = port, ctx, domain
        self.zero = time.monotonic()
        self.results: list[Request] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            at = time.monotonic() - self.zero
            try:
                head, leaf = _get(self.port, self.ctx, self.domain, REQUEST_TIMEOUT_S)
                error = None if head.startswith(b"HTTP/1.1 200") else f"HTTP {head[9:12]!r}"
                self.results.append(Request(at, leaf, error))
            except (OSError, ConnectionError) as exc:  # ssl.SSLError is an OSError
                self.results.append(Request(at, None, f"{type(exc).__name__}: {exc}"))
            self.halt.wait(0.05)

    def stop(self) -> list[Request]:
        self.halt.set()
        self.join(REQUEST_TIMEOUT_S + 5)
        return list(self.results)


def judge_renewal(
    results: Sequence[Request], old: bytes, new: bytes, waited: float, why_late: str
) -> tuple[bool, str]:
    """Passed when the renewed certificate was served and no request failed or got another."""
    first_new = next((r.at for r in results if r.leaf == new), None)
    failed = [r for r in results if r.error is not None]
    other = [r for r in results if r.error is None and r.leaf not in (old, new)]
    if first_new is None:
        return False, (
            f"the renewed certificate was not served within {waited:.0f} s of the renewal "
            f"({why_late}); {len(results)} requests, {len(failed)} failed"
        )
    if other:
        return False, f"{len(other)} requests got a certificate that is neither the old nor new"
    if failed:
        shown = "; ".join(dict.fromkeys(r.error or "" for r in failed))[:240]
        return False, (
            f"{len(failed)} of {len(results)} HTTPS requests failed while the agent put the "
            f"renewed certificate in place, from +{failed[0].at:.1f} s to +{failed[-1].at:.1f} s "
            f"after the renewal ({shown}); the new certificate was served from "
            f"+{first_new:.1f} s"
        )
    return True, (
        f"the renewed certificate was served from +{first_new:.1f} s after the renewal; "
        f"{len(results)} HTTPS requests throughout, none failed"
    )


def check_acm_renewal(h: UserDataHost, token: Any, max_wait: float | None = None) -> Check:
    """ACM renews the certificate (a new certificate and key under the same ARN, the
    association's S3 object re-published, on the local endpoint); a client keeps making HTTPS
    requests to nginx while the agent, at its next sync, updates the token and nginx. Passes
    when the new certificate is served and no request failed. verify waits for the sync
    interval acm.yaml sets (AWS's agent reads it; verify shortens nothing)."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from local_backend import server

    start = time.monotonic()
    if token.source.kind != "Acm":
        return Check(RENEWAL, False, f"could not check: token {token.label} is not ACM-sourced")
    interval = _acm_conf(h).options.sync_interval_secs
    wait = interval + RENEWAL_MARGIN_S if max_wait is None else max_wait
    arn = token.source.certificate_arn
    domain = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"]
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    port = _https_port(h)
    _head, old = _get(port, ctx, domain, REQUEST_TIMEOUT_S)  # serving now, else could not check
    mark = len(_journal(h))
    client = HttpsClient(port, ctx, domain)
    client.start()
    time.sleep(1.0)  # requests before the renewal: the site as its users see it
    try:
        renewed = _endpoint_admin(
            h,
            server.RENEW_PATH,
            {"certificate_arn": arn, "account_id": _account(h), "region": h.region},
        )
        client.zero = time.monotonic()
        new = x509.load_pem_x509_certificate(renewed["certificate"].encode()).public_bytes(
            serialization.Encoding.DER
        )
        deadline = client.zero + wait
        while time.monotonic() < deadline and not any(r.leaf == new for r in client.results):
            time.sleep(0.2)
        if any(r.leaf == new for r in client.results):
            time.sleep(RENEWAL_SETTLE_S)
    finally:
        results = client.stop()
    lines = [x.split("| ", 1)[-1].strip() for x in _journal(h)[mark:].splitlines()]
    said = [x for x in lines if any(w in x for w in ("DB change", "Restart", "rror", "Broken"))]
    agent = " | ".join(said or lines[-2:])[:300]
    why_late = (
        f"acm.yaml sync_interval_secs {interval}: the agent looks for a renewal that often, "
        f"and verify waited that plus {RENEWAL_MARGIN_S:.0f} s"
        if max_wait is None
        else f"verify waited {wait:.0f} s"
    )
    ok, detail = judge_renewal(results, old, new, wait, why_late)
    detail += f"; the agent: {agent or '(nothing in its journal)'}"
    return Check(RENEWAL, ok, detail, round(time.monotonic() - start, 3))


def _journal(h: UserDataHost) -> str:
    return control.host_exec(h.layout, ["journalctl", "-u", ACM_UNIT]).stdout


def _account(h: UserDataHost) -> str:
    return str(h.info.get("account_id") or (h.role_arn or "").split(":")[4])


def _acm_conf(h: UserDataHost) -> Any:
    from local_backend.host import acm_config

    return acm_config.parse(_host_path(h, ACM_CONFIG).read_text())


def _endpoint_admin(h: UserDataHost, path: str, req: dict[str, Any]) -> dict[str, Any]:
    """An administration request to the local endpoint (its admin token from the state dir)."""
    import urllib.error
    import urllib.request

    from local_backend import server

    r = urllib.request.Request(
        h.endpoint + path,
        data=json.dumps(req).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            server.ADMIN_TOKEN_HEADER: server.admin_token(h.state_dir),
        },
    )
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b'{"error": "HTTP error"}')
        raise CheckFailed(f"{path}: {answer.get('error')}") from None


def _renewal_checks(h: UserDataHost) -> list[Check]:
    """The renewal probe where the host runs the ACM agent; N/A elsewhere."""
    try:
        tokens = _acm_tokens(h)
        if not tokens:
            return [_not_applicable(RENEWAL, "the host runs no ACM for Nitro Enclaves agent")]
        certs = _associated_certificates(h)
        token = next((t for t in tokens if t.source.certificate_arn in certs), tokens[0])
        return [check_acm_renewal(h, token)]
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
        return [Check(RENEWAL, False, f"could not check: {type(exc).__name__}: {exc}")]


def served_https(layout: HostLayout, state_dir: Path) -> tuple[str, int] | None:
    """(domain, machine port) of the HTTPS an ACM agent host serves, for a "Try it" line."""
    h = UserDataHost(layout, state_dir)
    try:
        tokens = _acm_tokens(h)
        if not tokens:
            return None
        arn = tokens[0].source.certificate_arn
        cert = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]
        return cert["DomainName"], _https_port(h)
    except Exception:  # noqa: BLE001 - no line to print; verify says why
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("enclaves", check_enclaves),
    ("attestation", check_attestation),
    ("keys", check_keys),
    ("parent-denied", check_parent_denied),
    ("nsm-parent-refused", check_nsm_parent_refused),
    (RENEWAL, lambda h: _not_applicable(RENEWAL, "run after the others")),  # opt-in, see below
)
OPT_IN = (RENEWAL,)  # run only when `--check` names them


def _run(name: str, fn: CheckFn, h: UserDataHost) -> Check:
    start = time.monotonic()
    holder: list[Check] = []

    def call() -> tuple[bool, str]:
        out = fn(h)
        if isinstance(out, Check):
            holder.append(out)
            return out.ok, out.detail
        return out

    check = _timed(name, call)
    if holder:
        return Check(name, holder[0].ok, holder[0].detail, check.seconds, holder[0].applies)
    return Check(check.name, check.ok, check.detail, round(time.monotonic() - start, 3))


def enclave_enabled_hosts(
    state_dir: Path, stacks: Sequence[str] | None, live: set[str]
) -> list[HostLayout]:
    """The running, enclave-enabled instance hosts (of `stacks`; None: all, stack or not)."""
    out = []
    for layout in hooks.hosts(state_dir):
        info = layout.read_info()
        if info.get("instance_id") not in live or not info.get("enclave_enabled"):
            continue
        if stacks is not None and info.get("stack_name") not in stacks:
            continue
        out.append(layout)
    return out


def verify_host(
    layout: HostLayout,
    state_dir: Path,
    checks: Sequence[str] | None = None,
    on_check: Callable[[HostReport, Check], None] | None = None,
) -> HostReport:
    """Every check that applies to the host of `layout`, in order; a failed boot stops there."""
    h = UserDataHost(layout, state_dir)
    hr = HostReport(
        stack=h.info.get("stack_name") or "(no stack)",
        logical_id=h.info.get("logical_id") or h.info["instance_id"],
        instance_id=h.info["instance_id"],
        enclave_id=None,
    )

    def add(check: Check) -> None:
        hr.checks.append(check)
        if on_check:
            on_check(hr, check)

    add(boot_check(h))
    if not hr.checks[-1].ok:
        return hr
    for name, fn in CHECKS:
        if name in OPT_IN or (checks and name not in checks and name != "enclaves"):
            continue
        add(_run(name, fn, h))
        if name == "enclaves":
            hr.enclave_id = next((str(e["EnclaveID"]) for e in _running(h)), None)
            if not _running(h):
                return hr
    if not checks or {"https", "key-not-on-parent"} & set(checks):
        try:
            tls = check_tls(h)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
            why = f"could not check: {type(exc).__name__}: {exc}"
            tls = [Check("https", False, why), Check("key-not-on-parent", False, why)]
        for c in tls:
            if not checks or c.name in checks:
                add(c)
    if checks and RENEWAL in checks:  # before the ACM probes, which restart the agent
        for c in _renewal_checks(h):
            add(c)
    if not checks or set(ACM_PROBES) & set(checks):
        for c in _acm_probe_checks(h):
            if not checks or c.name in checks:
                add(c)
    return hr


def _acm_probe_checks(h: UserDataHost) -> list[Check]:
    """The ACM probes where the host runs the ACM agent (none elsewhere: a host of another
    kind has its own image's probes, or none)."""
    try:
        tokens = _acm_tokens(h)
        if not tokens:
            return []
        certs = _associated_certificates(h)
        token = next((t for t in tokens if t.source.certificate_arn in certs), tokens[0])
        return check_acm_probes(h, token)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
        why = f"could not check: {type(exc).__name__}: {exc}"
        return [Check(n, False, why) for n in ACM_PROBES]
