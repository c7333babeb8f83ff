"""`verify()`: every enclave host of the deployed stacks, each walked once through the
registry's checks of its kind (`verify_host`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from enclavekit.errors import BackendError, InvalidInput
from enclavekit.localenv import local_client
from local_backend import server
from local_backend.host.layout import HostLayout
from local_backend.parent.view import agent_config
from local_backend.verify.agent_host import ParentAgentHost
from local_backend.verify.registry import AGENT, KNOWN, REGISTRY, USERDATA, VerifyCheck
from local_backend.verify.report import Check, HostReport, VerifyReport
from local_backend.verify.userdata import UserDataHost, enclave_enabled_hosts


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


def host_kind(layout: HostLayout) -> str:
    """AGENT for a host of a stack whose user data set up our parent agent (its host.json names
    an image; the stack resolves the key and secret names in it), USERDATA for any other."""
    info = layout.read_info()
    return (
        AGENT if info.get("stack_name") and (agent_config(layout) or {}).get("image") else USERDATA
    )


HOSTS: dict[str, type[ParentAgentHost] | type[UserDataHost]] = {
    AGENT: ParentAgentHost,
    USERDATA: UserDataHost,
}


def _runs(entry: VerifyCheck, checks: Sequence[str] | None) -> bool:
    """Gates and what the others need always run, opt-in checks only when named."""
    if entry.always or entry.stops is not None:
        return True
    if not checks:
        return not entry.opt_in
    return any(n in checks for n in entry.names)


def _shown(entry: VerifyCheck, row: Check, checks: Sequence[str] | None, stop: bool) -> bool:
    """A row is reported when `--check` names it (or names nothing); a gate's failure, what the
    others need and rows beyond an entry's names (`enclave`, `provisioned`) always are."""
    if entry.always or stop or not checks:
        return True
    return row.name in checks or row.name not in entry.names


def verify_host(
    layout: HostLayout,
    state_dir: Path,
    checks: Sequence[str] | None = None,
    on_check: Callable[[HostReport, Check], None] | None = None,
) -> HostReport:
    """The registry's checks of the host's kind (those named in `checks`, if any) on the host
    of `layout`, in order, each row told to `on_check`; a gate that fails ends the host's
    checks there (a failed boot, no enclave running)."""
    kind = host_kind(layout)
    host = HOSTS[kind](layout, state_dir)
    hr = HostReport(
        stack=host.info.get("stack_name") or "(no stack)",
        logical_id=host.info.get("logical_id") or host.info["instance_id"],
        instance_id=host.info["instance_id"],
        enclave_id=host.enclave_id,
    )
    for entry in REGISTRY:
        if entry.kind != kind or not _runs(entry, checks):
            continue
        rows = entry.rows(host)
        stop = entry.stops is not None and entry.stops(host, rows)
        for row in rows:
            if _shown(entry, row, checks, stop):
                hr.checks.append(row)
                if on_check:
                    on_check(hr, row)
        hr.enclave_id = host.enclave_id
        if stop:
            break
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

    unknown = sorted(set(checks or ()) - set(KNOWN))
    if unknown:
        raise InvalidInput(f"--check: expected some of {', '.join(KNOWN)}, found {unknown}")
    stacks = deployed_stacks(state_dir)
    if stack is not None:
        if stack not in stacks:
            raise InvalidInput(
                f"--stack: expected one of the deployed stacks {stacks}, found {stack!r}"
            )
        stacks = [stack]
    live = _running_instances(state_dir)
    report = VerifyReport(hosts=[])
    # Every enclave-enabled instance, booted from its user data: ours by the chain of checks
    # above, any other by what it runs.
    for layout in enclave_enabled_hosts(state_dir, None if stack is None else stacks, live):
        info = layout.read_info()
        if info.get("stack_name") is not None and info["stack_name"] not in stacks:
            continue  # a stack not (or no longer) deployed
        report.hosts.append(verify_host(layout, state_dir, checks, on_check))
    covered = {h.stack for h in report.hosts}
    report.problems.extend(
        f"stack {s}: no enclave host found to verify" for s in stacks if s not in covered
    )
    return report
