"""A host running our parent agent, as verify sees it (`_Host`), and its boot check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enclavekit import provisioning as prov
from enclavekit.errors import EnclaveKitError
from local_backend.host.layout import HostLayout
from local_backend.verify.userdata import UserDataHost, boot_check

VERIFIER_DIR = "verifier"  # <state>/verifier/<stack>/<secret>.secret: up's reference copies


class _Host:
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


TLS_CHECKS = ("https", "key-not-on-parent")


def check_boot(host: _Host) -> tuple[bool, str]:
    """The user data ran to completion (the driver runs it first and stops on a failure)."""

    c = boot_check(host.h)
    return c.ok, c.detail
