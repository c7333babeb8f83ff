"""ECR on moto, aimed at the endpoint's own image registry (local_backend.registry).

moto's ECR has the repository API but names the real registry host
(`<account>.dkr.ecr.<region>.amazonaws.com`) in `repositoryUri` and `proxyEndpoint`, hands out
the fixed password `<account>-auth-token`, and derives an image digest from its layer digests.
cdk-assets takes the repository URI from DescribeRepositories and the `docker login` address
from GetAuthorizationToken, so with moto's values a push would go to real ECR. Here:

- `repositoryUri` is `127.0.0.1:<port>/<account>/<region>/<name>`: the registry the endpoint
  serves on its own loopback port, one namespace per account and region (on AWS the host says
  which registry; here the path does).
- GetAuthorizationToken's password is a token the registry can check: the account, region and
  caller it was issued to and its expiry (12 hours, as ECR's), MACed with a key kept in the
  state dir, so only a token this endpoint issued opens its registry.
- PutImage (the API, and every manifest pushed to the registry) records the image as ECR does:
  its digest is the SHA-256 of the manifest bytes; the layers and config it names must be in
  the repository (`LayersNotFoundException`); a given `imageDigest` must match
  (`ImageDigestDoesNotMatchException`); an immutable repository refuses to move a tag
  (`ImageTagAlreadyExistsException`); a moved tag leaves the older image untagged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moto.core.exceptions import ServiceException
from moto.ecr.exceptions import (
    ImageAlreadyExistsException,
    InvalidParameterException,
    RepositoryNotFoundException,
)
from moto.ecr.models import ECRBackend, Image, Repository, ecr_backends

from enclavekit.errors import BackendError

from ..identity import Caller

REGISTRY_DIR = "registry"
TOKEN_KEY_FILE = "token.key"
TOKEN_PREFIX = "ekr1"
TOKEN_LIFETIME_S = 12 * 3600  # ECR's authorization tokens are valid for 12 hours
REGISTRY_IP = "127.0.0.1"

# Manifest media types the registry and PutImage accept (ECR's list).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)

_config: dict[str, Any] = {"state_dir": None, "port": None}
_key_lock = threading.Lock()


def set_registry_port(port: int) -> None:
    """Where the registry listens: the endpoint's own port (the endpoint calls this)."""
    _config["port"] = int(port)


def registry_host() -> str:
    """`127.0.0.1:<port>`: the registry host in repository URIs and tokens' proxyEndpoint."""
    port = _config["port"]
    if port is None:
        raise BackendError("the local image registry has no address yet (the endpoint sets it)")
    return f"{REGISTRY_IP}:{port}"


def repository_path(account: str, region: str, name: str) -> str:
    """The repository's name in the registry: `<account>/<region>/<name>`."""
    return f"{account}/{region}/{name}"


def repository_uri(account: str, region: str, name: str) -> str:
    return f"{registry_host()}/{repository_path(account, region, name)}"


def registry_dir(state_dir: Path | None = None) -> Path:
    base = state_dir if state_dir is not None else _config["state_dir"]
    if base is None:
        raise BackendError("the local image registry has no state dir yet (the endpoint sets it)")
    d = Path(base) / REGISTRY_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------ authorization tokens


@dataclass(frozen=True)
class TokenClaims:
    """What an authorization token was issued for: the registry (account, region) and the
    caller whose permissions it carries (ECR: the token has the scope of the IAM principal
    that asked for it), as `identity.Caller`'s fields."""

    account: str
    region: str
    principal: str
    display_arn: str
    kind: str
    name: str | None
    expires: int

    def caller(self) -> Caller:
        return Caller("", self.account, self.principal, self.display_arn, self.kind, self.name)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_key() -> bytes:
    path = registry_dir() / TOKEN_KEY_FILE
    with _key_lock:
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
    if len(key) != 32:
        raise BackendError(f"{path}: expected a 32-byte key, found {len(key)} bytes")
    return key


def issue_token(account: str, region: str, caller: Caller, now: float | None = None) -> TokenClaims:
    """Claims for a new token for `caller` (see `encode_token`)."""
    issued = int(time.time() if now is None else now)
    return TokenClaims(
        account,
        region,
        caller.principal,
        caller.display_arn,
        caller.kind,
        caller.name,
        issued + TOKEN_LIFETIME_S,
    )


def encode_token(claims: TokenClaims) -> str:
    """The registry password for `claims`: `ekr1.<claims>.<HMAC-SHA256>`."""
    body = _b64(json.dumps(claims.__dict__, sort_keys=True, separators=(",", ":")).encode())
    mac = hmac.new(_token_key(), f"{TOKEN_PREFIX}.{body}".encode(), hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}.{body}.{_b64(mac)}"


def verify_token(password: str, now: float | None = None) -> TokenClaims | None:
    """The claims of a token this endpoint issued and that has not expired, else None."""
    parts = password.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    try:
        given = _unb64(parts[2])
        want = hmac.new(
            _token_key(), f"{TOKEN_PREFIX}.{parts[1]}".encode(), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(given, want):
            return None
        raw = json.loads(_unb64(parts[1]))
        claims = TokenClaims(
            str(raw["account"]),
            str(raw["region"]),
            str(raw["principal"]),
            str(raw["display_arn"]),
            str(raw["kind"]),
            None if raw["name"] is None else str(raw["name"]),
            int(raw["expires"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if claims.expires <= (time.time() if now is None else now):
        return None
    return claims


# ------------------------------------------------------------------ images as ECR records them


def manifest_digest(manifest: bytes) -> str:
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def referenced_blobs(manifest: dict[str, Any]) -> list[str]:
    """The config and layer digests an image manifest names (none for an index)."""
    out = []
    config = manifest.get("config")
    if isinstance(config, dict) and config.get("digest"):
        out.append(str(config["digest"]))
    for layer in manifest.get("layers") or []:
        if isinstance(layer, dict) and layer.get("digest"):
            out.append(str(layer["digest"]))
    return out


def _image_digest(self: Image) -> str:
    """ECR's image digest: the SHA-256 of the manifest as pushed."""
    if not self._image_digest:
        self._image_digest = manifest_digest(self.image_manifest.encode())
    return str(self._image_digest)


def _image_size(self: Image) -> int | None:
    """ECR's imageSizeInBytes: the (compressed) sizes of the image's layers."""
    try:
        manifest = json.loads(self.image_manifest)
    except ValueError:
        return None
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return None
    return sum(int(layer.get("size", 0)) for layer in layers if isinstance(layer, dict))


def _repository_uri(self: Repository) -> str:
    return repository_uri(self.registry_id, self.region_name, self.name)


def _ignore(self: Repository, value: Any) -> None:
    """moto's __init__ assigns the real-ECR URI; the property computes ours instead."""


def put_image(
    self: ECRBackend,
    repository_name: str,
    image_manifest: str,
    image_tag: str | None,
    image_manifest_mediatype: str | None = None,
    digest: str | None = None,
) -> Image:
    """PutImage as ECR answers it (see the module docstring)."""
    repository = self.repositories.get(repository_name)
    if repository is None:
        raise RepositoryNotFoundException(repository_name, self.account_id)
    try:
        parsed = json.loads(image_manifest)
    except (ValueError, TypeError):
        raise InvalidParameterException(
            "Invalid parameter at 'ImageManifest' failed to satisfy constraint: "
            "'Invalid JSON syntax'"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidParameterException("Invalid parameter at 'ImageManifest': expected an object")
    media_type = image_manifest_mediatype or parsed.get("mediaType")
    if media_type not in MANIFEST_TYPES:
        raise InvalidParameterException(
            f"Invalid parameter at 'imageManifestMediaType': expected one of "
            f"{', '.join(MANIFEST_TYPES)}, found {media_type!r}"
        )
    computed = manifest_digest(image_manifest.encode())
    if digest and digest != computed:
        raise ServiceException(
            "ImageDigestDoesNotMatchException",
            f"Invalid parameter at 'imageDigest': the image digest {digest} does not match "
            f"the digest Amazon ECR calculated for the manifest ({computed})",
        )
    if media_type in INDEX_TYPES:
        known = {img.get_image_digest() for img in repository.images}
        missing = [
            str(m.get("digest"))
            for m in parsed.get("manifests") or []
            if isinstance(m, dict) and m.get("digest") not in known
        ]
        if missing:
            raise ServiceException(
                "ReferencedImagesNotFoundException",
                f"Images with digests '{missing}' referenced by the manifest list were not "
                f"found in the repository '{repository_name}'",
            )
    else:
        missing = [d for d in referenced_blobs(parsed) if d not in repository.layers]
        if missing:
            raise ServiceException(
                "LayersNotFoundException",
                f"Layers with digests '{missing}' required for pushing image into repository "
                f"with name '{repository_name}' in the registry with id "
                f"'{repository.registry_id}' do not exist",
            )
    same = next((img for img in repository.images if img.get_image_digest() == computed), None)
    if same is not None and (image_tag is None or image_tag in same.image_tags):
        raise ImageAlreadyExistsException(
            registry_id=repository.registry_id,
            image_tag=image_tag or "null",
            digest=computed,
            repository_name=repository_name,
        )
    if image_tag is not None:
        holder = next((img for img in repository.images if image_tag in img.image_tags), None)
        if holder is not None and holder is not same:
            if repository.is_tag_immutable():
                raise ServiceException(
                    "ImageTagAlreadyExistsException",
                    f"The image tag '{image_tag}' already exists in the '{repository_name}' "
                    "repository and cannot be overwritten because the repository is immutable.",
                )
            holder.remove_tag(image_tag)
            if not holder.image_tags:
                holder.image_tag = None
    if same is not None:
        same.update_tag(image_tag)  # type: ignore[arg-type]
        return same
    image = Image(
        self.account_id,
        image_tag,  # type: ignore[arg-type]
        image_manifest,
        repository_name,
        media_type,
        computed,
        repository.registry_id,
    )
    repository.images.append(image)
    return image


def backend(account: str, region: str) -> ECRBackend:
    return ecr_backends[account][region]


def repository_arn(account: str, region: str, name: str) -> str:
    return f"arn:aws:ecr:{region}:{account}:repository/{name}"


def install(state_dir: Path) -> None:
    """Patch moto's ECR classes (idempotent)."""
    _config["state_dir"] = Path(state_dir)
    Repository.uri = property(_repository_uri, _ignore)  # type: ignore[assignment]
    Image.get_image_digest = _image_digest  # type: ignore[method-assign]
    Image.get_image_size_in_bytes = _image_size  # type: ignore[method-assign]
    ECRBackend.put_image = put_image  # type: ignore[method-assign]
