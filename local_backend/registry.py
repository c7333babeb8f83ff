"""The endpoint's image registry: the OCI Distribution API (v2) that ECR speaks, on loopback.

Served by the endpoint on its own port under `/v2/` (local_backend.server routes the requests
that carry no SigV4 signature here), so the ECR repository URIs and GetAuthorizationToken's
`proxyEndpoint` (local_backend.moto_ext.ecr) name it: `127.0.0.1:<port>/<account>/<region>/
<repository>`. As on ECR:

- every request needs `Authorization: Basic AWS:<password>` with a password from
  GetAuthorizationToken for the account and region in the path (`/v2/` answers 401 with a Basic
  challenge; a wrong or expired token is 401, another account's repository 403 DENIED);
- blobs upload monolithically (POST ?digest=) or in chunks (POST, PATCH..., PUT ?digest=), and a
  blob whose bytes do not hash to the digest given is refused (400 DIGEST_INVALID); a blob is
  visible in the repository it was pushed to (or mounted into);
- manifests (Docker v2 schema 2, manifest lists, OCI manifests and indexes) go to ECR's PutImage,
  so the image appears in DescribeImages/BatchGetImage with the manifest's SHA-256 as digest,
  and its layers must have been pushed first (400 MANIFEST_BLOB_UNKNOWN).

Blobs live in `<state>/registry/blobs/sha256/` (they survive `local stop`/`start` as files); the
images and which repository holds which blob are ECR state, saved with the rest of the endpoint
(local_backend.persist).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from moto.core.exceptions import ServiceException
from moto.ecr.exceptions import ImageAlreadyExistsException, InvalidParameterException

from enclavekit.errors import EnclaveKitError
from local_backend.moto_ext.ecr import models as ecr

log = logging.getLogger("enclavekit.registry")
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
PREFIX = "/v2"
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 4 << 20  # ECR's manifest size limit
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_ROUTES = (
    ("upload", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<upload>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list$")),
)


def handles(environ: dict[str, Any]) -> bool:
    """Whether a request is for the registry: `/v2` or under it, with no SigV4 signature (an
    API Gateway v2 call to moto is signed and goes on to moto)."""
    path = environ.get("PATH_INFO", "")
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return False
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    return not auth.startswith("AWS4-") and "X-Amz-Credential=" not in str(
        environ.get("QUERY_STRING", "")
    )


class RegistryError(EnclaveKitError):
    """A request the registry refuses: HTTP status and the distribution spec's error code."""

    def __init__(
        self, status: str, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = list(headers)


@dataclass(frozen=True)
class Repo:
    """A repository as the registry path names it."""

    account: str
    region: str
    name: str

    @property
    def path(self) -> str:
        return ecr.repository_path(self.account, self.region, self.name)


@dataclass(frozen=True)
class Upload:
    repo: Repo
    path: Path


@dataclass
class Reply:
    status: str
    headers: list[tuple[str, str]]
    body: bytes | Iterator[bytes] = b""


class Registry:
    """The registry's WSGI application over the blobs in `<state>/registry/`."""

    def __init__(self, state_dir: Path, on_image: Callable[[], None] | None = None) -> None:
        root = ecr.registry_dir(state_dir)
        self.blobs = root / "blobs" / "sha256"
        self.uploads = root / "uploads"
        for d in (self.blobs, self.uploads):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in self.uploads.iterdir():  # uploads do not outlive the endpoint
            with contextlib.suppress(OSError):
                stale.unlink()
        self._uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()
        self._on_image = on_image or _save_soon(state_dir)

    # ---------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        try:
            reply = self._dispatch(environ, method)
        except RegistryError as exc:
            reply = _error(exc)
        except Exception:  # noqa: BLE001 - a bug answers as the spec's error, logged
            log.exception("registry: %s %s failed", method, environ.get("PATH_INFO"))
            reply = _error(RegistryError("500 Internal Server Error", "UNKNOWN", "internal error"))
        headers = [API_VERSION_HEADER, *reply.headers]
        sized = any(k.lower() == "content-length" for k, _ in headers)
        if not sized and isinstance(reply.body, bytes):
            headers.append(("Content-Length", str(len(reply.body))))
        start_response(reply.status, headers)
        if method == "HEAD":
            return [b""]
        return [reply.body] if isinstance(reply.body, bytes) else reply.body

    def _dispatch(self, environ: dict[str, Any], method: str) -> Reply:
        path = environ.get("PATH_INFO", "")
        claims = self._authenticate(environ)
        if path in (PREFIX, PREFIX + "/"):
            return Reply("200 OK", [("Content-Type", "application/json")], b"{}")
        for kind, pattern in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            repo = self._repo(match["name"], claims)
            _authorize(claims, repo, _action(kind, method, environ))
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            if kind == "upload":
                return self._upload(environ, method, repo, match["upload"], query, claims)
            if kind == "blob":
                return self._blob(method, repo, match["digest"])
            if kind == "manifest":
                return self._manifest(environ, method, repo, match["ref"])
            if method == "GET":
                return self._tags(repo)
            break
        raise RegistryError("404 Not Found", "NOT_FOUND", f"no such registry route: {path}")

    # ---------------------------------------------------------------- auth and names

    def _authenticate(self, environ: dict[str, Any]) -> ecr.TokenClaims:
        challenge = (
            "WWW-Authenticate",
            f'Basic realm="http://{ecr.registry_host()}/",service="ecr.amazonaws.com"',
        )
        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        if not auth:
            raise RegistryError(
                "401 Unauthorized", "UNAUTHORIZED", "Not Authorized", headers=[challenge]
            )
        scheme, _, value = auth.partition(" ")
        claims = None
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if user == "AWS":
                claims = ecr.verify_token(password)
        if claims is None:
            raise RegistryError(
                "401 Unauthorized",
                "UNAUTHORIZED",
                "Your authorization token is invalid or has expired: get a new one with "
                "GetAuthorizationToken (user AWS)",
                headers=[challenge],
            )
        return claims

    def _repo(self, name: str, claims: ecr.TokenClaims) -> Repo:
        parts = name.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise RegistryError(
                "404 Not Found",
                "NAME_UNKNOWN",
                f"expected a repository named <account>/<region>/<name>, found {name!r}",
            )
        repo = Repo(*parts)
        if (repo.account, repo.region) != (claims.account, claims.region):
            raise RegistryError(
                "403 Forbidden",
                "DENIED",
                f"Your authorization token is for registry {claims.account} in "
                f"{claims.region}; it does not give access to {repo.path}",
            )
        if repo.name not in ecr.backend(repo.account, repo.region).repositories:
            raise RegistryError(
                "404 Not Found",
                "NAME_UNKNOWN",
                f"The repository with name '{repo.name}' does not exist in the registry "
                f"with id '{repo.account}'",
            )
        return repo

    def _layers(self, repo: Repo) -> dict[str, int]:
        repository = ecr.backend(repo.account, repo.region).repositories[repo.name]
        layers: dict[str, int] = repository.layers
        return layers

    # ---------------------------------------------------------------- blobs

    def _blob_path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise RegistryError(
                "400 Bad Request",
                "DIGEST_INVALID",
                f"expected a digest sha256:<64 hex digits>, found {digest!r}",
            )
        return self.blobs / digest.split(":", 1)[1]

    def _blob(self, method: str, repo: Repo, digest: str) -> Reply:
        if method not in ("GET", "HEAD"):
            raise RegistryError("405 Method Not Allowed", "UNSUPPORTED", f"{method} on a blob")
        path = self._blob_path(digest)
        if digest not in self._layers(repo) or not path.is_file():
            raise RegistryError("404 Not Found", "BLOB_UNKNOWN", f"blob unknown: {digest}")
        size = path.stat().st_size
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(size)),
            ("Docker-Content-Digest", digest),
        ]
        return Reply("200 OK", headers, b"" if method == "HEAD" else _read_file(path))

    def _new_upload(self, repo: Repo) -> tuple[str, Upload]:
        upload_id = uuid.uuid4().hex
        path = self.uploads / upload_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        upload = Upload(repo, path)
        with self._lock:
            self._uploads[upload_id] = upload
        return upload_id, upload

    def _upload_reply(self, status: str, repo: Repo, upload_id: str, size: int) -> Reply:
        return Reply(
            status,
            [
                ("Location", f"{PREFIX}/{repo.path}/blobs/uploads/{upload_id}"),
                ("Docker-Upload-UUID", upload_id),
                ("Range", f"0-{max(size - 1, 0)}"),
                ("Content-Length", "0"),
            ],
        )

    def _upload(
        self,
        environ: dict[str, Any],
        method: str,
        repo: Repo,
        upload_id: str,
        query: dict[str, str],
        claims: ecr.TokenClaims,
    ) -> Reply:
        if not upload_id:
            if method != "POST":
                raise RegistryError("405 Method Not Allowed", "UNSUPPORTED", f"{method} uploads")
            mounted = self._mount(repo, query, claims)
            if mounted is not None:
                return mounted
            new_id, upload = self._new_upload(repo)
            if "digest" in query:  # monolithic: the whole blob in the POST
                _append(environ, upload.path)
                return self._complete(new_id, upload, query["digest"])
            return self._upload_reply("202 Accepted", repo, new_id, 0)
        with self._lock:
            upload = self._uploads.get(upload_id) if _UPLOAD_ID.match(upload_id) else None
        if upload is None or upload.repo != repo:
            raise RegistryError("404 Not Found", "BLOB_UPLOAD_UNKNOWN", "blob upload unknown")
        size = upload.path.stat().st_size
        if method == "GET":
            return self._upload_reply("204 No Content", repo, upload_id, size)
        if method == "DELETE":
            self._drop(upload_id)
            return Reply("204 No Content", [("Content-Length", "0")])
        if method == "PATCH":
            start = _range_start(environ.get("HTTP_CONTENT_RANGE", ""))
            if start is not None and start != size:
                raise RegistryError(
                    "416 Requested Range Not Satisfiable",
                    "BLOB_UPLOAD_INVALID",
                    f"chunk starts at {start}, the upload has {size} bytes",
                    headers=[("Range", f"0-{max(size - 1, 0)}")],
                )
            size += _append(environ, upload.path)
            return self._upload_reply("202 Accepted", repo, upload_id, size)
        if method == "PUT":
            digest = query.get("digest")
            if not digest:
                raise RegistryError(
                    "400 Bad Request", "DIGEST_INVALID", "expected ?digest= to complete an upload"
                )
            _append(environ, upload.path)
            return self._complete(upload_id, upload, digest)
        raise RegistryError("405 Method Not Allowed", "UNSUPPORTED", f"{method} on an upload")

    def _mount(self, repo: Repo, query: dict[str, str], claims: ecr.TokenClaims) -> Reply | None:
        """Cross-repository mount (`?mount=<digest>&from=<repo>`) within the token's registry;
        None when the blob is not there (the client then uploads it)."""
        digest, source = query.get("mount"), query.get("from")
        if not digest or not source:
            return None
        try:
            other = self._repo(source, claims)
            _authorize(claims, other, "ecr:GetDownloadUrlForLayer")
        except RegistryError:
            return None
        path = self._blob_path(digest)
        if digest not in self._layers(other) or not path.is_file():
            return None
        self._layers(repo)[digest] = path.stat().st_size
        return _blob_created(repo, digest)

    def _drop(self, upload_id: str) -> None:
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
        if upload is not None:
            with contextlib.suppress(FileNotFoundError):
                upload.path.unlink()

    def _complete(self, upload_id: str, upload: Upload, digest: str) -> Reply:
        """Move the upload into the blob store if its bytes hash to `digest`."""
        if not _ANY_DIGEST.match(digest):
            self._drop(upload_id)
            raise RegistryError(
                "400 Bad Request", "DIGEST_INVALID", f"expected algorithm:hex, found {digest!r}"
            )
        if not digest.startswith("sha256:"):
            self._drop(upload_id)
            raise RegistryError(
                "400 Bad Request", "DIGEST_INVALID", f"unsupported digest algorithm in {digest}"
            )
        target = self._blob_path(digest)
        actual = _file_digest(upload.path)
        if actual != digest:
            self._drop(upload_id)
            raise RegistryError(
                "400 Bad Request",
                "DIGEST_INVALID",
                f"provided digest {digest} did not match uploaded content ({actual})",
            )
        size = upload.path.stat().st_size
        with self._lock:
            self._uploads.pop(upload_id, None)
        os.replace(upload.path, target)
        self._layers(upload.repo)[digest] = size
        return _blob_created(upload.repo, digest)

    # ---------------------------------------------------------------- manifests

    def _find_image(self, repo: Repo, ref: str) -> Any:
        images = ecr.backend(repo.account, repo.region).repositories[repo.name].images
        for image in images:
            if ref == image.get_image_digest() or ref in image.image_tags:
                return image
        raise RegistryError(
            "404 Not Found",
            "MANIFEST_UNKNOWN",
            f"Requested image not found: {repo.path}:{ref}",
        )

    def _manifest(self, environ: dict[str, Any], method: str, repo: Repo, ref: str) -> Reply:
        if method in ("GET", "HEAD"):
            image = self._find_image(repo, ref)
            body = image.image_manifest.encode()
            headers = [
                ("Content-Type", image.image_manifest_media_type or ecr.DOCKER_MANIFEST),
                ("Content-Length", str(len(body))),
                ("Docker-Content-Digest", image.get_image_digest()),
            ]
            return Reply("200 OK", headers, b"" if method == "HEAD" else body)
        if method != "PUT":
            raise RegistryError("405 Method Not Allowed", "UNSUPPORTED", f"{method} on a manifest")
        body = _read_body(environ, MAX_MANIFEST_BYTES)
        digest = ecr.manifest_digest(body)
        tag: str | None = None
        if ":" in ref:
            if ref != digest:
                raise RegistryError(
                    "400 Bad Request",
                    "DIGEST_INVALID",
                    f"provided digest {ref} did not match the manifest's ({digest})",
                )
        elif not _TAG.match(ref):
            raise RegistryError("400 Bad Request", "TAG_INVALID", f"invalid tag {ref!r}")
        else:
            tag = ref
        try:
            text = body.decode("utf-8")
            parsed = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise RegistryError(
                "400 Bad Request", "MANIFEST_INVALID", "manifest invalid: not UTF-8 JSON"
            ) from None
        media_type = str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip()
        if media_type not in ecr.MANIFEST_TYPES and isinstance(parsed, dict):
            media_type = str(parsed.get("mediaType") or "")
        if media_type not in ecr.MANIFEST_TYPES:
            raise RegistryError(
                "415 Unsupported Media Type",
                "MANIFEST_INVALID",
                f"manifest invalid: expected one of {', '.join(ecr.MANIFEST_TYPES)}, "
                f"found {media_type!r}",
            )
        backend = ecr.backend(repo.account, repo.region)
        try:
            backend.put_image(repo.name, text, tag, media_type, digest)
        except ImageAlreadyExistsException:
            pass  # the same image under the same tag: a push again is a no-op
        except InvalidParameterException as exc:
            raise RegistryError("400 Bad Request", "MANIFEST_INVALID", exc.message) from None
        except ServiceException as exc:
            code = {
                "LayersNotFoundException": "MANIFEST_BLOB_UNKNOWN",
                "ReferencedImagesNotFoundException": "MANIFEST_UNKNOWN",
                "ImageTagAlreadyExistsException": "TAG_INVALID",
                "ImageDigestDoesNotMatchException": "DIGEST_INVALID",
            }.get(exc.code, "MANIFEST_INVALID")
            raise RegistryError("400 Bad Request", code, exc.message) from None
        log.info("registry: pushed %s:%s (%s)", repo.path, tag or "-", digest)
        self._on_image()
        return Reply(
            "201 Created",
            [
                ("Location", f"{PREFIX}/{repo.path}/manifests/{digest}"),
                ("Docker-Content-Digest", digest),
                ("Content-Length", "0"),
            ],
        )

    def _tags(self, repo: Repo) -> Reply:
        images = ecr.backend(repo.account, repo.region).repositories[repo.name].images
        tags = sorted({t for image in images for t in image.image_tags if t})
        body = json.dumps({"name": repo.path, "tags": tags}).encode()
        return Reply("200 OK", [("Content-Type", "application/json")], body)


# -------------------------------------------------------------------- helpers


def _save_soon(state_dir: Path) -> Callable[[], None]:
    """Save the endpoint's state shortly after an image is pushed (coalesced, in a thread):
    the image records are ECR state, the blobs are already files."""
    pending = threading.Event()

    def save() -> None:
        if pending.is_set():
            return
        pending.set()

        def run() -> None:
            from local_backend import persist

            pending.clear()
            try:
                persist.snapshot(state_dir, background=True)
            except Exception:  # noqa: BLE001 - the stop-time snapshot still comes
                log.warning("state not saved after an image push", exc_info=True)

        timer = threading.Timer(0.5, run)
        timer.daemon = True  # the stop-time snapshot covers a push this one would miss
        timer.start()

    return save


def _action(kind: str, method: str, environ: dict[str, Any]) -> str:
    """The ECR API action a registry request is authorized as (ECR's IAM reference)."""
    if kind == "blob":
        return (
            "ecr:BatchCheckLayerAvailability" if method == "HEAD" else "ecr:GetDownloadUrlForLayer"
        )
    if kind == "upload":
        if method == "POST":
            return "ecr:InitiateLayerUpload"
        return "ecr:UploadLayerPart" if method == "PATCH" else "ecr:CompleteLayerUpload"
    if kind == "manifest":
        return "ecr:PutImage" if method == "PUT" else "ecr:BatchGetImage"
    return "ecr:ListImages"


def _authorize(claims: ecr.TokenClaims, repo: Repo, action: str) -> None:
    """The token carries its caller's permissions, evaluated now as for the ECR API call
    (when the endpoint enforces IAM): 403 DENIED with AWS's wording otherwise."""
    from local_backend.moto_ext.iam_authz import models as iam
    from local_backend.moto_ext.iam_authz import responses as iam_responses

    if not iam_responses.enabled():
        return
    caller = claims.caller()
    resource = ecr.repository_arn(repo.account, repo.region, repo.name)
    keys = iam.request_keys(caller, repo.region, {})
    verdict = iam.decide(
        caller,
        action,
        resource,
        keys,
        iam.caller_policies(caller),
        iam.resource_policy("ecr", action, resource, repo.region),
    )
    if not verdict.allowed:
        log.warning("registry: %s denied %s on %s", caller.display_arn, action, resource)
        raise RegistryError(
            "403 Forbidden",
            "DENIED",
            f"User: {caller.display_arn} is not authorized to perform: {action} on resource: "
            f"{resource} {verdict.reason}",
        )


def _error(exc: RegistryError) -> Reply:
    body = json.dumps({"errors": [{"code": exc.code, "message": exc.message}]}).encode()
    return Reply(exc.status, [("Content-Type", "application/json"), *exc.headers], body)


def _blob_created(repo: Repo, digest: str) -> Reply:
    return Reply(
        "201 Created",
        [
            ("Location", f"{PREFIX}/{repo.path}/blobs/{quote(digest)}"),
            ("Docker-Content-Digest", digest),
            ("Content-Length", "0"),
        ],
    )


def _range_start(header: str) -> int | None:
    found = re.match(r"^(?:bytes\s+)?(\d+)-(\d+)", header.strip())
    return int(found.group(1)) if found else None


def _body_chunks(environ: dict[str, Any]) -> Iterator[bytes]:
    """The request body in chunks: Content-Length bytes, or until the end of a chunked body."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        left = int(length)
        while left > 0:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    elif environ.get("wsgi.input_terminated"):
        while chunk := stream.read(CHUNK):
            yield chunk


def _append(environ: dict[str, Any], path: Path) -> int:
    written = 0
    with path.open("ab") as fh:
        for chunk in _body_chunks(environ):
            fh.write(chunk)
            written += len(chunk)
    return written


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    out = bytearray()
    for chunk in _body_chunks(environ):
        out += chunk
        if len(out) > limit:
            raise RegistryError(
                "413 Payload Too Large", "SIZE_INVALID", f"manifest larger than {limit} bytes"
            )
    return bytes(out)


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def _read_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk
