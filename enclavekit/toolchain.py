"""Where the project's own Node.js 22 and CDK CLI live, and the PATH that puts them first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from enclavekit.errors import EnclaveKitError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def node_modules(start: Path | None = None) -> Path | None:
    """The nearest node_modules with our pinned tools: from `start` upward, then the project."""
    here = (start or Path.cwd()).resolve()
    for base in (here, *here.parents):
        if (base / "node_modules" / ".bin" / "cdk").exists():
            return base / "node_modules"
    candidate = PROJECT_ROOT / "node_modules"
    return candidate if (candidate / ".bin" / "cdk").exists() else None


def tool_path(env_path: str | None = None, start: Path | None = None) -> str:
    """PATH with the project's Node.js 22 and node_modules/.bin in front."""
    nm = node_modules(start)
    parts = [str(nm / "node" / "bin"), str(nm / ".bin")] if nm else []
    rest = env_path if env_path is not None else os.environ.get("PATH", "")
    return os.pathsep.join([*parts, rest])


NO_NOTICES = "--no-notices"


def cdk_command(start: Path | None = None) -> list[str]:
    """The argv prefix that runs the pinned `cdk` CLI on the pinned Node.js.

    `--no-notices`: the CLI would otherwise fetch its notices from cli.cdk.dev-tools.aws.dev,
    a call off this machine that the egress guard refuses (and CI has no route for)."""
    nm = node_modules(start)
    if nm is None:
        found = shutil.which("cdk")
        if not found:
            raise EnclaveKitError("the cdk CLI is not installed: run `make setup` (npm ci) first")
        return [found, NO_NOTICES]
    node = nm / "node" / "bin" / "node"
    cli = nm / "aws-cdk" / "bin" / "cdk"
    prefix = [str(node), str(cli)] if node.exists() else [str(nm / ".bin" / "cdk")]
    return [*prefix, NO_NOTICES]
