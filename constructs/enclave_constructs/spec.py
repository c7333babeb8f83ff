"""HostSpec: the one description of an enclave host from which everything else is derived.

Both `Metadata["enclavekit:host"]` (read by the local backend and the emulator) and the real
Amazon Linux 2023 user data are rendered from the same frozen HostSpec, so they cannot drift:
change a size, a port or the certificate and both move together. Values may be CDK tokens
(logical ids, asset locations, the certificate ARN); they resolve at synth time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from enclavekit.contract import (
    DEFAULT_ENCLAVE_CID,
    ENCLAVE_TLS_PORT,
    HOST_CONFIG_PATH,
    HOST_METADATA_KEY,
    HOST_METADATA_VERSION,
    KMS_PROXY_PORT,
)
from enclavekit.errors import InvalidInput
from enclavekit.pcr import Measurements

ACM_TOKEN_LABEL = "enclavekit-acm-token"
EIF_DIR = "/opt/enclavekit"
AGENT_VENV = "/opt/enclavekit/venv"  # python3.11 + the pinned boto3 tree, nothing of ours
AGENT_PYTHON = "python3.11"  # AL2023's python3 is 3.9; enclavekit needs >= 3.11
AGENT_BUNDLE = "/opt/enclavekit/enclavekit-agent.pyz"  # enclavekit.agent_bundle, an S3 asset
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


@dataclass(frozen=True)
class ImageSpec:
    name: str
    slug: str
    measurements: Measurements
    debug: bool
    asset_bucket: str | None = None  # S3 location when the EIF ships as an asset
    asset_key: str | None = None
    host_path: str | None = None  # or a path already on the host


@dataclass(frozen=True)
class CertificateSpec:
    arn: str
    association: str  # logical id of the EnclaveCertificateIamRoleAssociation


@dataclass(frozen=True)
class SecretSpec:
    name: str
    key: str  # logical id of the KMS key
    parameter: str  # SSM parameter name holding the base64 ciphertext


@dataclass(frozen=True)
class AgentSpec:
    """The parent agent bundle as shipped: its S3 asset, SHA-256 and pinned dependencies."""

    bucket: str
    key: str
    sha256: str  # checked on the host before the agent ever runs
    requirements: tuple[str, ...]  # `name==version`, pip-installed into AGENT_VENV

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise InvalidInput(
                f"agent bundle sha256: expected 64 lower-case hex digits, found {self.sha256!r}"
            )
        for pin in self.requirements:
            if not isinstance(pin, str) or not _PIN.match(pin):
                raise InvalidInput(
                    f"agent bundle requirement: expected 'name==version', found {pin!r}"
                )


@dataclass(frozen=True)
class HostSpec:
    """Everything the host runs: image, allocator, service, role, certificate, secrets."""

    image: ImageSpec | None
    cpu_count: int
    memory_mib: int
    debug_mode: bool
    port: int
    domain: str | None
    role: str
    region: str
    certificate: CertificateSpec | None = None
    secrets: tuple[SecretSpec, ...] = ()
    attested_keys: tuple[str, ...] = ()
    cid: int = DEFAULT_ENCLAVE_CID
    enclave_port: int = ENCLAVE_TLS_PORT
    agent: AgentSpec | None = None  # required whenever the host runs an EIF (the agent does)

    # ------------------------------------------------------------------ Metadata
    def metadata(self) -> dict[str, Any]:
        """`Metadata["enclavekit:host"]` exactly as docs/ARCHITECTURE.md "Host Metadata".

        Fields that would be null are left out: CDK drops nulls from templates, so omitting
        them here keeps this dict equal to what the template carries.
        """
        image = None
        if self.image is not None:
            m = self.image.measurements
            asset = (
                {"bucket": self.image.asset_bucket, "key": self.image.asset_key}
                if self.image.asset_bucket is not None
                else None
            )
            image = {
                "name": self.image.name,
                "measurements": {f"PCR{n}": v.hex() for n, v in m.by_index().items()},
                "asset": asset,
                "debug": self.image.debug,
            }
        return _without_none(
            {
                "version": HOST_METADATA_VERSION,
                "image": image,
                "enclave": {
                    "cpu_count": self.cpu_count,
                    "memory_mib": self.memory_mib,
                    "cid": self.cid,
                    "debug_mode": self.debug_mode,
                },
                "service": {
                    "port": self.port,
                    "enclave_port": self.enclave_port,
                    "domain": self.domain,
                },
                "role": self.role,
                "certificate": (
                    {"arn": self.certificate.arn, "association": self.certificate.association}
                    if self.certificate
                    else None
                ),
                "secrets": [
                    {"name": s.name, "key": s.key, "parameter": s.parameter} for s in self.secrets
                ],
                "attested_keys": list(self.attested_keys),
            }
        )

    # ------------------------------------------------------------------ user data
    @property
    def acm_agent(self) -> bool:
        """ACM's own token enclave terminates TLS (a certificate and no image of ours)."""
        return self.certificate is not None and self.image is None

    def eif_path(self) -> str | None:
        if self.image is None:
            return None
        if self.image.host_path:
            return self.image.host_path
        if self.image.asset_bucket is not None:
            return f"{EIF_DIR}/{self.image.slug}.eif"
        return None

    def user_data(self) -> str:
        """The Amazon Linux 2023 boot script (bash, without the shebang line)."""
        parts = [self._base()]
        if self.acm_agent:
            parts.append(self._acm())
        elif self.image is not None:
            parts.append(self._image())
        return "\n".join(parts)

    def _base(self) -> str:
        kms = f"kms.{self.region}.amazonaws.com"
        return f"""set -euo pipefail
# enclavekit host: rendered from the same HostSpec as Metadata["{HOST_METADATA_KEY}"]
dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel
usermod -aG ne ec2-user || true
install -d -m 0755 /etc/nitro_enclaves
cat > /etc/nitro_enclaves/allocator.yaml <<'ENCLAVEKIT_EOF'
---
# the pool every enclave on this host is carved from (CPU 0's core stays with the parent)
memory_mib: {self.memory_mib}
cpu_count: {self.cpu_count}
ENCLAVEKIT_EOF
cat > /etc/nitro_enclaves/vsock-proxy.yaml <<'ENCLAVEKIT_EOF'
# only this region's KMS endpoint is reachable from the enclave (vsock port {KMS_PROXY_PORT})
allowlist:
- {{address: {kms}, port: 443}}
ENCLAVEKIT_EOF
systemctl enable --now nitro-enclaves-allocator.service
systemctl enable --now nitro-enclaves-vsock-proxy.service"""

    def _acm(self) -> str:
        assert self.certificate is not None
        label = ACM_TOKEN_LABEL
        key_uri = (
            "engine:pkcs11:pkcs11:model=p11ne-token;manufacturer=Amazon;"
            f"token={label};id=%01;object=acm-key;type=private"
        )
        server_name = self.domain or "_"
        return f"""# ACM for Nitro Enclaves: the key is released only to the attested token enclave
dnf install -y aws-nitro-enclaves-acm nginx
cat > /etc/nitro_enclaves/acm.yaml <<'ENCLAVEKIT_EOF'
enclave:
  cpu_count: {self.cpu_count}
  memory_mib: {self.memory_mib}
options:
  service: nginx
  force_start: true
  sync_interval_secs: 600
log:
  level: Info
tokens:
- label: {label}
  source:
    Acm:
      certificate_arn: "{self.certificate.arn}"
  target:
    NginxStanza:
      path: /etc/pki/nginx/nginx-acm.conf
      user: nginx
  refresh_interval_secs: 43200
ENCLAVEKIT_EOF
# AL2023: OpenSSL must initialise the pkcs11 engine or nginx fails with "not initialised"
install -d -m 0755 /etc/pki/tls/openssl.d
cat > /etc/pki/tls/openssl.d/openssl-acm.cnf <<'ENCLAVEKIT_EOF'
[openssl_init]
engines = engine_section

[engine_section]
pkcs11 = pkcs11_section

[pkcs11_section]
engine_id = pkcs11
init = 1
ENCLAVEKIT_EOF
grep -q 'openssl-acm.cnf' /etc/pki/tls/openssl.cnf || \\
  echo '.include /etc/pki/tls/openssl.d/openssl-acm.cnf' >> /etc/pki/tls/openssl.cnf
grep -q '^ssl_engine pkcs11;' /etc/nginx/nginx.conf || \\
  sed -i '/^pid /a ssl_engine pkcs11;' /etc/nginx/nginx.conf
cat > /etc/nginx/conf.d/enclavekit-tls.conf <<'ENCLAVEKIT_EOF'
server {{
    listen {self.port} ssl;
    server_name {server_name};
    ssl_protocols TLSv1.2;
    # the agent writes: ssl_certificate_key "{key_uri}";
    include "/etc/pki/nginx/nginx-acm.conf";
    location / {{ return 200 "ok\\n"; }}
}}
ENCLAVEKIT_EOF
systemctl enable --now nitro-enclaves-acm.service
systemctl enable nginx"""

    def _image(self) -> str:
        assert self.image is not None
        slug = self.image.slug
        path = self.eif_path()
        lines = ["# the enclave image, run with the allocator's sizes"]
        if self.image.asset_bucket is not None:
            lines += [
                f"install -d -m 0755 {EIF_DIR}",
                f"aws s3 cp 's3://{self.image.asset_bucket}/{self.image.asset_key}' '{path}'",
            ]
        if path is None:
            lines.append(f"# image {self.image.name}: no EIF shipped; put it on the host to run it")
            return "\n".join(lines)
        debug = " --debug-mode" if self.debug_mode else ""
        lines.append(f"""cat > /etc/systemd/system/enclavekit-{slug}.service <<'ENCLAVEKIT_EOF'
[Unit]
Description=enclavekit enclave {self.image.name}
Requires=nitro-enclaves-allocator.service
After=nitro-enclaves-allocator.service nitro-enclaves-vsock-proxy.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/nitro-cli run-enclave --enclave-name {slug} --eif-path {path} \
--cpu-count {self.cpu_count} --memory {self.memory_mib} --enclave-cid {self.cid}{debug}
ExecStop=/usr/bin/nitro-cli terminate-enclave --enclave-name {slug}

[Install]
WantedBy=multi-user.target
ENCLAVEKIT_EOF
# the parent relays TLS bytes only: the enclave terminates TLS on vsock port {self.enclave_port}
dnf install -y socat
cat > /etc/systemd/system/enclavekit-{slug}-relay.service <<'ENCLAVEKIT_EOF'
[Unit]
Description=enclavekit relay tcp/{self.port} -> vsock {self.cid}:{self.enclave_port}
After=enclavekit-{slug}.service
Requires=enclavekit-{slug}.service

[Service]
ExecStart=/usr/bin/socat TCP-LISTEN:{self.port},fork,reuseaddr \
VSOCK-CONNECT:{self.cid}:{self.enclave_port}
Restart=always

[Install]
WantedBy=multi-user.target
ENCLAVEKIT_EOF
""")
        lines.append(self._agent(slug))
        return "\n".join(lines)

    def host_config(self) -> dict[str, Any]:
        """/etc/enclavekit/host.json: the Metadata plus the region, for the parent agent.

        Values that are CDK tokens (the certificate ARN, the asset bucket, SSM parameter names)
        stay tokens in the rendered text, so CloudFormation substitutes them in the user data
        (Fn::Join) at deploy time: the file holds resolved values, like the local backend's
        view of the Metadata.
        """
        return {**self.metadata(), "region": self.region}

    def _agent(self, slug: str) -> str:
        """The parent agent: the instance role's credentials (IMDSv2), the certificate bundle
        and the sealed secrets, handed to the enclave over vsock port 5005, re-synced.

        The agent is the zipapp this stack ships (enclavekit.agent_bundle), fetched with the
        instance role and checked against its SHA-256 before anything runs it."""
        config = json.dumps(self.host_config(), sort_keys=True, separators=(",", ":"))
        assert self.image is not None
        if self.agent is None:
            raise InvalidInput(
                f"host spec for image {self.image.name!r}: expected the parent agent bundle "
                "(AgentSpec: S3 asset, sha256, requirements), found none"
            )
        pins = " ".join(f"'{p}'" for p in self.agent.requirements)
        part = f"{AGENT_BUNDLE}.part"
        return f"""# parent agent: credentials, certificate, secrets -> the enclave (vsock 5005)
install -d -m 0755 /etc/enclavekit {EIF_DIR}
cat > {HOST_CONFIG_PATH} <<'ENCLAVEKIT_EOF'
{config}
ENCLAVEKIT_EOF
# boto3 (the agent's one third-party dependency, with its tree) pinned from PyPI into a
# python3.11 venv: AL2023's python3-boto3 RPM is built for the system python3.9 only.
dnf install -y {AGENT_PYTHON} {AGENT_PYTHON}-pip
{AGENT_PYTHON} -m venv {AGENT_VENV}
{AGENT_VENV}/bin/pip install --quiet --disable-pip-version-check --no-cache-dir \\
  --only-binary=:all: {pins}
# the agent itself: this stack's zipapp asset (enclavekit.agent_bundle), SHA-256 checked
command -v aws >/dev/null || dnf install -y awscli-2
aws s3 cp --only-show-errors --region {self.region} \\
  's3://{self.agent.bucket}/{self.agent.key}' '{part}'
echo '{self.agent.sha256}  {part}' | sha256sum --check --strict --quiet || \\
  {{ echo 'enclavekit: agent bundle SHA-256 mismatch' >&2; exit 1; }}
install -m 0644 '{part}' {AGENT_BUNDLE} && rm -f '{part}'
cat > /etc/systemd/system/enclavekit-{slug}-agent.service <<'ENCLAVEKIT_EOF'
[Unit]
Description=enclavekit parent agent for enclave {self.image.name}
After=enclavekit-{slug}.service nitro-enclaves-vsock-proxy.service network-online.target
Requires=enclavekit-{slug}.service
Wants=network-online.target

[Service]
ExecStart={AGENT_VENV}/bin/python3 -I {AGENT_BUNDLE} parent-agent --config {HOST_CONFIG_PATH} \
--enclave-cid {self.cid}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
ENCLAVEKIT_EOF
systemctl daemon-reload
systemctl enable --now enclavekit-{slug}.service enclavekit-{slug}-relay.service \
  enclavekit-{slug}-agent.service"""


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
