"""debug-denied and other-image-denied of an ACM agent host: a debug-mode copy and a one-byte
variant of ACM's enclave image, booted in the host as the agent boots its own, are refused the
certificate's key; the real image, booted the same way, is given it (positive control).
"""

from __future__ import annotations

import time
from typing import Any

from local_backend.host import control
from local_backend.verify.acm_host import (
    ACM_UNIT,
    acm_tokens,
    associated_certificates,
    association_key,
    served_token,
    wait_serving,
)
from local_backend.verify.acm_probe_enclave import run_acm_probe
from local_backend.verify.keys import denied_other_resource
from local_backend.verify.report import Check, short
from local_backend.verify.userdata import UserDataHost

ACM_PROBES = ("debug-denied", "other-image-denied")


def judge_acm_probe(out: dict[str, Any], key_id: str | None, *, debug: bool) -> tuple[bool, str]:
    """Was the probe enclave refused the certificate's key by KMS itself? AddToken must answer
    KmsDecryptFailed (AWS's RPC says no more). A debug-mode enclave's console shows KMS's own
    answer, which must be AccessDeniedException for the key; a production enclave has no
    console on Nitro, so there the positive control (the real image, same call) is the evidence
    that the call reached KMS."""
    what = "debug-mode copy of the ACM image" if debug else "one-byte variant of the ACM image"
    if "error" in out:
        return False, f"could not check: {what}: {out['error']}"
    pcr0 = "attests PCR0 zero" if debug else f"PCR0 {short(str(out.get('pcr0')))}"
    if out.get("answer") == "Ok":
        return False, f"the {what} ({pcr0}) was given the certificate's key: AddToken answered Ok"
    if out.get("answer") != "KmsDecryptFailed":
        return False, f"could not check: {what}: AddToken answered {out.get('answer')!r}"
    if not debug:
        return True, f"{what} ({pcr0}): KmsDecryptFailed"
    said = " ".join(out.get("console") or [])
    if "got AccessDeniedException: " not in said:
        return False, f"could not check: KMS did not answer AccessDeniedException: {said[-300:]}"
    if why := denied_other_resource(said, key_id, f"the association's key {key_id}"):
        return False, f"could not check: {why}"
    return True, f"{what} ({pcr0}): KmsDecryptFailed; KMS: AccessDeniedException for {key_id}"


def check_acm_probes(h: UserDataHost, token: Any) -> list[Check]:
    """debug-denied and other-image-denied for an ACM agent host: a debug-mode copy and a
    one-byte variant of the package's p11ne.eif, booted in the host as the agent boots its
    own and given the same token, are each refused the certificate's key; the real image,
    booted the same way, is given it (positive control). The allocator's pool holds one ACM
    enclave, so the agent is stopped while the probes run and started again after; verify
    waits until nginx serves through its new enclave."""
    started = time.monotonic()
    key_id = association_key(h, token)
    stop = control.host_exec(h.layout, ["systemctl", "stop", ACM_UNIT], timeout=60)
    if stop.returncode != 0:
        why = f"could not check: systemctl stop {ACM_UNIT}: {stop.stderr.strip()[-200:]}"
        return [Check(n, False, why) for n in ACM_PROBES]
    try:
        control_out = run_acm_probe(h, token, debug=False, variant=False)
        debug_out = run_acm_probe(h, token, debug=True, variant=False)
        variant_out = run_acm_probe(h, token, debug=False, variant=True)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
        why = f"could not check: {type(exc).__name__}: {exc}"
        control_out = debug_out = variant_out = {"error": why}
    finally:
        restart = control.host_exec(h.layout, ["systemctl", "start", ACM_UNIT], timeout=60)
    back = (
        wait_serving(h, token)
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


def acm_probe_checks(h: UserDataHost) -> list[Check]:
    """The ACM probes where the host runs the ACM agent (none elsewhere: a host of another
    kind has its own image's probes, or none)."""
    tokens = acm_tokens(h)
    if not tokens:
        return []
    return check_acm_probes(h, served_token(tokens, associated_certificates(h)))
