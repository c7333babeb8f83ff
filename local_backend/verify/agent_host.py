"""A host running our parent agent, as verify sees it (`ParentAgentHost`), its boot check (the
user data ran, the enclave runs, the agent provisioned it) and the TLS checks' condition."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclavekit import provisioning as prov
from enclavekit.errors import EnclaveKitError
from local_backend.host.layout import HostLayout
from local_backend.verify.report import Check, not_applicable
from local_backend.verify.userdata import UserDataHost, boot_check

VERIFIER_DIR = "verifier"  # <state>/verifier/<stack>/<secret>.secret: up's reference copies


class ParentAgentHost:
    """What verify knows of one enclave host running our parent agent (booted from its user
    data): the host.json its user data wrote (`spec`), its enclave (describe-enclaves inside
    the host), the agent's AWS calls with the instance role (`parent`)."""

    def __init__(self, layout: HostLayout, state_dir: Path) -> None:
        from local_backend.parent.view import AgentHost

        self.layout = layout
        self.dir = layout.dir
        self.state_dir = state_dir
        self.parent = AgentHost(layout)  # the agent's AWS calls; boots nothing
        self.h = UserDataHost(layout, state_dir)  # for the checks both host kinds share
        self.info = self.parent.info
        self.spec = self.parent.spec
        self.state = self.parent.state()
        self.enclave = self.state["enclave"]
        self.h.enclaves = [self.enclave] if self.enclave.get("State") == "RUNNING" else []
        self.endpoint = self.info["endpoint"]
        self.region = self.info["region"]
        self._resources: dict[str, str] | None = None

    @property
    def enclave_id(self) -> str | None:
        return self.enclave.get("EnclaveID")

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


def agent_boot(host: ParentAgentHost) -> list[Check]:
    """boot, and what every other check of the host needs: a failed boot, or an enclave that
    is not running, is the host's one row; an enclave the agent did not provision is reported
    first, and the checks still run (they say what it lacks)."""
    boot = boot_check(host.h)
    if not boot.ok:
        return [boot]
    enclave_state = host.state["enclave_state"]
    if enclave_state != "RUNNING":
        return [
            Check(
                "enclave",
                False,
                f"enclave {host.enclave_id or '(none)'} is {enclave_state}: "
                f"{host.enclave.get('ExitReason') or 'not listed'} (nitro-cli describe-enclaves "
                f"in the host, CID {host.parent.cid}); `enclavekit up` starts it again",
            )
        ]
    if not host.state["provisioned"]:
        why = host.state["last_error"] or host.state["journal"] or host.state["enclave_status"]
        return [Check("provisioned", False, f"the enclave was not provisioned: {why}"), boot]
    return [boot]


def agent_boot_failed(host: ParentAgentHost, rows: list[Check]) -> bool:
    """No other check can run: the user data failed or the enclave is not running."""
    return any(not c.ok and c.name in ("boot", "enclave") for c in rows)


AgentCheckFn = Callable[[ParentAgentHost], tuple[bool, str] | Check]


def serves_tls(name: str, check: AgentCheckFn) -> AgentCheckFn:
    """`check` where the host serves TLS; N/A on a host whose image holds secrets but no
    certificate (set-up B): there is no HTTPS to try and no certificate key to search for."""

    def run(host: ParentAgentHost) -> tuple[bool, str] | Check:
        if not host.spec.get("certificate"):
            why = "no certificate is associated with this host (its image serves no TLS)"
            return not_applicable(name, why)
        return check(host)

    return run
