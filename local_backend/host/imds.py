"""The instance metadata service of one host, at 169.254.169.254:80 inside its network only.

IMDSv2 as EC2's: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600)
returns a token; a request carrying a token must carry a valid one (401 otherwise); a request
without one is IMDSv1, refused with 401 when the instance's `HttpTokens` is `required`. The
listening socket lives in the host's network namespace; this server runs in the launcher, so
credentials come from the local endpoint on the machine (STS AssumeRole of the instance
profile's role, as EC2 hands out the role's credentials) without the host reaching the machine.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_TTL = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


class Metadata:
    """The answers of one instance's IMDS."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.options = info.get("metadata_options") or {}
        self.tokens: dict[str, float] = {}
        self.lock = threading.Lock()
        self._creds: Any = None

    @property
    def tokens_required(self) -> bool:
        return str(self.options.get("HttpTokens", "optional")).lower() == "required"

    @property
    def role_name(self) -> str | None:
        roles = self.info.get("role_arns") or []
        return roles[0].rsplit("/", 1)[1] if roles else None

    def credentials(self) -> dict[str, str]:
        from local_backend.parent.agent import AssumeRoleCredentials, ec2_sts

        with self.lock:
            if self._creds is None:
                endpoint, region = self.info["endpoint"], self.info["region"]
                self._creds = AssumeRoleCredentials(
                    lambda: ec2_sts(endpoint, region),
                    (self.info.get("role_arns") or [None])[0],
                    self.info["instance_id"],
                )
        c = self._creds.credentials()
        return {
            "Code": "Success",
            "LastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.session_token,
            "Expiration": c.expiration,
        }

    def document(self) -> dict[str, Any]:
        i = self.info
        return {
            "accountId": i.get("account_id"),
            "architecture": "x86_64",
            "availabilityZone": self.zone,
            "imageId": i.get("image_id"),
            "instanceId": i["instance_id"],
            "instanceType": i.get("instance_type"),
            "pendingTime": i.get("launched", ""),
            "privateIp": i.get("private_ip"),
            "region": i["region"],
            "version": "2017-09-30",
        }

    @property
    def zone(self) -> str:
        return self.info.get("availability_zone") or f"{self.info['region']}a"

    def lookup(self, path: str) -> tuple[int, str]:
        """(status, body) for a GET of `path` (below /latest)."""
        i = self.info
        ip = i.get("private_ip") or ""
        host = f"ip-{ip.replace('.', '-')}.ec2.internal"
        meta: dict[str, Any] = {
            "ami-id": i.get("image_id") or "",
            "hostname": host,
            "instance-id": i["instance_id"],
            "instance-type": i.get("instance_type") or "",
            "local-hostname": host,
            "local-ipv4": ip,
            "placement/availability-zone": self.zone,
            "placement/region": i["region"],
            "services/domain": "amazonaws.com",
            "services/partition": "aws",
        }
        if self.role_name:
            meta["iam/info"] = None
            meta["iam/security-credentials/"] = self.role_name
        tags_enabled = str(self.options.get("InstanceMetadataTags", "disabled")) == "enabled"
        if tags_enabled:
            meta["tags/instance/"] = "\n".join(sorted((i.get("tags") or {}).keys()))
        if path in ("/user-data", "/user-data/"):
            data = i.get("user_data")
            return (200, base64.b64decode(data).decode(errors="replace")) if data else (404, "")
        if path == "/dynamic/instance-identity/document":
            return 200, json.dumps(self.document(), indent=2)
        if not path.startswith("/meta-data"):
            return (200, "dynamic\nmeta-data\nuser-data") if path in ("", "/") else (404, "")
        key = path[len("/meta-data") :].lstrip("/")
        if key == "":
            tops = sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in meta})
            return 200, "\n".join(tops)
        if key == "iam/info" and self.role_name:
            return 200, json.dumps(
                {
                    "Code": "Success",
                    "InstanceProfileArn": i.get("instance_profile_arn"),
                    "InstanceProfileId": "AIPA",
                }
            )
        if key == "iam/security-credentials":  # EC2 answers with or without the slash
            key += "/"
        if key.startswith("iam/security-credentials/") and self.role_name:
            name = key[len("iam/security-credentials/") :]
            if name == "":
                return 200, self.role_name
            if name == self.role_name:
                return 200, json.dumps(self.credentials(), indent=2)
            return 404, ""
        if tags_enabled and key.startswith("tags/instance/") and key != "tags/instance/":
            value = (i.get("tags") or {}).get(key[len("tags/instance/") :])
            return (200, value) if value is not None else (404, "")
        if key in meta and meta[key] is not None:
            return 200, str(meta[key])
        children = sorted(
            {
                k[len(key) :].lstrip("/").split("/")[0]
                for k in meta
                if k.startswith(key.rstrip("/") + "/")
            }
        )
        return (200, "\n".join(children)) if children else (404, "")


class _Handler(BaseHTTPRequestHandler):
    server_version = "EC2ws"
    md: Metadata

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _reply(self, status: int, body: str = "", ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802 - http.server naming
        if self.path.split("?")[0] != "/latest/api/token":
            return self._reply(404)
        if self.headers.get("X-Forwarded-For"):
            return self._reply(403)  # EC2 refuses token requests that went through a proxy
        ttl = self.headers.get(TTL_HEADER)
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
            return self._reply(400)
        token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
        with self.md.lock:
            self.md.tokens[token] = time.time() + int(ttl)
        self.send_response(200)
        self.send_header(TTL_HEADER, ttl)
        self.send_header("Content-Length", str(len(token)))
        self.end_headers()
        self.wfile.write(token.encode())

    def do_GET(self) -> None:  # noqa: N802
        token = self.headers.get(TOKEN_HEADER)
        if token is not None:
            with self.md.lock:
                until = self.md.tokens.get(token, 0)
            if until < time.time():
                return self._reply(401)
        elif self.md.tokens_required:
            return self._reply(401)
        path = self.path.split("?")[0]
        if not path.startswith("/latest"):
            return self._reply(200 if path == "/" else 404, "latest" if path == "/" else "")
        try:
            status, body = self.md.lookup(path[len("/latest") :])
        except Exception as exc:  # noqa: BLE001 - IMDS answers, never crashes
            return self._reply(500, str(exc))
        ctype = "application/json" if body.startswith("{") else "text/plain"
        self._reply(status, body, ctype)


def serve(listener: socket.socket, info: dict[str, Any]) -> ThreadingHTTPServer | None:
    """Serve IMDS on `listener` (bound in the host's namespace) on a daemon thread."""
    if str((info.get("metadata_options") or {}).get("HttpEndpoint", "enabled")) == "disabled":
        listener.close()
        return None
    md = Metadata(info)
    handler = type("Handler", (_Handler,), {"md": md})
    server = ThreadingHTTPServer(listener.getsockname(), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="imds").start()
    if md.role_name:
        # EC2 has the role's credentials ready when the instance boots; fetching them now
        # (STS on the endpoint) keeps that wait out of the user data's first AWS call.
        threading.Thread(target=_warm, args=(md,), daemon=True, name="imds-warm").start()
    return server


def _warm(md: Metadata) -> None:
    with contextlib.suppress(Exception):  # the first request then tries again and answers why
        md.credentials()
