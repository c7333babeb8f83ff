"""Build the local ACM enclave image (`p11ne.eif`) with enclavekit's own reproducible builder.

The image is an enclavekit app directory assembled from the project's files and built by
`enclavekit.build.build_enclave`, so its PCRs are computed exactly as for users' images:
- `p11ne/` (the program, local_backend/acm_enclave/p11ne), `enclave_app/` (the attested KMS
  client, recipient key, NSM attester, loopback forwarder and trust store it reuses), the pure
  core modules vendored as for enclave_app;
- the native parts, measured with everything else: Debian's `p11-kit-server` and
  `p11-kit-remote`, SoftHSMv2 (`libsofthsm2.so`, `softhsm2-util`) from the unpacked system
  packages (local_backend.system_packages), and `libp11ne.so`, compiled here from
  p11ne_module.c with fixed flags (no build id, stripped, relative source name) so the same
  gcc gives the same bytes;
- `etc/softhsm2.conf` (tokens on the enclave's tmpfs).
Shared libraries these link against come from the emulator's read-only runtime layer, as the
Python interpreter does (not measured, local_backend/emulator/runtime_layer.py).

Built once per content: the output directory is named by the SHA-256 of every staged file, so
a changed input makes a new image and an unchanged one is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from enclavekit.build import PURE_MODULES, build_enclave, core_dir
from enclavekit.errors import BackendError

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
IMAGE_NAME = "p11ne"
IMAGE_VERSION = "enclavekit-1"
EIF_NAME = "p11ne.eif"
MEASUREMENTS_NAME = "image-measurements.json"
MODULE_SOURCE = HERE / "p11ne_module.c"
STATE = "/tmp/p11ne"  # the enclave's tmpfs: token files, slot and signature counters
APP = "/app"
ENCLAVE_APP_FILES = (
    "__init__.py", "attester.py", "forwarder.py", "keys.py", "kms.py", "process.py", "trust.py",
)  # fmt: skip
CC_FLAGS = (
    "-shared", "-fPIC", "-O2", "-Wall", "-fvisibility=hidden", "-s",
    "-Wl,--build-id=none", "-Wl,--hash-style=gnu",
)  # fmt: skip
SOFTHSM_CONF = (
    f"directories.tokendir = {STATE}/tokens\n"
    "objectstore.backend = file\n"
    "log.level = ERROR\n"
    "slots.removable = false\n"
)


def _manifest() -> dict[str, object]:
    return {
        "name": IMAGE_NAME,
        "version": IMAGE_VERSION,
        "cmd": ["python3", "-m", "p11ne"],
        "env": {
            "PYTHONPATH": f"/:{APP}",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "P11NE_STATE": STATE,
            "P11NE_P11KIT_SERVER": f"{APP}/libexec/p11-kit/p11-kit-server",
            "P11_KIT_PRIVATEDIR": f"{APP}/libexec/p11-kit",  # where it execs p11-kit-remote
            "P11NE_MODULE": f"{APP}/lib/libp11ne.so",
            "P11NE_BACKEND": f"{APP}/lib/libsofthsm2.so",
            "P11NE_SOFTHSM_UTIL": f"{APP}/bin/softhsm2-util",
            "SOFTHSM2_CONF": f"{APP}/etc/softhsm2.conf",
        },
        "vendor": [
            "enclavekit.errors",
            "enclavekit.pcr",
            "enclavekit.nsm",
            "enclavekit.attestation",
            "enclavekit.cms",
            "enclavekit.transport",
            "enclavekit.provisioning",
        ],
        "runtime": {"python": "3.11", "packages": ["cbor2", "cryptography", "boto3", "botocore"]},
    }


def compile_module(out: Path) -> Path:
    """libp11ne.so from p11ne_module.c (gcc, fixed flags, relative source name)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BackendError("ACM enclave image: expected gcc to build libp11ne.so, found none")
    with tempfile.TemporaryDirectory(prefix="p11ne-cc-") as tmp:
        shutil.copyfile(MODULE_SOURCE, Path(tmp) / "p11ne_module.c")
        run = subprocess.run(
            [cc, *CC_FLAGS, "-o", "libp11ne.so", "p11ne_module.c", "-ldl"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise BackendError(f"ACM enclave image: compiling libp11ne.so failed ({last})")
        shutil.copyfile(Path(tmp) / "libp11ne.so", out)
    out.chmod(0o755)
    return out


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)  # the bytes, never a symlink (the builder refuses those)
    dest.chmod(0o755 if os.access(src, os.X_OK) else 0o644)


def stage(dest: Path) -> Path:
    """Lay out the image's app directory at `dest` (empty or absent)."""
    from local_backend.system_packages import system_root

    system = system_root()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "enclave.json").write_text(json.dumps(_manifest(), indent=2, sort_keys=True) + "\n")
    for src in sorted((HERE / "p11ne").glob("*.py")):
        _copy(src, dest / "p11ne" / src.name)
    for name in ENCLAVE_APP_FILES:
        _copy(PROJECT / "enclave_app" / name, dest / "enclave_app" / name)
    _copy(system.p11kit_server, dest / "libexec" / "p11-kit" / "p11-kit-server")
    _copy(system.p11kit_libexec / "p11-kit-remote", dest / "libexec" / "p11-kit" / "p11-kit-remote")
    _copy(system.softhsm_module, dest / "lib" / "libsofthsm2.so")
    _copy(system.softhsm_util, dest / "bin" / "softhsm2-util")
    compile_module(dest / "lib" / "libp11ne.so")
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc" / "softhsm2.conf").write_text(SOFTHSM_CONF)
    return dest


def content_digest(root: Path) -> str:
    """SHA-256 over every staged file's path, mode and bytes (sorted), and over the core modules
    the build may vendor into the image: they are not staged, yet they are in the EIF, so a change
    to one alone must not reuse an image built before it."""
    h = hashlib.sha256()
    for name in PURE_MODULES:
        data = (core_dir() / f"{name}.py").read_bytes()
        h.update(f"vendor:{name}\0{len(data)}\0".encode())
        h.update(data)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        mode = "x" if os.access(path, os.X_OK) else "-"
        data = path.read_bytes()
        h.update(f"{rel}\0{mode}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(cache_dir: Path):  # type: ignore[no-untyped-def]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(cache_dir: Path) -> tuple[Path, Path]:
    """(p11ne.eif, image-measurements.json) under `cache_dir/<content digest>/`."""
    cache_dir = Path(cache_dir).absolute()
    with _locked(cache_dir), tempfile.TemporaryDirectory(prefix="stage-", dir=cache_dir) as tmp:
        app = stage(Path(tmp) / "app")
        digest = content_digest(app)[:32]
        out = cache_dir / digest
        eif, measured = out / EIF_NAME, out / MEASUREMENTS_NAME
        if eif.is_file() and measured.is_file():
            return eif, measured
        work = Path(tmp) / "out"
        env_epoch = os.environ.pop("SOURCE_DATE_EPOCH", None)  # BuildTime: the epoch, always
        try:
            result = build_enclave(app, work / EIF_NAME)
        finally:
            if env_epoch is not None:
                os.environ["SOURCE_DATE_EPOCH"] = env_epoch
        (work / MEASUREMENTS_NAME).write_text(
            json.dumps({"Measurements": result.measurements.to_nitro_cli()}, indent=2) + "\n"
        )
        shutil.rmtree(out, ignore_errors=True)
        os.replace(work, out)
        return eif, measured
