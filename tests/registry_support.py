"""OCI image layouts for the registry tests, and a docker stand-in that pushes with skopeo.

This machine has a docker client but no engine. To run cdk-assets' whole container-asset flow
(DescribeRepositories, GetAuthorizationToken, `docker login`, `build`, `tag`, `push`) against
the local endpoint anyway, `python registry_support.py ARGS...` plays the engine for the
commands cdk-assets issues: `build` packs the context directory into a one-layer OCI image
layout (no Dockerfile is run), and `push` hands that layout to skopeo with the credentials
`login` received. The registry, ECR and the CDK_DOCKER guard in front of it are the real ones.
Its state lives in $REGISTRY_STANDIN_DIR; $SKOPEO and $SKOPEO_LIBDIR say where skopeo is.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from local_backend.docker_guard import positionals

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_BUILD_VALUED = frozenset(
    {"-t", "--tag", "-f", "--file", "--build-arg", "--target", "--platform", "--cache-from"}
    | {"--cache-to", "--network", "--label", "--output", "-o", "--secret", "--ssh"}
)


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A gzipped tar layer and its uncompressed tar (for the config's diff_ids)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def oci_layout(layout: Path, tag: str, files: dict[str, bytes]) -> str:
    """An OCI image layout with one image (one layer holding `files`); its manifest digest."""
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    gz, tar = _layer(files)
    layer_digest, layer_size = _blob(layout, gz)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    }
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    digest, size = _blob(layout, json.dumps(manifest).encode())
    ref = {"org.opencontainers.image.ref.name": tag}
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "annotations": ref}
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return digest


# ------------------------------------------------------------------ the docker stand-in


def _image_dir(state: Path, ref: str) -> Path:
    return state / "images" / hashlib.sha256(ref.encode()).hexdigest()[:32]


def standin(argv: list[str]) -> int:
    state = Path(os.environ["REGISTRY_STANDIN_DIR"])
    (state / "images").mkdir(parents=True, exist_ok=True)
    with (state / "calls.log").open("a") as log:
        log.write(" ".join(argv) + "\n")
    while argv and argv[0].startswith("-"):  # global options (cdk-assets may pass --config)
        argv = argv[2:] if argv[0] in ("--config", "-c", "--context") else argv[1:]
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    creds_file = state / "creds.json"
    creds = json.loads(creds_file.read_text()) if creds_file.exists() else {}
    if cmd == "info":
        print("standin")
        return 0
    if cmd == "login":
        server = positionals(args, frozenset({"-u", "--username", "-p", "--password"}))[-1]
        creds[server.split("://", 1)[-1]] = sys.stdin.read().strip()
        creds_file.write_text(json.dumps(creds))
        print("Login Succeeded")
        return 0
    if cmd == "inspect":
        return 0 if _image_dir(state, args[-1]).is_dir() else 1
    if cmd == "build":
        tags = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-t", "--tag")]
        context = Path(positionals(args, _BUILD_VALUED)[-1])
        files = {
            str(p.relative_to(context)): p.read_bytes()
            for p in sorted(context.rglob("*"))
            if p.is_file()
        }
        for tag in tags:
            target = _image_dir(state, tag)
            shutil.rmtree(target, ignore_errors=True)
            oci_layout(target, "latest", files)
        return 0
    if cmd == "tag":
        source, target = _image_dir(state, args[0]), _image_dir(state, args[1])
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return 0
    if cmd == "push":
        ref = positionals(args, frozenset({"--platform"}))[0]
        host = ref.split("/", 1)[0]
        proc = subprocess.run(
            [os.environ["SKOPEO"], "--insecure-policy", "copy", "--dest-tls-verify=false"]
            + ["--dest-creds", f"AWS:{creds[host]}"]
            + [f"oci:{_image_dir(state, ref)}:latest", f"docker://{ref}"],
            env={**os.environ, "LD_LIBRARY_PATH": os.environ["SKOPEO_LIBDIR"]},
            check=False,
        )
        return proc.returncode
    print(f"docker stand-in: {cmd} is not one of cdk-assets' commands", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(standin(sys.argv[1:]))
