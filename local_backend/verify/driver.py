"""`verify()`: every enclave host of the deployed stacks, each walked through the registry's
checks of its kind (`verify_agent_host`, `verify_host`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from enclavekit.errors import BackendError, InvalidInput
from enclavekit.localenv import local_client
from local_backend import server
from local_backend.host.layout import HostLayout
from local_backend.verify.acm import ACM_PROBES, _acm_probe_checks, check_tls
from local_backend.verify.agent_host import TLS_CHECKS, _Host
from local_backend.verify.registry import CHECKS, HOST_CHECKS, OPT_IN
from local_backend.verify.renewal import RENEWAL, _renewal_checks
from local_backend.verify.report import Check, HostReport, VerifyReport, _timed
from local_backend.verify.userdata import (
    CheckFn,
    UserDataHost,
    _running,
    boot_check,
    enclave_enabled_hosts,
)


def _tls_not_applicable(name: str, host: _Host) -> str | None:
    """Why check `name` does not apply to `host`, or None when it does.

    A host whose image holds secrets but no certificate (set-up B) serves no TLS: there is no
    HTTPS to try and no certificate key to search for."""
    if name in TLS_CHECKS and not host.spec.get("certificate"):
        return "no certificate is associated with this host (its image serves no TLS)"
    return None


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


def _host_report(
    info: dict[str, Any],
    enclave_id: str | None,
    on_check: Callable[[HostReport, Check], None] | None,
) -> tuple[HostReport, Callable[[Check], None]]:
    """The empty report of the host `info` (its instance.json) and the function that adds a
    check to it and tells `on_check`: both drivers record checks the same way."""
    hr = HostReport(
        stack=info.get("stack_name") or "(no stack)",
        logical_id=info.get("logical_id") or info["instance_id"],
        instance_id=info["instance_id"],
        enclave_id=enclave_id,
    )

    def add(check: Check) -> None:
        hr.checks.append(check)
        if on_check:
            on_check(hr, check)

    return hr, add


def verify_agent_host(
    layout: HostLayout,
    state_dir: Path,
    checks: Sequence[str] | None = None,
    on_check: Callable[[HostReport, Check], None] | None = None,
) -> HostReport:
    """The checks of `CHECKS` on one host running our parent agent, in order: a failed boot,
    an enclave that is not running or one not provisioned is reported first."""
    host = _Host(layout, state_dir)
    hr, add = _host_report(host.info, host.enclave.get("EnclaveID"), on_check)

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
        why_not = _tls_not_applicable(name, host)
        add(
            Check(name, True, f"does not apply: {why_not}", applies=False)
            if why_not
            else _timed(name, lambda fn=fn, host=host: fn(host))
        )
    for name in [n for n in checks or () if n in OPT_IN]:  # the user-data hosts' opt-in checks
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


def verify_host(
    layout: HostLayout,
    state_dir: Path,
    checks: Sequence[str] | None = None,
    on_check: Callable[[HostReport, Check], None] | None = None,
) -> HostReport:
    """Every check that applies to the host of `layout`, in order; a failed boot stops there."""
    h = UserDataHost(layout, state_dir)
    hr, add = _host_report(h.info, None, on_check)

    add(boot_check(h))
    if not hr.checks[-1].ok:
        return hr
    for name, fn in HOST_CHECKS:
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
