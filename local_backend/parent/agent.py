"""The emulated parent instance: one process per enclave-enabled EC2 instance.

What runs on a real parent, played here from the host's `Metadata["enclavekit:host"]` (the same
spec the real user data is rendered from):

- the instance role's temporary credentials, as IMDS hands them out (STS AssumeRole here);
- the EIF, downloaded from the CDK asset bucket;
- `vsock-proxy 8000 kms.<region>.amazonaws.com 443` with an allowlist naming only that host;
- `nitro-cli run-enclave` with the allocator's sizes (the emulator's EnclaveManager);
- a loopback TCP port relayed to the enclave's TLS port (the service port of the host);
- the ACM for Nitro Enclaves agent's part: fetch the association's S3 object and the sealed
  application secrets, hand them with the credentials to the enclave (Provision), re-sync.

The agent part (bundle, secrets, Provision, re-sync) is `enclavekit.agent.ParentAgent`, the same
code `enclavekit parent-agent` runs on a real parent; here it gets STS credentials, emulated
vsock and plain HTTP to the local endpoint. Nothing here ever holds plaintext key material:
the bundle's private key and the secrets stay KMS ciphertext only the attested enclave opens.

Run as `python -m local_backend.parent INSTANCE_DIR`; INSTANCE_DIR/instance.json says what
to boot, INSTANCE_DIR/parent.json reports the state ("booting", "running", "failed", "stopped").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from botocore.config import Config

from enclavekit import provisioning as prov
from enclavekit.agent import (
    METADATA_KEY,
    REFRESH_MARGIN_S,
    SYNC_FAST_S,
    SYNC_SLOW_S,
    UNSEALED,
    ParentAgent,
    SyncResult,
)
from enclavekit.contract import INSTANCE_FILE, PARENT_FILE
from enclavekit.errors import EnclaveKitError, ParentAgentError
from enclavekit.localenv import local_client
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend.parent.relay import TcpToVsockRelay

log = logging.getLogger("enclavekit.parent")

__all__ = [
    "INSTANCE_FILE",
    "METADATA_KEY",
    "PARENT_FILE",
    "SYNC_FAST_S",
    "SYNC_SLOW_S",
    "UNSEALED",
    "AssumeRoleCredentials",
    "Parent",
    "main",
    "read_state",
    "write_state",
]


def write_state(instance_dir: Path, **fields: Any) -> None:
    """Atomically merge `fields` into parent.json."""
    path = instance_dir / PARENT_FILE
    current: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        current = json.loads(path.read_text())
    current.update(fields, updated=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_state(instance_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((instance_dir / PARENT_FILE).read_text())
    except (OSError, ValueError):
        return {}


class AssumeRoleCredentials:
    """The instance role's credentials through STS AssumeRole: the local stand-in for IMDS.

    Cached like `enclavekit.agent.ImdsCredentials` until `REFRESH_MARGIN_S` before expiry.
    """

    def __init__(self, sts: Any, role_arn: str | None, session_name: str) -> None:
        self._sts = sts
        self.role_arn = role_arn
        self.session_name = session_name
        self._lock = threading.Lock()
        self._cached: prov.Credentials | None = None
        self._until = 0.0

    def credentials(self) -> prov.Credentials:
        with self._lock:
            if self._cached is not None and time.time() < self._until:
                return self._cached
            if not self.role_arn:
                raise ParentAgentError(
                    f"instance {self.session_name}: expected an instance role, found none"
                )
            out = self._sts().assume_role(
                RoleArn=self.role_arn, RoleSessionName=self.session_name, DurationSeconds=3600
            )["Credentials"]
            expiration = out["Expiration"]
            expires = expiration.timestamp() if hasattr(expiration, "timestamp") else None
            self._cached = prov.Credentials(
                access_key_id=out["AccessKeyId"],
                secret_access_key=out["SecretAccessKey"],
                session_token=out["SessionToken"],
                expiration=expiration.isoformat()
                if hasattr(expiration, "isoformat")
                else str(expiration),
            )
            self._until = (expires - REFRESH_MARGIN_S) if expires else time.time() + 60
            return self._cached

    def is_role(self, role_arn: str) -> bool:
        return role_arn == self.role_arn


class Parent:
    """Boots and serves one emulated parent instance; the agent part is `enclavekit.agent`."""

    def __init__(self, instance_dir: Path) -> None:
        self.dir = instance_dir
        self.info: dict[str, Any] = json.loads((instance_dir / INSTANCE_FILE).read_text())
        self.spec: dict[str, Any] = (self.info.get("metadata") or {}).get(METADATA_KEY) or {}
        self.region: str = self.info["region"]
        self.endpoint: str = self.info["endpoint"]
        self.role_arn: str | None = (self.info.get("role_arns") or [None])[0]
        self.enclave: dict[str, Any] | None = None
        self.relay: TcpToVsockRelay | None = None
        self.proxy: Any = None
        self._stop = threading.Event()
        self._resync = threading.Event()
        self.credential_source = AssumeRoleCredentials(
            self._ec2_sts, self.role_arn, self.info["instance_id"]
        )
        self.agent = ParentAgent(
            self.spec,
            region=self.region,
            credentials=self.credential_source,
            vsock=EmulatedVsock(self.dir / "vsock", PARENT_CID),
            clients=self._client,
            where=f"instance {self.info['instance_id']} Metadata {METADATA_KEY}",
        )

    # ------------------------------------------------------------------ AWS clients
    def _client(self, service: str, creds: prov.Credentials | None = None) -> Any:
        config = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30)
        if creds is None:  # the account root (verify's own look-ups)
            return local_client(service, self.endpoint, region=self.region, config=config)
        return local_client(
            service,
            self.endpoint,
            region=self.region,
            access_key_id=creds.access_key_id,
            secret_access_key=creds.secret_access_key,
            session_token=creds.session_token,
            config=config,
        )

    def _ec2_sts(self) -> Any:
        return ec2_sts(self.endpoint, self.region)

    def role_credentials(self) -> prov.Credentials:
        """The instance role's temporary credentials, as IMDS would serve them."""
        return self.credential_source.credentials()

    def certificate_bundle(self, creds: prov.Credentials) -> prov.CertificateBundle | None:
        return self.agent.certificate_bundle(creds)

    def sealed_secrets(self, creds: prov.Credentials) -> tuple[list[prov.SecretSpec], list[str]]:
        """The sealed secrets that exist, and the names still waiting to be sealed."""
        return self.agent.sealed_secrets(creds)

    # ------------------------------------------------------------------ boot
    def fetch_image(self, creds: prov.Credentials) -> Path:
        image = self.spec.get("image") or {}
        asset = image.get("asset")
        if not asset:
            raise EnclaveKitError(
                f"host {self.info.get('logical_id')}: Metadata {METADATA_KEY}.image.asset is "
                "missing; expected the S3 location of the EIF asset"
            )
        path = self.dir / "image.eif"
        body = self._client("s3", creds).get_object(Bucket=asset["bucket"], Key=asset["key"])
        path.write_bytes(body["Body"].read())
        return path

    @staticmethod
    def _tls_endpoint(state_root: Path) -> str | None:
        """The endpoint's TLS front, where the vsock-proxy carries the enclave's KMS TLS."""
        from local_backend.server import read_endpoint

        info = read_endpoint(state_root)
        return None if info is None else info.tls_endpoint

    def boot(self) -> None:
        from enclavekit.pki import LocalPki
        from local_backend.emulator.vsock_proxy import VsockProxy

        state_root = Path(self.info["state_dir"])
        LocalPki.load_or_create(state_root)  # the endpoint's one root, which its KMS trusts
        pki_link = self.dir / "pki"
        if not pki_link.is_symlink():
            pki_link.symlink_to(state_root / "pki", target_is_directory=True)
        creds = self.role_credentials()
        eif_path = self.fetch_image(creds)
        kms_host = f"kms.{self.region}.amazonaws.com"
        allowlist = self.dir / "vsock-proxy.yaml"
        allowlist.write_text(f"allowlist:\n- {{address: {kms_host}, port: 443}}\n")
        self.proxy = VsockProxy.for_state_dir(
            self.dir,
            self.agent.config.kms_proxy_port,
            kms_host,
            443,
            config=allowlist,
            endpoint=self.endpoint,
            tls_endpoint=self._tls_endpoint(state_root),
        ).start()
        self.agent.kms_proxy_port = self.proxy.local_port
        self.enclave = self._run_enclave(eif_path, self.spec.get("enclave", {}).get("cid"))
        enclave_port = self.agent.config.enclave_port
        self.relay = TcpToVsockRelay(
            EmulatedVsock(self.dir / "vsock", PARENT_CID),
            self.enclave["EnclaveCID"],
            enclave_port,
        ).start()
        write_state(
            self.dir,
            state="running",
            pid=os.getpid(),
            enclave=self.enclave,
            relay_port=self.relay.port,
            service_port=self.spec.get("service", {}).get("port"),
            domain=self.spec.get("service", {}).get("domain"),
            provisioned=False,
        )
        log.info(
            "instance %s: enclave %s (CID %s) running; relay 127.0.0.1:%d -> vsock %s",
            self.info["instance_id"],
            self.enclave["EnclaveID"],
            self.enclave["EnclaveCID"],
            self.relay.port,
            enclave_port,
        )

    def _run_enclave(self, eif_path: Path, cid: int | None) -> dict[str, Any]:
        """`nitro-cli run-enclave` as the host's enclave unit runs it."""
        from local_backend.emulator.runtime import EnclaveManager

        enclave = self.spec.get("enclave") or {}
        return EnclaveManager(self.dir).run_enclave(
            eif_path,
            int(enclave.get("cpu_count", 2)),
            int(enclave.get("memory_mib", 512)),
            cid=cid,
            debug_mode=bool(enclave.get("debug_mode", False)),
            parent_role_arn=self.role_arn,
            parent_instance_id=self.info["instance_id"],
            name=(self.spec.get("image") or {}).get("name"),
        )

    def restart_enclave(self) -> None:
        """The enclave unit restarted (`enclavekit up` asks for it when the enclave died):
        the old enclave's leftovers go, the image runs again on the same CID (the relay and
        the agent keep addressing it), and the agent provisions it from scratch."""
        from local_backend.emulator.runtime import EnclaveManager

        assert self.enclave is not None
        manager = EnclaveManager(self.dir)
        current = self.enclave
        with contextlib.suppress(EnclaveKitError, OSError):
            if manager.record(current["EnclaveID"]).get("State") == "RUNNING":
                return  # nothing to do: it runs
        with contextlib.suppress(EnclaveKitError, OSError):
            manager.terminate(current["EnclaveID"])
        try:
            self.enclave = self._run_enclave(self.dir / "image.eif", current["EnclaveCID"])
        except EnclaveKitError as exc:
            log.error("enclave restart failed: %s", exc)
            write_state(self.dir, provisioned=False, last_error=f"enclave restart failed: {exc}")
            return
        restarts = int(read_state(self.dir).get("enclave_restarts") or 0) + 1
        write_state(
            self.dir,
            enclave=self.enclave,
            provisioned=False,
            last_error=None,
            degraded=[],
            enclave_restarts=restarts,
        )
        log.info(
            "instance %s: enclave restarted as %s (CID %s)",
            self.info["instance_id"],
            self.enclave["EnclaveID"],
            self.enclave["EnclaveCID"],
        )
        self._resync.set()  # provision the new enclave now

    # ------------------------------------------------------------------ the agent
    def record(self, result: SyncResult) -> None:
        """parent.json from one sync result (what `enclavekit up` and verify read)."""
        if result.outcome == "provisioned":
            write_state(
                self.dir,
                provisioned=True,
                last_error=result.error,  # None unless degraded: then each failed item, why
                degraded=list(result.degraded),
                waiting_for_secrets=[],
                provisioned_at=result.at,
            )
            (log.warning if result.partial else log.info)("%s", result.describe())
        elif result.outcome == "unchanged":
            write_state(
                self.dir, provisioned=True, last_error=None, degraded=[], waiting_for_secrets=[]
            )
        elif result.outcome == "waiting":
            write_state(self.dir, waiting_for_secrets=list(result.waiting))
        elif result.outcome == "refused":
            write_state(self.dir, provisioned=False, last_error=result.error)
            log.warning("enclave refused provisioning: %s", result.error)
        else:
            write_state(self.dir, last_error=result.error)
            log.warning("provisioning: %s", result.error)

    def provision_once(self) -> SyncResult:
        """One provisioning of the running enclave, recorded in parent.json."""
        assert self.enclave is not None
        result = self.agent.sync_once(self.enclave["EnclaveCID"])
        self.record(result)
        return result

    def sync_loop(self) -> None:
        assert self.enclave is not None
        self.agent.sync_loop(self._stop, self._resync, self.record, cid=self.enclave["EnclaveCID"])

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        from local_backend.emulator.runtime import EnclaveManager

        self._stop.set()
        self._resync.set()
        if self.relay is not None:
            self.relay.stop()
        if self.proxy is not None:
            self.proxy.stop()
        with contextlib.suppress(EnclaveKitError, OSError):
            EnclaveManager(self.dir).terminate_all()
        write_state(self.dir, state="stopped")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m local_backend.parent INSTANCE_DIR", file=sys.stderr)
        return 2
    instance_dir = Path(args[0]).resolve()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    done = threading.Event()
    resync = threading.Event()
    restart = threading.Event()
    wanted = {signal.SIGHUP: resync, signal.SIGUSR1: restart}

    def _on_signal(signum: int, _frame: Any) -> None:
        wanted.get(signum, done).set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, _on_signal)
    write_state(instance_dir, state="booting", pid=os.getpid())
    parent: Parent | None = None
    try:
        parent = Parent(instance_dir)
        parent._resync = resync
        parent.boot()
    except Exception as exc:  # reported to the endpoint's hook, which fails the create
        log.error("boot failed: %s: %s", type(exc).__name__, exc)
        write_state(instance_dir, state="failed", error=f"{exc}")
        if parent is not None:
            parent.shutdown()
        write_state(instance_dir, state="failed")
        return 1
    threading.Thread(target=parent.sync_loop, name="agent", daemon=True).start()
    while not done.is_set():
        restart.wait(0.5)
        if restart.is_set() and not done.is_set():
            restart.clear()
            parent.restart_enclave()
    parent.shutdown()
    return 0


def ec2_sts(endpoint: str, region: str) -> Any:
    """STS as EC2 itself (ec2.amazonaws.com) calls it to assume an instance's role: only a role
    whose trust policy names ec2.amazonaws.com gets through, as on AWS. The emulated parent and
    a host's IMDS both get instance-role credentials this way."""
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    return local_client(
        "sts",
        endpoint,
        region=region,
        access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )
