"""Prepared results of the two slow, deterministic commands our hosts' user data runs:
`python3.11 -m venv DIR` and `DIR/bin/pip install --no-cache-dir ... name==version...`.

On EC2 these take seconds of CPU (ensurepip installs pip and setuptools; pip unpacks and
byte-compiles the agent's boto3 tree), and every host of a test run or `make demo` would pay them
again for the same bytes. So the machine runs them once, *inside a host* (same sandbox, same
environment, same wheelhouse), and keeps what each produced: the files it wrote under its
target, its output and its exit status, by a key of everything the command reads (`key`). A
later host whose command has the same key gets those files written back (modes and timestamps
kept, so the byte-compiled files stay valid), the same output and exit status, without the work.

What keeps it honest:
- the key covers the command line, working directory, umask and user, the environment pip and
  Python read
  (PATH, HOME, LANG, PIP_*, PYTHON*), the interpreter, its venv/ensurepip modules and bundled
  wheels, pip's configuration files, every file or directory the command line or
  PIP_FIND_LINKS names (the wheelhouse, a requirements file), and the state the command starts
  from: for venv, that its directory does not exist yet; for pip, the content of the venv;
- anything else (another pin, an unpinned or unknown package, a changed venv, a pip.conf)
  is a different key: the real command runs and fails, or succeeds, as it does on EC2;
- only successful runs are kept, and only results confined to the target directory (pip with
  `--no-cache-dir`, so nothing lands in ~/.cache);
- the results live on the machine under the project (`.enclavekit/host-prepared`), read-only
  in every host (the project is bound read-only): a host cannot change another host's result.

The hook is `sitehook/sitecustomize.py` on the host's PYTHONPATH: Python imports it at start-up
and it looks at `sys.orig_argv`; any other Python run in the host is left alone. A replay is
logged in the host's /run/enclavekit-host/prepared.log.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from enclavekit.errors import EmulatorError, EnclaveKitError
from local_backend.host.rootfs import project_root, wheelhouse

CACHE = ".enclavekit/host-prepared"
RECORD_ENV = "ENCLAVEKIT_PREPARED_RECORD"
LOG = "/run/enclavekit-host/prepared.log"
HOOK_DIR = Path(__file__).resolve().parent / "sitehook"
KEY_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "VIRTUAL_ENV",
    "SOURCE_DATE_EPOCH",
)
KEY_ENV_PREFIXES = ("PIP_", "PYTHON")
PIP_CONFIGS = (
    "/etc/pip.conf",
    "/etc/xdg/pip/pip.conf",
    "~/.pip/pip.conf",
    "~/.config/pip/pip.conf",
)
# The parent agent's venv as our constructs' user data makes it (enclave_constructs.spec; a
# test checks the rendered user data runs exactly these command lines).
AGENT_VENV = "/opt/enclavekit/venv"
AGENT_PIP_FLAGS = (
    "--quiet",
    "--disable-pip-version-check",
    "--no-cache-dir",
    "--only-binary=:all:",
)
BUILD_TIMEOUT_S = 600.0


def cache_dir() -> Path:
    return project_root() / CACHE


# ------------------------------------------------------------------ inside the host (the hook)


def form(argv: list[str], prefix: str, base_prefix: str) -> str | None:
    """Which kept command `argv` (sys.orig_argv) is: "venv", "pip" or None."""
    if argv[1:3] == ["-m", "venv"] and prefix == base_prefix:
        return "venv"
    if prefix == base_prefix:
        return None
    if len(argv) >= 3 and os.path.basename(argv[1]) in ("pip", "pip3", "pip3.11"):
        return "pip" if argv[2] == "install" and "--no-cache-dir" in argv else None
    return None


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: str) -> str:
    """Content of a directory tree: every entry's path, kind, mode and bytes (or link)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                what = "l:" + os.readlink(path)
            elif name in dirnames:
                what = "d"
            else:
                what = "f:" + _file_digest(path)
            h.update(f"{rel}\0{st.st_mode:o}\0{what}\n".encode())
    return h.hexdigest()


def _listing(path: str) -> list[Any]:
    """A directory's entries by name, size and mtime (inputs read, not written)."""
    out: list[Any] = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(path)):
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(path, name))
                out.append([name, st.st_size, st.st_mtime_ns])
    return out


def _named_inputs(argv: list[str], cwd: str, skip: str) -> dict[str, Any]:
    """Files and directories the command line or PIP_FIND_LINKS names: their content."""
    words = [w.split("=", 1)[1] if w.startswith("--") and "=" in w else w for w in argv[1:]]
    words += os.environ.get("PIP_FIND_LINKS", "").split()
    out: dict[str, Any] = {}
    for w in words:
        path = os.path.join(cwd, w)
        if path == skip or not w or w.startswith("-"):
            continue
        if os.path.isfile(path):
            out[w] = _file_digest(path)
        elif os.path.isdir(path):
            out[w] = _listing(path)
    return out


def key(kind: str) -> tuple[str, str, dict[str, Any]] | None:
    """(key, target directory, what the key covers) of this process's command, or None if it
    cannot be kept."""
    argv = list(sys.orig_argv)
    cwd = os.getcwd()
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in KEY_ENV or k.startswith(KEY_ENV_PREFIXES)) and k != RECORD_ENV
    }
    lib = os.path.dirname(os.__file__)
    home = os.environ.get("HOME", "/root")
    configs = {}
    for c in PIP_CONFIGS:
        path = c.replace("~", home, 1)
        configs[c] = _file_digest(path) if os.path.isfile(path) else None
    exe = os.path.realpath(sys.executable)
    st = os.stat(exe)
    state: dict[str, Any]
    if kind == "venv":
        dirs = [a for a in argv[3:] if not a.startswith("-")]
        if len(dirs) != 1:
            return None
        target = os.path.normpath(os.path.join(cwd, dirs[0]))
        if os.path.lexists(target):
            return None  # venv over an existing directory: run it for real
        state = {"absent": target}
        argv[0] = exe
    else:
        target = sys.prefix
        state = {"venv": tree_digest(target)}
    inputs = {
        "python": [exe, st.st_size, st.st_mtime_ns],
        "venv": _listing(os.path.join(lib, "venv")),
        "ensurepip": _listing(os.path.join(lib, "ensurepip")),
        "wheels": _listing("/usr/share/python-wheels"),
        "named": _named_inputs(argv, cwd, target),
    }
    umask = os.umask(0o022)
    os.umask(umask)
    doc = {
        "form": kind,
        "argv": argv,
        "cwd": cwd,
        "umask": umask,  # the modes of what it writes
        "uid": [os.geteuid(), os.getegid(), sorted(os.getgroups())],
        "env": env,
        "configs": configs,
        "inputs": inputs,
        "state": state,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), target, doc


def hook(kind: str) -> None:
    """At start-up of a kept command: record its key (the build) or replay its result."""
    started = time.perf_counter()
    found = key(kind)
    keyed = time.perf_counter()
    if found is None:
        return
    digest, target, doc = found
    record = os.environ.get(RECORD_ENV)
    if record:
        # A build records every step's key; a step kept by an earlier build is replayed, so
        # the next step's key is computed on the very files later hosts will have.
        Path(record).write_text(
            json.dumps({"key": digest, "form": kind, "target": target, "covers": doc})
        )
    entry = cache_dir() / "entries" / digest
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if not (entry / "index.json").is_file():
            raise OSError("no packed files")  # (an entry of an older format: run for real)
    except (OSError, ValueError):
        _log(f"{kind} {digest} not prepared: {json.dumps(doc, sort_keys=True)}")
        return
    if kind == "venv":
        os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        unpack(entry, target)
    except OSError as exc:
        # Half-written files must not pass for an install: fail where the command would.
        sys.stderr.write(f"enclavekit: writing the prepared result of `{target}` failed: {exc}\n")
        os._exit(1)
    sys.stdout.buffer.write((entry / "stdout").read_bytes())
    sys.stdout.flush()
    sys.stderr.buffer.write((entry / "stderr").read_bytes())
    sys.stderr.flush()
    copied = time.perf_counter()
    _log(
        f"{kind} {digest} replayed: {' '.join(sys.orig_argv)} "
        f"(key {keyed - started:.2f} s, write {copied - keyed:.2f} s)"
    )
    os._exit(int(meta["status"]))


def _log(line: str) -> None:
    with contextlib.suppress(OSError), open(LOG, "a") as log:
        log.write(line + "\n")


# A kept result is one file of bytes (`pack`) and its index: [path, kind, mode, mtime_ns,
# offset, length] for files, [path, "d", mode, mtime_ns] for directories (parents first),
# [path, "l", target] for links. Written back with one open/write/close/utime per file: on
# this sandbox's kernel each system call counts, and `cp -a` makes three times as many.


def pack(tree: Path, entry: Path) -> None:
    """Index and pack `tree` (a kept result) into `entry`."""
    index: list[list[Any]] = []
    with open(entry / "pack", "wb") as out:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in sorted([*dirnames, *filenames]):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, tree)
                st = os.lstat(path)
                if os.path.islink(path):
                    index.append([rel, "l", os.readlink(path)])
                elif name in dirnames:
                    index.append([rel, "d", st.st_mode & 0o7777, st.st_mtime_ns])
                else:
                    data = Path(path).read_bytes()
                    index.append(
                        [rel, "f", st.st_mode & 0o7777, st.st_mtime_ns, out.tell(), len(data)]
                    )
                    out.write(data)
    st = os.lstat(tree)
    (entry / "index.json").write_text(
        json.dumps({"root": [st.st_mode & 0o7777, st.st_mtime_ns], "entries": index})
    )


def unpack(entry: Path, target: str) -> None:
    """Write a kept result under `target` with its modes and timestamps (as `cp -a` would)."""
    index = json.loads((entry / "index.json").read_text())
    data = memoryview((entry / "pack").read_bytes())
    old = os.umask(0)
    dirs: list[tuple[str, int, int]] = []
    try:
        root_mode, root_mtime = index["root"]
        if not os.path.isdir(target):
            os.mkdir(target, root_mode)
        dirs.append((target, root_mode, root_mtime))
        for item in index["entries"]:
            path = os.path.join(target, item[0])
            if item[1] == "d":
                if not os.path.isdir(path):
                    os.mkdir(path, item[2])
                dirs.append((path, item[2], item[3]))
            elif item[1] == "l":
                if os.path.lexists(path):
                    os.unlink(path)
                os.symlink(item[2], path)
            else:
                _, _, mode, mtime, offset, length = item
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
                try:
                    chunk = data[offset : offset + length]
                    while chunk:
                        chunk = chunk[os.write(fd, chunk) :]
                    os.utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
        for path, mode, mtime in reversed(dirs):  # after their content, as cp -a does
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))
    finally:
        os.umask(old)


# ------------------------------------------------------------------ on the machine (the build)


def agent_recipe() -> list[list[str]]:
    """The command lines of our constructs' agent venv, with this checkout's pins."""
    from enclavekit.agent_bundle import runtime_requirements

    return [
        ["python3.11", "-m", "venv", AGENT_VENV],
        [f"{AGENT_VENV}/bin/pip", "install", *AGENT_PIP_FLAGS, *runtime_requirements()],
    ]


def recipe_id(recipe: list[list[str]]) -> str:
    """What a build depends on, seen from the machine (the keys are checked in the host)."""
    here = Path(__file__).resolve()
    doc = {
        "recipe": recipe,
        "code": [_file_digest(str(here)), _file_digest(str(HOOK_DIR / "sitecustomize.py"))],
        "python": [_file_digest("/usr/bin/python3.11")]
        if os.path.isfile("/usr/bin/python3.11")
        else [],
        "wheels": _listing("/usr/share/python-wheels"),
        "wheelhouse": _listing(str(wheelhouse())),
        "project": str(project_root()),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def is_prepared(recipe: list[list[str]]) -> bool:
    return (cache_dir() / "recipes" / f"{recipe_id(recipe)}.json").is_file()


def _target(argv: list[str]) -> str:
    """The directory a recipe step writes: the venv it creates, or the one its pip is in."""
    return argv[3] if argv[1:3] == ["-m", "venv"] else os.path.dirname(os.path.dirname(argv[0]))


def _build_script(recipe: list[list[str]]) -> str:
    import shlex

    out = ["#!/bin/bash", "set -u", "d=/var/lib/enclavekit-prepared", "mkdir -p $d"]
    for i, argv in enumerate(recipe):
        out.append(
            f"{RECORD_ENV}=$d/{i}.json {shlex.join(argv)} >$d/{i}.out 2>$d/{i}.err; "
            f"echo $? >$d/{i}.status"
        )
        out.append(f"[ -f $d/{i}.json ] && cp -a {shlex.quote(_target(argv))} $d/{i}.tree")
    return "\n".join(out) + "\n"


def _copy_delta(before: Path, after: Path, dest: Path) -> bool:
    """Entries of `after` that `before` lacks or holds differently, with their metadata;
    False (nothing kept) if the command removed files, which a replay would not."""
    if any(
        not os.path.lexists(after / os.path.relpath(os.path.join(d, n), before))
        for d, dirs, files in os.walk(before)
        for n in [*dirs, *files]
    ):
        return False
    dest.mkdir()
    new_dirs: list[tuple[Path, Path]] = [(after, dest)]
    for dirpath, dirnames, filenames in os.walk(after):
        for name in sorted([*dirnames, *filenames]):
            src = Path(dirpath) / name
            rel = src.relative_to(after)
            old = before / rel
            out = dest / rel
            if src.is_symlink():
                if old.is_symlink() and os.readlink(old) == os.readlink(src):
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                out.symlink_to(os.readlink(src))
            elif src.is_dir():
                if not old.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    new_dirs.append((src, out))
            elif not old.is_file() or _file_digest(str(old)) != _file_digest(str(src)):
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)
    for src, out in reversed(new_dirs):  # after their content: keep their own mtimes
        shutil.copystat(src, out)
    return True


def build(recipe: list[list[str]], timeout: float = BUILD_TIMEOUT_S) -> list[str]:
    """Run `recipe` in a throwaway host and keep each successful step's result; the keys."""
    import base64

    from local_backend.host import control
    from local_backend.host.layout import HostLayout

    cache = cache_dir()
    (cache / "entries").mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    with tempfile.TemporaryDirectory(prefix="enclavekit-prepare-") as tmp:
        layout = HostLayout(Path(tmp) / "instances" / "i-0prepared000000000")
        info = {
            "instance_id": layout.dir.name,
            "account_id": "123456789012",
            "region": "us-east-1",
            "instance_type": "m5.xlarge",
            "image_id": "ami-0123456789abcdef0",
            "private_ip": "10.0.0.5",
            "role_arns": [],
            "endpoint": "http://localhost:9",
            "state_dir": tmp,
            "user_data": base64.b64encode(_build_script(recipe).encode()).decode(),
            "ingress": [],
        }
        control.start_host(layout, info)
        try:
            host = control.wait_booted(layout, timeout=timeout)
            if control.boot_error(host):
                tail = layout.console.read_text(errors="replace")[-1500:]
                raise EmulatorError(f"preparing in a host: {control.boot_error(host)}: {tail}")
        finally:
            control.stop_host(layout)
        d = layout.inside("/var/lib/enclavekit-prepared")
        previous: Path | None = None
        for i, _argv in enumerate(recipe):
            rec, tree = d / f"{i}.json", d / f"{i}.tree"
            status = int((d / f"{i}.status").read_text())
            if not rec.is_file() or not tree.is_dir() or status != 0:
                previous = None
                continue
            meta = json.loads(rec.read_text())
            entry = cache / "entries" / meta["key"]
            if entry.is_dir() and not (entry / "index.json").is_file():
                shutil.rmtree(entry)  # an older format
            if not entry.is_dir():
                work = Path(tempfile.mkdtemp(dir=cache / "entries", prefix=".build-"))
                try:
                    if meta["form"] == "venv":
                        shutil.copytree(tree, work / "tree", symlinks=True)
                    else:
                        if previous is None or not _copy_delta(previous, tree, work / "tree"):
                            previous = None
                            continue
                    pack(work / "tree", work)
                    shutil.rmtree(work / "tree")
                    for stream in ("out", "err"):
                        shutil.copyfile(d / f"{i}.{stream}", work / f"std{stream}")
                    (work / "meta.json").write_text(json.dumps({**meta, "status": status}))
                    work.chmod(0o755)
                    os.rename(work, entry)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            keys.append(meta["key"])
            previous = tree
    return keys


def ensure(recipe: list[list[str]] | None = None) -> bool:
    """Build the recipe's results unless this checkout has them (one build at a time).
    False when the machine cannot (no sandbox, no python3.11, no wheelhouse)."""
    recipe = recipe or agent_recipe()
    if is_prepared(recipe):
        return True
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(recipe):
            return True
        keys = build(recipe)
        if len(keys) != len(recipe):
            return False
        out = cache / "recipes" / f"{recipe_id(recipe)}.json"
        out.parent.mkdir(exist_ok=True)
        # renamed into place: `is_prepared` looks without the lock
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"recipe": recipe, "keys": keys}, indent=2) + "\n")
        os.replace(tmp, out)
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m local_backend.host.prepared`: prepare the agent venv's results (make setup)."""
    try:
        ok = ensure()
    except (EnclaveKitError, OSError) as exc:
        print(f"host-prepared: {exc}", file=sys.stderr)
        return 1
    print(f"host-prepared ({cache_dir()}): {'ready' if ok else 'not kept (see above)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
