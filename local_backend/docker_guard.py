"""The container client `enclavekit cdk` gives the cdk CLI (CDK_DOCKER): it never reaches a
real registry.

The local endpoint has no image registry yet, and a `docker login` / `push` aimed at the ECR
host of the bootstrap stack would go to the real `*.dkr.ecr.*.amazonaws.com`. So every call
fails with one line naming the app's container image assets (from the cloud assembly's
`*.assets.json`), whether or not docker is installed.

`python -m local_backend.docker_guard ARGS...` is what the generated CDK_DOCKER script runs.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Sequence
from pathlib import Path


def image_assets(start: Path) -> list[str]:
    """Display names (else source directories) of the container image assets of the cloud
    assembly at or above `start` (or in `start/cdk.out`)."""
    candidates = [start / "cdk.out", *(p for p in (start, *start.parents))]
    for base in candidates:
        manifests = sorted(base.glob("*.assets.json")) if base.is_dir() else []
        if not manifests:
            continue
        names: list[str] = []
        for manifest in manifests:
            try:
                images = json.loads(manifest.read_text()).get("dockerImages") or {}
            except (OSError, ValueError):
                continue
            for key, spec in images.items():
                source = (spec or {}).get("source") or {}
                names.append(str(spec.get("displayName") or source.get("directory") or key))
        return sorted(set(names))
    return []


def message(argv: Sequence[str], cwd: Path) -> str:
    """The one-line refusal for `docker ARGV` run in `cwd`."""
    names = image_assets(cwd)
    what = ", ".join(names) if names else "(unknown: no assets manifest found)"
    action = argv[0] if argv else "(none)"
    return (
        f"enclavekit: container image asset {what} cannot be published locally: the local "
        f"endpoint has no image registry and real ECR is never used (docker {action} refused)"
    )


def write_script(directory: Path) -> Path:
    """An executable `docker` in `directory` that runs this guard (for CDK_DOCKER)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "docker"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m local_backend.docker_guard "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print(message(args, Path.cwd()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
