"""Lambda layers for the local runtime: the function's layers, merged, are its read-only /opt.

On AWS a function's layers are extracted in order into /opt (a later layer's file replaces an
earlier one's), read-only, and the runtime puts /opt's conventional folders on its search
paths (/opt/bin, /opt/lib, /opt/python, /opt/nodejs/...). Layers hard-code those paths: the
awscli layer of aws-cdk-lib's BucketDeployment is run as `/opt/awscli/aws`, a script whose
shebang is the managed runtime's interpreter, `/var/lang/bin/python`.

Here each invocation of a function with layers runs in its own mount namespace (`unshare`):
the merged layers (unpacked once per set of layer versions under `<state>/lambda/opt/`) are
bind-mounted read-only on /opt, and /var is a tmpfs that carries the host's /var entries
(bind-mounted back) plus the runtime's `/var/lang/bin` (python, python3 and node: the
interpreters the local runtime runs handlers on). Nothing outside the namespace changes. As
root the namespace is a plain mount namespace; otherwise a user namespace mapping the caller to
root (where the kernel allows unprivileged user namespaces); without either, invoking a
function with layers fails with one line saying so — the handler would not find /opt.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

from enclavekit.errors import BackendError

# The namespace set-up, run by `sh -c` inside the new mount namespace; then it execs the
# handler's command. $1: the merged layers, $2: python, $3: node, then the command.
NAMESPACE_SCRIPT = r"""
set -e
layers=$1 py=$2 node=$3
shift 3
mount --rbind /var /opt
mount -t tmpfs -o mode=0755 lambda-var /var
for entry in /opt/* /opt/.[!.]*; do
  [ -e "$entry" ] || [ -L "$entry" ] || continue
  name=/var/${entry#/opt/}
  if [ -L "$entry" ]; then cp -P "$entry" "$name"
  elif [ -d "$entry" ]; then mkdir "$name" && mount --rbind "$entry" "$name"
  else : >"$name" && mount --bind "$entry" "$name"
  fi
done
mkdir -p /var/lang/bin
ln -s "$py" /var/lang/bin/python
ln -s "$py" /var/lang/bin/python3
ln -s "$node" /var/lang/bin/node
umount -l /opt
mount --bind "$layers" /opt
mount -o remount,bind,ro /opt
exec "$@"
"""

_UNSHARE_VARIANTS = (
    ("unshare", "--mount", "--propagation", "private"),
    ("unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"),
)
_probe: dict[str, Any] = {}
_lock = threading.Lock()


class LayersNotEmulated(BackendError):
    """A function's layers cannot be given to it (unknown layer, no mount namespace)."""


def unzip(code: bytes, root: Path, what: str) -> None:
    """Extract a function or layer zip into `root` with the files' Unix modes (Lambda keeps
    them: a layer's executables stay executable). Entries may not leave `root`; a symlink entry
    is written as a file holding its target (never followed while extracting)."""
    base = root.resolve()
    with zipfile.ZipFile(io.BytesIO(code)) as zf:
        for member in zf.infolist():
            target = (base / member.filename).resolve()
            if base not in target.parents and target != base:
                raise LayersNotEmulated(
                    f"{what}: zip entry {member.filename!r} escapes the package"
                )
        for member in zf.infolist():
            target = base / member.filename
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_dir():  # a later layer replaces the entry
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (member.external_attr >> 16) & 0o777
            if member.create_system == 3 and mode and not stat.S_ISLNK(member.external_attr >> 16):
                target.chmod(mode | stat.S_IRUSR)


def _versions(fn: Any) -> list[Any]:
    from moto.awslambda.models import lambda_backends

    backend = lambda_backends[fn.account_id][fn.region]
    found = []
    for layer in fn.layers or []:
        arn = layer["Arn"] if isinstance(layer, dict) else str(layer)
        version = backend.layers_versions_by_arn(arn)
        if version is None or not getattr(version, "code_bytes", b""):
            raise LayersNotEmulated(f"function {fn.function_name}: layer {arn} has no content")
        found.append(version)
    return found


def opt_dir(fn: Any, state_dir: Path) -> Path | None:
    """The function's layers merged in order (cached per set of layer contents), or None."""
    versions = _versions(fn) if getattr(fn, "layers", None) else []
    if not versions:
        return None
    digest = hashlib.sha256(
        "\n".join(hashlib.sha256(v.code_bytes).hexdigest() for v in versions).encode()
    ).hexdigest()[:32]
    root = state_dir / "lambda" / "opt" / digest
    with _lock:
        if not (root / ".merged").exists():
            tree = root / "tree"
            if tree.exists():
                shutil.rmtree(tree)
            tree.mkdir(parents=True)
            for version in versions:
                unzip(version.code_bytes, tree, f"layer {version.arn}")
            (root / ".merged").touch()
    return root / "tree"


def _unshare_prefix() -> tuple[str, ...]:
    """The first `unshare` form the kernel grants here (probed once)."""
    with _lock:
        if "prefix" not in _probe:
            errors = []
            for variant in _UNSHARE_VARIANTS:
                if variant[1] != "--user" and os.geteuid() != 0:
                    continue
                try:
                    run = subprocess.run(
                        [*variant, "true"], capture_output=True, text=True, timeout=30
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    errors.append(str(exc))
                    continue
                if run.returncode == 0:
                    _probe["prefix"] = variant
                    break
                errors.append((run.stderr.strip().splitlines() or ["refused"])[-1])
            else:
                _probe["prefix"] = None
                _probe["error"] = "; ".join(errors) or "unshare is missing"
        prefix = _probe["prefix"]
    if prefix is None:
        raise LayersNotEmulated(
            "Lambda layers need a mount namespace for /opt (run the endpoint as root, or allow "
            f"unprivileged user namespaces): {_probe['error']}"
        )
    return prefix


def wrap(argv: list[str], layers: Path, node: Path) -> list[str]:
    """`argv` run in a mount namespace where `layers` is the read-only /opt and the runtime's
    interpreters are at /var/lang/bin."""
    if not Path("/opt").is_dir() or Path("/opt").is_symlink():
        raise LayersNotEmulated(
            "Lambda layers are mounted on /opt, which is not a directory on this machine"
        )
    paths = (*argv, sys.executable, str(layers))
    blocked = [p for p in paths if p.startswith("/") and _under_opt(p)]
    if blocked:
        raise LayersNotEmulated(
            f"Lambda layers replace /opt, which holds {blocked[0]}: move it out of /opt"
        )
    return [
        *_unshare_prefix(),
        "sh", "-c", NAMESPACE_SCRIPT, "lambda-layers", str(layers), sys.executable, str(node),
        *argv,
    ]  # fmt: skip


def _under_opt(path: str) -> bool:
    return Path(path).resolve().is_relative_to("/opt")


def environment(runtime: str, env: dict[str, str]) -> dict[str, str]:
    """The search paths Lambda's runtimes give a function's layers (after its own)."""
    out = {"PATH": _join(env.get("PATH"), "/opt/bin")}
    out["LD_LIBRARY_PATH"] = _join(env.get("LD_LIBRARY_PATH"), "/opt/lib")
    if runtime.startswith("python"):
        version = runtime.removeprefix("python")
        paths = f"/opt/python/lib/python{version}/site-packages:/opt/python"
        out["PYTHONPATH"] = _join(paths, env.get("PYTHONPATH"))
    elif runtime.startswith("nodejs"):
        major = runtime.removeprefix("nodejs").split(".")[0]
        paths = f"/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules"
        out["NODE_PATH"] = _join(paths, env.get("NODE_PATH"))
    return out


def _join(*parts: str | None) -> str:
    return ":".join(p for p in parts if p)
