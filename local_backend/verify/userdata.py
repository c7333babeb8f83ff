"""`enclavekit verify` for instances booted from their user data: every enclave-enabled host.

Such a host need not be ours: nothing here reads enclavekit Metadata. What verify checks is
what the host runs, as seen from outside (the `local_backend.host.hooks` reader interface):
boot, enclaves (nitro-cli describe-enclaves inside the host) and attestation. A check that
does not apply says why (`Check.applies` False); one that cannot run fails.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enclavekit import attestation, pcr
from enclavekit import provisioning as prov
from local_backend.host import control, hooks
from local_backend.host.layout import HostLayout
from local_backend.parent.view import InstanceHost
from local_backend.verify.report import Check, not_applicable, short

CONSOLE_LINES = 8  # of a failed boot's console, in its check's detail


class UserDataHost(InstanceHost):
    """What verify knows of one running instance host (host.json, instance.json, its enclaves)."""

    def __init__(self, layout: HostLayout, state_dir: Path) -> None:
        super().__init__(layout)
        self.state_dir = state_dir
        self.enclaves: list[dict[str, Any]] = []
        self.documents: dict[str, attestation.AttestationDocument] = {}  # by EnclaveID

    @property
    def account_id(self) -> str:
        return str(self.info.get("account_id") or (self.role_arn or "").split(":")[4])

    @property
    def enclave_id(self) -> str | None:
        """The first RUNNING enclave (None before `check_enclaves` listed them)."""
        return next((str(e["EnclaveID"]) for e in running_enclaves(self)), None)


def boot_check(h: UserDataHost) -> Check:
    """boot: the user data ran to completion; else the failing command and the console's end
    (no other check of the host can run then)."""
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
            f"PCR0 {short(str(m.get('PCR0', '-')))}"
        )
        ok = ok and e.get("State") == "RUNNING"
    return ok, "; ".join(parts)


def running_enclaves(h: UserDataHost) -> list[dict[str, Any]]:
    """The host's enclaves describe-enclaves listed RUNNING (after `check_enclaves`)."""
    return [e for e in h.enclaves if e.get("State") == "RUNNING"]


def check_attestation(h: UserDataHost) -> tuple[bool, str] | Check:
    anchor = attestation.TrustAnchor.local(h.state_dir)
    done, silent = [], []
    for e in running_enclaves(h):
        eid, cid = str(e["EnclaveID"]), int(e["EnclaveCID"])
        nonce = secrets.token_bytes(32)
        try:
            reply = h.exchange(cid, prov.Attest(nonce=nonce), timeout=30)
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
                    f"enclave {eid}: attested PCR{i} {short(doc.pcrs.get(i, b'').hex() or '-')}"
                    f" is not {short(value or '-')}"
                )
        h.documents[eid] = doc
        done.append(eid)
    if not done:
        return not_applicable(
            "attestation",
            f"enclave(s) {', '.join(silent)} answer nothing on vsock port "
            f"{prov.CONTROL_PORT} (not an enclavekit image): their PCRs are nitro-cli's",
        )
    more = f"; {', '.join(silent)} answer nothing on port 5005" if silent else ""
    return True, (
        f"{', '.join(done)}: fresh document verifies to the local root; PCR0-2 = "
        f"describe-enclaves, PCR3 = instance role, PCR4 = instance{more}"
    )


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
