"""The parent agent: what a parent instance does so its enclave gets its key and secrets.

One implementation for both worlds: `enclavekit parent-agent` (the zipapp the user data
installs as a systemd unit) runs it with the instance role's credentials from IMDSv2
(`ImdsCredentials`), vsock (AF_VSOCK on a Nitro parent, the emulated one in a local instance
host) and KMS over the parent's `vsock-proxy` with TLS to `kms.<region>.amazonaws.com`. It
reads the host description the user data writes to `/etc/enclavekit/host.json` (the same
content as `Metadata["enclavekit:host"]`, with CloudFormation's values resolved).

What it does, like the ACM for Nitro Enclaves agent: fetch the association's certificate
bundle from S3 and the sealed application secrets from SSM, hand them with the credentials to
the enclave (`enclavekit.provisioning.Provision` on vsock port 5005), and re-sync on an interval
or when asked. Nothing here ever holds plaintext key material: the bundle's private key and the
secrets are KMS ciphertext that only the attested enclave can open. Logs name parameters,
ARNs and secret names, never credentials or ciphertext.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from enclavekit import provisioning as prov
from enclavekit.contract import (
    DEFAULT_ENCLAVE_CID,
    ENCLAVE_TLS_PORT,
    HOST_METADATA_VERSION,
    KMS_PROXY_PORT,
    UNSEALED,
)
from enclavekit.contract import HOST_METADATA_KEY as METADATA_KEY
from enclavekit.errors import (
    EnclaveKitError,
    InvalidInput,
    ParentAgentError,
    aws_error,
    one_line,
)
from enclavekit.transport import VsockTransport

log = logging.getLogger("enclavekit.agent")

SYNC_FAST_S = 1.0  # until the enclave answered: it may still be booting
SYNC_SLOW_S = 600.0  # the ACM agent's default sync interval
IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TOKEN_TTL_S = 21600
REFRESH_MARGIN_S = 900.0  # fetch new credentials this long before they expire (as botocore)
ENCLAVE_TIMEOUT_S = 60.0

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")

ClientFactory = Callable[[str, prov.Credentials], Any]


# ------------------------------------------------------------------------------ credentials
class CredentialSource(Protocol):
    """Where the instance role's temporary credentials come from (IMDS, or STS locally)."""

    def credentials(self) -> prov.Credentials:
        """Credentials valid for a while yet (refreshed before they expire)."""
        ...

    def is_role(self, role_arn: str) -> bool:
        """Whether `role_arn` is the role these credentials belong to."""
        ...


def _expires_at(expiration: str | None) -> float | None:
    if not expiration:
        return None
    try:
        return datetime.fromisoformat(expiration.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ImdsCredentials:
    """The instance role's credentials from IMDSv2, as the ACM agent and the AWS SDKs get them.

    PUT /latest/api/token (TTL header) once per token lifetime, then GET
    /latest/meta-data/iam/security-credentials/ (the role name) and .../<role> (the JSON).
    Cached until `REFRESH_MARGIN_S` before `Expiration`; a token the service stopped accepting
    (401) is replaced once.
    """

    def __init__(
        self,
        endpoint: str = IMDS_ENDPOINT,
        *,
        timeout: float = 2.0,
        token_ttl: int = IMDS_TOKEN_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise InvalidInput(
                f"IMDS endpoint must be an http URL like {IMDS_ENDPOINT}, got {endpoint!r}"
            )
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.token_ttl = token_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_until = 0.0
        self._role: str | None = None
        self._cached: prov.Credentials | None = None
        self._cached_until = 0.0

    # -- HTTP
    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        req = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ParentAgentError(
                f"instance metadata service {self.endpoint}: unreachable ({reason}); expected "
                "an EC2 instance with IMDSv2 enabled"
            ) from None

    def _get_token(self) -> str:
        now = self._clock()
        if self._token is None or now >= self._token_until:
            status, body = self._request(
                "PUT",
                "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl)},
            )
            if status != 200 or not body:
                raise ParentAgentError(
                    f"instance metadata service {self.endpoint}: token PUT answered HTTP "
                    f"{status}; expected 200 with an IMDSv2 session token"
                )
            self._token = body.strip()
            self._token_until = now + self.token_ttl - 60
        return self._token

    def get(self, path: str) -> tuple[int, str]:
        """GET `path` with a session token (one retry with a new token after a 401)."""
        for attempt in (0, 1):
            status, body = self._request(
                "GET", path, {"X-aws-ec2-metadata-token": self._get_token()}
            )
            if status != 401 or attempt:
                return status, body
            self._token = None
        raise AssertionError("unreachable")

    # -- what the agent asks
    def role_name(self) -> str:
        """The instance profile's role (IMDS lists exactly one)."""
        if self._role is None:
            status, body = self.get("/latest/meta-data/iam/security-credentials/")
            names = [line.strip() for line in body.splitlines() if line.strip()]
            if status == 404 or (status == 200 and not names):
                raise ParentAgentError(
                    "instance metadata service: no IAM role on this instance; expected an "
                    "instance profile with the enclave host role"
                )
            if status != 200:
                raise ParentAgentError(
                    f"instance metadata service: role listing answered HTTP {status}; "
                    "expected 200 with the role name"
                )
            self._role = names[0]
        return self._role

    def region(self) -> str:
        """The instance's region (placement/region)."""
        status, body = self.get("/latest/meta-data/placement/region")
        if status != 200 or not body.strip():
            raise ParentAgentError(
                f"instance metadata service: placement/region answered HTTP {status}; "
                "expected 200 with a region name"
            )
        return body.strip()

    def credentials(self) -> prov.Credentials:
        with self._lock:
            if self._cached is not None and self._clock() < self._cached_until:
                return self._cached
            role = self.role_name()
            status, body = self.get(f"/latest/meta-data/iam/security-credentials/{role}")
            if status != 200:
                raise ParentAgentError(
                    f"instance metadata service: credentials of role {role!r} answered HTTP "
                    f"{status}; expected 200 with the role's temporary credentials"
                )
            try:
                doc = json.loads(body)
                if doc.get("Code", "Success") != "Success":
                    raise ParentAgentError(
                        f"instance metadata service: credentials of role {role!r} not "
                        f"available: Code {doc.get('Code')!r}; expected 'Success'"
                    )
                creds = prov.Credentials(
                    access_key_id=doc["AccessKeyId"],
                    secret_access_key=doc["SecretAccessKey"],
                    session_token=doc.get("Token"),
                    expiration=doc.get("Expiration"),
                )
            except (ValueError, KeyError, AttributeError, TypeError):
                raise ParentAgentError(
                    f"instance metadata service: credentials of role {role!r}: expected JSON "
                    "with AccessKeyId, SecretAccessKey, Token and Expiration, found something "
                    "else"
                ) from None
            expires = _expires_at(creds.expiration)
            now = self._clock()
            # IMDS rotates well before expiry; if it still hands out the old ones, re-ask soon.
            self._cached_until = (
                now + 60 if expires is None else max(now + 30, expires - REFRESH_MARGIN_S)
            )
            self._cached = creds
            log.info("instance role %s: credentials fetched, expire %s", role, creds.expiration)
            return creds

    def is_role(self, role_arn: str) -> bool:
        # IMDS names the role, not its ARN; role names are unique in an account.
        return role_arn.rsplit("/", 1)[-1] == self.role_name()


# ------------------------------------------------------------------------------ host config
@dataclass(frozen=True)
class SecretRef:
    """One sealed secret of the host: its name in the enclave and its SSM parameter."""

    name: str
    parameter: str


@dataclass(frozen=True)
class HostConfig:
    """What the agent needs from the host description, checked once at start."""

    region: str
    cid: int
    enclave_port: int
    kms_proxy_port: int
    image_name: str | None
    certificate_arn: str | None
    secrets: tuple[SecretRef, ...] = ()

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], *, region: str, where: str = f"Metadata {METADATA_KEY}"
    ) -> HostConfig:
        """Parse the Metadata (or host.json); one-line InvalidInput naming the bad field."""
        if not isinstance(spec, Mapping):
            raise InvalidInput(f"{where}: expected a JSON object, found {type(spec).__name__}")
        if spec.get("version") != HOST_METADATA_VERSION:
            raise InvalidInput(
                f"{where}.version: expected {HOST_METADATA_VERSION}, found {spec.get('version')!r}"
            )
        enclave = _section(spec, "enclave", where)
        service = _section(spec, "service", where)
        image = _section(spec, "image", where)
        cert = _section(spec, "certificate", where)
        cert_arn = _text(cert, "arn", f"{where}.certificate") if cert else None
        secrets = spec.get("secrets") or []
        if not isinstance(secrets, list):
            raise InvalidInput(f"{where}.secrets: expected a list, found {secrets!r}")
        refs = []
        for i, s in enumerate(secrets):
            at = f"{where}.secrets[{i}]"
            if not isinstance(s, Mapping):
                raise InvalidInput(f"{at}: expected an object, found {s!r}")
            refs.append(SecretRef(name=_text(s, "name", at), parameter=_text(s, "parameter", at)))
        if not isinstance(region, str) or not _REGION.match(region):
            raise InvalidInput(
                f"{where}: region: expected an AWS region like us-east-1, found {region!r}"
            )
        return cls(
            region=region,
            cid=_port(enclave, "cid", f"{where}.enclave", DEFAULT_ENCLAVE_CID, lo=4),
            enclave_port=_port(service, "enclave_port", f"{where}.service", ENCLAVE_TLS_PORT),
            kms_proxy_port=_port(service, "kms_proxy_port", f"{where}.service", KMS_PROXY_PORT),
            image_name=_text(image, "name", f"{where}.image") if image else None,
            certificate_arn=cert_arn,
            secrets=tuple(refs),
        )


def _section(spec: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where}.{key}: expected an object, found {value!r}")
    return value


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        hint = " (an unresolved intrinsic)" if isinstance(value, dict) else ""
        raise InvalidInput(f"{where}.{key}: expected a non-empty string, found {value!r}{hint}")
    if "${Token[" in value:
        raise InvalidInput(
            f"{where}.{key}: expected a resolved value, found the CDK token {value!r}"
        )
    return value


def _port(obj: Mapping[str, Any], key: str, where: str, default: int, *, lo: int = 1) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= 0xFFFFFFFF:
        raise InvalidInput(f"{where}.{key}: expected an integer >= {lo}, found {value!r}")
    return value


def load_host_json(path: str | Path) -> dict[str, Any]:
    """Read the host.json the user data writes: the Metadata plus `region`."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise InvalidInput(
            f"host config {p}: no such file; expected the JSON the enclavekit user data writes"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"host config {p}: unreadable ({exc.strerror})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"host config {p}: expected JSON, found invalid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"host config {p}: expected a JSON object, found {type(doc).__name__}")
    return doc


def boto3_clients(region: str, *, endpoint_url: str | None = None) -> ClientFactory:
    """A client factory with short timeouts and few retries (the sync loop retries anyway).

    One boto3 session, clients kept per (service, credentials): building a client loads its
    service model, which costs more than the call it makes.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30)
    cache: dict[tuple[str, str, str | None], Any] = {}
    lock = threading.Lock()

    def make(service: str, creds: prov.Credentials) -> Any:
        key = (service, creds.access_key_id, creds.session_token)
        with lock:
            if key not in cache:
                if len(cache) >= 16:  # old credentials' clients
                    cache.clear()
                cache[key] = session.client(
                    service,
                    region_name=region,
                    endpoint_url=endpoint_url,
                    aws_access_key_id=creds.access_key_id,
                    aws_secret_access_key=creds.secret_access_key,
                    aws_session_token=creds.session_token,
                    config=config,
                )
            return cache[key]

    return make


# ------------------------------------------------------------------------------ the agent
@dataclass(frozen=True)
class SyncResult:
    """What one provisioning attempt came to (reported to `on_state`).

    outcome: "provisioned" (the enclave answered Provisioned), "unchanged" (it is ready with
    exactly what we would send), "waiting" (secrets not sealed yet), "refused" (it answered an
    Error), "error" (we could not get that far: AWS, IMDS, vsock).

    A "provisioned" enclave may be *degraded*: it obtained only part of what it was sent (say
    its secrets but not the certificate key). Then `secrets`/`certificate` say what it holds,
    `degraded` names what it does not ("certificate", "secret <name>") and `error` is its
    Status `last_error` (each failed item and its cause).
    """

    outcome: str
    secrets: tuple[str, ...] = ()
    certificate: bool = False
    waiting: tuple[str, ...] = ()
    error: str | None = None
    at: float = field(default_factory=time.time)
    degraded: tuple[str, ...] = ()
    partial: bool = False  # the enclave answered state "degraded"

    @property
    def answered(self) -> bool:
        """The enclave answered: further syncs can wait for the slow interval."""
        return self.outcome in ("provisioned", "unchanged", "refused")

    def describe(self) -> str:
        if self.outcome in ("provisioned", "unchanged"):
            verb = "provisioned" if self.outcome == "provisioned" else "up to date"
            line = (
                f"enclave {verb}: {len(self.secrets)} secret(s) "
                f"[{', '.join(self.secrets)}], certificate: "
                f"{'yes' if self.certificate else 'no'}"
            )
            if self.partial:
                missing = ", ".join(self.degraded) or "items kept from an earlier Provision"
                line += f"; degraded, not obtained: {missing} ({self.error})"
            return line
        if self.outcome == "waiting":
            return f"waiting for sealed secrets: {', '.join(self.waiting)}"
        return f"{self.outcome}: {self.error}"


class ParentAgent:
    """Provisions one enclave from its host description; shared by AWS and the emulator."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        region: str,
        credentials: CredentialSource,
        vsock: VsockTransport,
        kms_proxy_port: int | None = None,
        clients: ClientFactory | None = None,
        where: str = f"Metadata {METADATA_KEY}",
    ) -> None:
        self.spec = spec
        self.config = HostConfig.from_spec(spec, region=region, where=where)
        self.region = region
        self.credentials = credentials
        self.vsock = vsock
        self.kms_proxy_port = kms_proxy_port or self.config.kms_proxy_port
        self.clients = clients or boto3_clients(region)
        self._delivered: prov.Provision | None = None

    # -- AWS
    def certificate_bundle(
        self, creds: prov.Credentials | None = None
    ) -> prov.CertificateBundle | None:
        """The association's S3 object for this host's role, or None without a certificate."""
        arn = self.config.certificate_arn
        if arn is None:
            return None
        creds = creds or self.credentials.credentials()
        roles = _aws(
            lambda: self.clients("ec2", creds).get_associated_enclave_certificate_iam_roles(
                CertificateArn=arn
            )["AssociatedRoles"],
            f"certificate {arn}: GetAssociatedEnclaveCertificateIamRoles",
        )
        mine = [r for r in roles if self.credentials.is_role(r.get("AssociatedRoleArn", ""))]
        if not mine:
            found = [r.get("AssociatedRoleArn") for r in roles]
            raise ParentAgentError(
                f"certificate {arn}: expected an enclave association with this instance's "
                f"role, found associations with {found or 'no role'}"
            )
        bucket, key = mine[0]["CertificateS3BucketName"], mine[0]["CertificateS3ObjectKey"]
        body = _aws(
            lambda: self.clients("s3", creds).get_object(Bucket=bucket, Key=key)["Body"].read(),
            f"certificate bundle s3://{bucket}/{key}",
        )
        return prov.CertificateBundle.from_s3_object(body)

    def sealed_secrets(
        self, creds: prov.Credentials | None = None
    ) -> tuple[list[prov.SecretSpec], list[str]]:
        """The sealed secrets that exist, and the names still waiting to be sealed."""
        creds = creds or self.credentials.credentials()
        ready: list[prov.SecretSpec] = []
        waiting: list[str] = []
        if not self.config.secrets:
            return ready, waiting
        ssm = self.clients("ssm", creds)
        for ref in self.config.secrets:
            value = _aws(
                lambda r=ref: ssm.get_parameter(Name=r.parameter)["Parameter"]["Value"],
                f"SSM parameter {ref.parameter} (secret {ref.name})",
            )
            if value == UNSEALED:
                waiting.append(ref.name)
                continue
            try:
                ready.append(prov.SecretSpec(name=ref.name, ciphertext_b64=value))
            except InvalidInput:
                raise ParentAgentError(
                    f"SSM parameter {ref.parameter} (secret {ref.name}): expected base64 KMS "
                    f"ciphertext or {UNSEALED!r}, found {len(value)} characters of something else"
                ) from None
        return ready, waiting

    # -- the enclave
    def provision_message(self) -> prov.Provision | list[str]:
        """The Provision to send now, or the names of secrets not sealed yet."""
        creds = self.credentials.credentials()
        bundle = self.certificate_bundle(creds)
        secrets, waiting = self.sealed_secrets(creds)
        if waiting:
            return waiting
        return prov.Provision(
            region=self.region,
            credentials=creds,
            kms_proxy_port=self.kms_proxy_port,
            certificate=bundle,
            secrets=tuple(secrets),
        )

    def _exchange(self, cid: int, msg: prov.Message) -> prov.Message:
        with self.vsock.connect(cid, prov.CONTROL_PORT) as sock:
            sock.settimeout(ENCLAVE_TIMEOUT_S)
            return prov.exchange(sock, msg)

    def status(self, cid: int | None = None) -> prov.Message:
        """The enclave's StatusReport (nothing secret in it)."""
        return self._exchange(self.config.cid if cid is None else cid, prov.Status())

    def provision_once(self, cid: int | None = None, *, force: bool = True) -> SyncResult:
        """Hand the enclave what it needs. Without `force`, an enclave that is ready with
        exactly this Provision (same credentials, bundle and secrets) is left alone."""
        cid = self.config.cid if cid is None else cid
        msg = self.provision_message()
        if isinstance(msg, list):
            return SyncResult("waiting", waiting=tuple(msg))
        names = tuple(s.name for s in msg.secrets)
        has_cert = msg.certificate is not None
        if not force and msg == self._delivered:
            st = self._exchange(cid, prov.Status())
            if isinstance(st, prov.StatusReport) and st.state == "ready":
                return SyncResult("unchanged", secrets=names, certificate=has_cert)
        reply = self._exchange(cid, msg)
        if isinstance(reply, prov.ErrorReply):
            self._delivered = None
            return SyncResult(
                "refused",
                secrets=names,
                certificate=has_cert,
                error=f"{reply.code}: {reply.message}",
            )
        if not isinstance(reply, prov.Provisioned):
            self._delivered = None
            return SyncResult("refused", error=f"unexpected reply {reply.TYPE}")
        self._delivered = msg
        if reply.state == "degraded":
            return self._degraded(cid, reply, names, has_cert)
        return SyncResult("provisioned", secrets=names, certificate=has_cert)

    def _degraded(
        self, cid: int, reply: prov.Provisioned, names: tuple[str, ...], has_cert: bool
    ) -> SyncResult:
        """The enclave holds part of what it was sent: what is missing, and why (its Status)."""
        held = set(reply.secrets)
        holds_cert = reply.certificate_sha256 is not None
        missing = (["certificate"] if has_cert and not holds_cert else []) + [
            f"secret {n}" for n in names if n not in held
        ]
        try:
            st = self._exchange(cid, prov.Status())
            why = st.last_error if isinstance(st, prov.StatusReport) else None
        except (EnclaveKitError, OSError, EOFError) as exc:
            why = f"Status not read: {one_line(exc)}"
        return SyncResult(
            "provisioned",
            secrets=tuple(n for n in names if n in held),
            certificate=holds_cert,
            degraded=tuple(missing),
            partial=True,
            error=why or "the enclave obtained only part of what it was sent",
        )

    def sync_once(self, cid: int | None = None, *, force: bool = True) -> SyncResult:
        """`provision_once` with every failure turned into an "error" result (for loops)."""
        try:
            return self.provision_once(cid, force=force)
        except (EnclaveKitError, OSError, EOFError) as exc:
            return SyncResult("error", error=one_line(exc))
        except Exception as exc:  # botocore's own errors: report, the loop retries
            return SyncResult("error", error=f"{type(exc).__name__}: {one_line(exc)}")

    def sync_loop(
        self,
        stop_event: threading.Event,
        resync_event: threading.Event,
        on_state: Callable[[SyncResult], None],
        *,
        cid: int | None = None,
        fast: float = SYNC_FAST_S,
        slow: float = SYNC_SLOW_S,
    ) -> None:
        """Provision, then re-sync every `slow` seconds (every `fast` until the enclave first
        answered), at once when `resync_event` is set (which always re-sends), until stopped."""
        answered = False
        force = True
        while not stop_event.is_set():
            result = self.sync_once(cid, force=force)
            answered = answered or result.answered
            on_state(result)
            resync_event.wait(slow if answered else fast)
            force = resync_event.is_set() or not result.answered
            resync_event.clear()


def _aws(call: Callable[[], Any], what: str) -> Any:
    """Run one AWS call; its failure becomes a one-line ParentAgentError naming `what`."""
    try:
        return call()
    except Exception as exc:
        answered = aws_error(exc)
        if answered is not None:  # botocore ClientError: AWS answered no
            code, message = answered
            if code in ("ParameterNotFound", "NoSuchKey", "NoSuchBucket"):
                raise ParentAgentError(
                    f"{what}: not found ({code}); expected it to exist"
                ) from None
            raise ParentAgentError(f"{what}: {code}: {message or 'Exception'}") from None
        if type(exc).__module__.startswith("botocore"):  # no answer: endpoint, network
            raise ParentAgentError(f"{what}: {type(exc).__name__}: {one_line(exc)}") from None
        raise
