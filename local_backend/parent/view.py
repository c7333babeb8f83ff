"""The parent side of an instance host whose user data started the enclavekit parent agent.

On EC2 (and locally, where every instance boots from its user data) our constructs' user data
writes `/etc/enclavekit/host.json` (the host Metadata with CloudFormation's values in place, plus
the region), runs the enclave under `enclavekit-<slug>.service` and the parent agent from the
stack's zipapp under `enclavekit-<slug>-agent.service`. The agent keeps no state file: what it
achieved is what the enclave answers (Status over vsock 5005), what it is waiting for is in its
journal. This module reads those from the machine for `up`, `local status`, verify and the
pytest plugin, and asks the host's systemd for a re-sync (`systemctl reload`) or an enclave
restart (`systemctl restart`), as an operator on the instance would.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from enclavekit import provisioning as prov
from enclavekit.agent import ParentAgent
from enclavekit.contract import HOST_CONFIG_PATH
from enclavekit.errors import EnclaveKitError
from enclavekit.localenv import local_client
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend.host import control, hooks
from local_backend.host.layout import HOST_EMULATOR_STATE, HostLayout
from local_backend.parent.agent import AssumeRoleCredentials, ec2_sts

UNIT_DIR = "/etc/systemd/system"
AGENT_UNIT_SUFFIX = "-agent.service"
STATUS_TIMEOUT_S = 10.0


def launcher_alive(layout: HostLayout) -> bool:
    """Does the launcher host.json names still run (its command line names this instance dir,
    so a recycled pid does not count)?"""
    pid = layout.read_host().get("pid")
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(layout.dir).encode() in cmdline


def agent_config(layout: HostLayout) -> dict[str, Any] | None:
    """The host.json the user data wrote for the agent, or None (not one of our image hosts)."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(layout.inside(HOST_CONFIG_PATH).read_text())
        return doc if isinstance(doc, dict) else None
    return None


def session_client(
    service: str, endpoint: str, region: str, creds: prov.Credentials | None = None
) -> Any:
    """A client of the local endpoint: with `creds` (a role session, as IMDS hands them out),
    else the local account's own."""
    if creds is None:
        return local_client(service, endpoint, region=region)
    return local_client(
        service,
        endpoint,
        region=region,
        access_key_id=creds.access_key_id,
        secret_access_key=creds.secret_access_key,
        session_token=creds.session_token,
    )


class InstanceHost:
    """Any instance host as seen from the machine: its instance.json (`info`) and host.json
    (`host`), its vsock as its parent side sees it, clients of the endpoint, the instance
    role's credentials (STS as EC2 calls it, as the host's IMDS hands them out)."""

    def __init__(self, layout: HostLayout) -> None:
        self.layout = layout
        self.dir = layout.dir
        self.info: dict[str, Any] = layout.read_info()
        self.host: dict[str, Any] = layout.read_host()
        self.instance_id: str = self.info["instance_id"]
        self.region: str = self.info["region"]
        self.endpoint: str = self.info["endpoint"]
        self.role_arn: str | None = (self.info.get("role_arns") or [None])[0]
        self.credential_source = AssumeRoleCredentials(
            lambda: ec2_sts(self.endpoint, self.region), self.role_arn, self.instance_id
        )

    @property
    def vsock(self) -> EmulatedVsock:
        """The host's emulated vsock as its parent side (CID 3) sees it."""
        root = Path(f"/proc/{self.host.get('init_pid')}/root{HOST_EMULATOR_STATE}/vsock")
        return EmulatedVsock(root, PARENT_CID)

    def forwarded_port(self, port: Any) -> int | None:
        """The machine's loopback port forwarded to the instance's `port` (its security groups
        let it in), None when none is."""
        for row in self.host.get("ports") or []:
            if row.get("port") == port:
                return int(row["host_port"])
        return None

    def exchange(self, cid: int, request: prov.Message, timeout: float) -> prov.Message:
        """One provisioning exchange with enclave `cid` over the host's vsock."""
        with self.vsock.connect(cid, prov.CONTROL_PORT) as sock:
            sock.settimeout(timeout)
            return prov.exchange(sock, request)

    def client(self, service: str, creds: prov.Credentials | None = None) -> Any:
        return session_client(service, self.endpoint, self.region, creds)

    def role_credentials(self) -> prov.Credentials:
        return self.credential_source.credentials()


class AgentHost(InstanceHost):
    """One instance host running (or having run) our parent agent, as seen from the machine."""

    def __init__(self, layout: HostLayout) -> None:
        super().__init__(layout)
        self.spec: dict[str, Any] = agent_config(layout) or {}
        self.stack: str | None = self.info.get("stack_name")
        self.logical_id: str | None = self.info.get("logical_id")
        self._agent: ParentAgent | None = None

    # ------------------------------------------------------------------ what the files say
    @property
    def running(self) -> bool:
        """host.json says running and its launcher still runs (a directory left by an endpoint
        that died is not a running host)."""
        return self.host.get("state") == "running" and launcher_alive(self.layout)

    @property
    def cid(self) -> int:
        return int((self.spec.get("enclave") or {}).get("cid") or 16)

    @property
    def service(self) -> dict[str, Any]:
        return self.spec.get("service") or {}

    @property
    def relay_port(self) -> int | None:
        """The machine's loopback port forwarded to the service port (its security groups let
        it in), where the host's socat relay passes TLS bytes to the enclave."""
        return self.forwarded_port(self.service.get("port"))

    def units(self) -> tuple[str | None, str | None]:
        """(enclave unit, agent unit) the user data wrote into /etc/systemd/system."""
        unit_dir = self.layout.inside(UNIT_DIR)
        agents = sorted(unit_dir.glob(f"enclavekit-*{AGENT_UNIT_SUFFIX}"))
        if not agents:
            return None, None
        agent = agents[0].name
        return agent.removesuffix(AGENT_UNIT_SUFFIX) + ".service", agent

    def journal(self, lines: int = 6) -> str:
        _, agent = self.units()
        if agent is None:
            return ""
        path = self.layout.inside(f"/var/log/journal/{agent}.log")  # `journalctl -u`'s file
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
            return " | ".join(x.strip() for x in tail)
        return ""

    # ------------------------------------------------------------------ the enclave
    def enclaves(self) -> list[dict[str, Any]]:
        return hooks.host_enclaves(self.layout)

    def enclave(self) -> dict[str, Any]:
        """The agent's enclave (its CID) as describe-enclaves inside the host lists it ({} if
        none runs there)."""
        found = [e for e in self.enclaves() if int(e.get("EnclaveCID", -1)) == self.cid]
        running = [e for e in found if e.get("State") == "RUNNING"]
        return (running or found or [{}])[0]

    def control(
        self, request: prov.Message, *, cid: int | None = None, timeout: float = 60
    ) -> prov.Message:
        return self.exchange(cid or self.cid, request, timeout)

    def status(self, timeout: float = STATUS_TIMEOUT_S) -> prov.StatusReport | None:
        """The enclave's own Status (what the agent achieved), None if it does not answer."""
        if not self.running:
            return None
        with contextlib.suppress(OSError, EOFError, EnclaveKitError):
            reply = self.control(prov.Status(), timeout=timeout)
            if isinstance(reply, prov.StatusReport):
                return reply
        return None

    def provisioning(self) -> dict[str, Any]:
        """What the enclave's own Status says of its provisioning (an answer means it runs),
        and the agent's journal tail; cheap enough to poll (nothing run inside the host)."""
        status = self.status()
        return {
            "state": self.host.get("state") if self.running else "stopped",
            "provisioned": status is not None and status.state in ("ready", "degraded"),
            "enclave_status": None if status is None else status.state,
            "provisioned_at": None if status is None else status.provisioned_at,
            "degraded": bool(status and status.state == "degraded"),
            "last_error": (status.last_error if status else None) or None,
            "journal": self.journal(),
        }

    def state(self) -> dict[str, Any]:
        """The parent side's state in one dict: the host's (state, launcher pid, error), the
        enclave's (its record, State) and the provisioning its Status reports."""
        enclave = self.enclave() if self.running else {}
        out = {
            "pid": self.host.get("pid"),
            "init_pid": self.host.get("init_pid"),
            "error": control.boot_error(self.host),
            "enclave": enclave,
            "enclave_state": enclave.get("State") or "NONE",
            "relay_port": self.relay_port,
            "domain": self.service.get("domain"),
            "service_port": self.service.get("port"),
        }
        if enclave.get("State") == "RUNNING":
            return out | self.provisioning()
        return out | {
            "state": self.host.get("state") if self.running else "stopped",
            "provisioned": False,
            "enclave_status": None,
            "provisioned_at": None,
            "degraded": False,
            "last_error": None,
            "journal": self.journal(),
        }

    def enclave_record(self, enclave_id: str) -> dict[str, Any]:
        """The emulator's full record of one enclave of the host (describe keys plus internals
        such as EnclavePID, a pid of the host's PID namespace), read through its PID 1's root."""
        from local_backend.emulator.state import Layout, read_json

        root = Path(f"/proc/{self.host.get('init_pid')}/root{HOST_EMULATOR_STATE}")
        layout = Layout(root)
        with contextlib.suppress(OSError, ValueError, EnclaveKitError):
            return dict(read_json(layout.slot_dir(layout.slot_of(enclave_id)) / "state.json"))
        return {}

    def enclave_pid(self, enclave_id: str) -> int | None:
        """The machine pid of the enclave's own process (its isolated PID 1's parent side)."""
        inner = self.enclave_record(enclave_id).get("EnclavePID")
        return self.machine_pid(int(inner)) if inner else None

    def machine_pid(self, inner_pid: int) -> int | None:
        """The machine pid of process `inner_pid` of the host's PID namespace, found by its
        NSpid line (machine pid first, the host's next) under the host's PID 1."""
        init = self.host.get("init_pid")
        if not init:
            return None
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError, ValueError):
                for line in status.read_text().splitlines():
                    if line.startswith("NSpid:"):
                        ids = [int(x) for x in line.split()[1:]]
                        if len(ids) > 1 and ids[1] == inner_pid and _under(ids[0], int(init)):
                            return ids[0]
        return None

    # ------------------------------------------------------------------ the agent's AWS side
    @property
    def agent(self) -> ParentAgent:
        """The agent's AWS calls with the instance role (as the agent in the host makes them)."""
        if self._agent is None:
            self._agent = ParentAgent(
                self.spec,
                region=self.region,
                credentials=self.credential_source,
                vsock=self.vsock,
                clients=self.client,
                where=f"instance {self.instance_id} {HOST_CONFIG_PATH}",
            )
        return self._agent

    def certificate_bundle(self, creds: prov.Credentials) -> prov.CertificateBundle | None:
        return self.agent.certificate_bundle(creds)

    def sealed_secrets(self, creds: prov.Credentials) -> tuple[list[prov.SecretSpec], list[str]]:
        return self.agent.sealed_secrets(creds)

    def fetch_image(self, creds: prov.Credentials, dest: Path | None = None) -> Path:
        """The EIF from its S3 asset with the instance role, as the user data's `aws s3 cp`."""
        asset = (self.spec.get("image") or {}).get("asset")
        if not asset:
            raise EnclaveKitError(
                f"instance {self.instance_id}: {HOST_CONFIG_PATH} names no image asset; "
                "expected the S3 location of the EIF"
            )
        path = dest or self.dir / "image.eif"
        body = self.client("s3", creds).get_object(Bucket=asset["bucket"], Key=asset["key"])
        path.write_bytes(body["Body"].read())
        return path

    # ------------------------------------------------------------------ asking systemd
    def resync(self) -> bool:
        """`systemctl reload` of the agent unit: it re-sends the Provision now."""
        _, agent = self.units()
        if agent is None or not self.running:
            return False
        return control.host_exec(self.layout, ["systemctl", "reload", agent]).returncode == 0

    def restart_enclave(self) -> str | None:
        """`systemctl restart` of the enclave unit when its enclave no longer runs, then a
        reload of the agent (which provisions the new one). Returns why it was restarted."""
        unit, agent = self.units()
        if unit is None or not self.running:
            return None
        enclave = self.enclave()
        if enclave.get("State") == "RUNNING":
            return None
        why = f"enclave {enclave.get('State') or 'NONE'}"
        control.host_exec(self.layout, ["systemctl", "restart", unit], timeout=180)
        if agent is not None:
            control.host_exec(self.layout, ["systemctl", "reload", agent])
        return why


def _under(pid: int, ancestor: int) -> bool:
    """Is `pid` `ancestor` or one of its descendants?"""
    seen = 0
    while pid > 1 and seen < 256:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        seen += 1
    return pid == ancestor


def agent_hosts(
    state_dir: Path, stacks: Iterable[str] | None = None, *, running: bool = True
) -> list[AgentHost]:
    """The instance hosts (of `stacks`, if given) whose user data set up our parent agent; only
    running ones unless `running` is False."""
    wanted = None if stacks is None else set(stacks)
    out = []
    for layout in hooks.hosts(Path(state_dir)):
        if agent_config(layout) is None:
            continue
        h = AgentHost(layout)
        if wanted is not None and h.stack not in wanted:
            continue
        if running and not h.running:
            continue
        out.append(h)
    return out


def resync(state_dir: Path, stacks: Iterable[str] | None = None) -> int:
    """Ask every running agent (of `stacks`) to re-sync now (after sealing); returns count."""
    return sum(h.resync() for h in agent_hosts(state_dir, stacks))


def restart_enclaves(state_dir: Path, stacks: Iterable[str] | None = None) -> list[str]:
    """Restart the enclave unit of every running agent host whose enclave stopped; returns
    "instance id (why)" for each."""
    asked = []
    for h in agent_hosts(state_dir, stacks):
        why = h.restart_enclave()
        if why:
            asked.append(f"{h.instance_id} ({why})")
    return asked
