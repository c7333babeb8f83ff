"""Endpoint state across `local stop` / `local start`: moto's backends, pickled, sealed at rest.

What survives: every moto backend that holds state (stacks and their resources, exports, KMS
keys *with their key material*, SSM parameters, ACM certificates with their private keys, IAM
entities, S3 objects, EC2 instances, ...), plus our extensions' own registries (certificate
associations, the service-account key, the agent images, the instances whose hosts were
booted). `local start` loads it before serving, then boots the recorded instances again
through the EC2 start hooks, exactly as their first start did (a user-data host from its
recorded user data: `local_backend.host.hooks.start_instance_host`; an enclavekit image host
through its parent).

Why pickling, not replaying the requests: a replay re-creates keys with *new* random material
and resources with new ids, so every sealed secret's ciphertext (and every certificate, ARN and
instance id a client holds) would be orphaned. Pickling moto's backends keeps the objects
themselves — with cross-service references (a stack's resource map pointing at the EC2 instance
and the KMS key) kept as the same objects, since everything is pickled in one pass.

Where key material lives: only in `<state>/persist/endpoint-state.bin` (mode 0600, in the 0700
state dir), sealed with AES-256-GCM under `<state>/persist/state.key` (0600). This is AWS's
model: the local endpoint *is* KMS and ACM, the one party that holds the keys, and the state
dir is its storage, which it keeps encrypted at rest, as ACM keeps certificate keys; nothing on
the instance side (parents, enclaves, their directories) gets a copy, and no key bytes appear
in plaintext anywhere in the state dir (verify's key search reads it).

Written on stop (before the instances' hosts are stopped) and after every CloudFormation stack
operation has applied (so an endpoint that is killed keeps its stacks), atomically
(write + fsync + rename).
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import logging
import os
import pickle
import threading
import time
import types
import weakref
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclavekit.errors import BackendError

log = logging.getLogger("enclavekit.endpoint.persist")

PERSIST_DIR = "persist"
STATE_FILE = "endpoint-state.bin"
KEY_FILE = "state.key"
MAGIC = b"EKSTATE1"
FORMAT_VERSION = 1

# Our extensions' module-level registries that are state (not hooks or caches): restored in
# place (same dict object) so the modules that hold them keep working on them.
EXTENSION_STATE = (
    ("local_backend.moto_ext.ec2.certificates", "associations"),
    ("local_backend.moto_ext.ec2.certificates", "service_keys"),
)
# Where code that state files name has moved since they may have been written, so an upgrade
# reads what an older version saved instead of setting it aside (nothing deployed is lost).
# A module split: the old module -> the modules its classes now live in.
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "local_backend.moto_ext.ec2.models": (
        "local_backend.moto_ext.ec2.hooks",
        "local_backend.moto_ext.ec2.instances",
        "local_backend.moto_ext.ec2.certificates",
        "local_backend.moto_ext.ec2.cfn_association",
        "local_backend.moto_ext.ec2.routing",
    ),
}
# Extension registries saved under an older "module:name".
MOVED_EXTENSION_STATE: dict[str, str] = {
    "local_backend.moto_ext.ec2.models:_associations": (
        "local_backend.moto_ext.ec2.certificates:associations"
    ),
    "local_backend.moto_ext.ec2.models:_service_keys": (
        "local_backend.moto_ext.ec2.certificates:service_keys"
    ),
}

_LOCK_TYPES: tuple[type, ...] = (type(threading.Lock()), type(threading.RLock()))
_snapshot_lock = threading.Lock()
_stopping = threading.Event()  # set when the stop-time snapshot begins


class StateError(BackendError):
    """The saved state cannot be read back (wrong key, damaged file, other moto version)."""


def _fresh_lock(kind: type) -> Any:
    return threading.RLock() if kind is type(threading.RLock()) else threading.Lock()


def _reduce_lock(lock: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A lock pickles as a fresh, released lock of its kind: it guards a process, not data."""
    return _fresh_lock, (type(lock),)


def _load_private_key(der: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    return load_der_private_key(der, None)


def _load_public_key(der: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    return load_der_public_key(der)


def _load_certificate(der: bytes) -> Any:
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


def _load_csr(der: bytes) -> Any:
    from cryptography import x509

    return x509.load_der_x509_csr(der)


def _reduce_crypto(obj: Any) -> Any:
    """cryptography's key and certificate objects (Rust-backed, not picklable) as their DER,
    loaded back on restore; NotImplemented for anything else."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import types

    if isinstance(obj, types.PrivateKeyTypes):
        der = obj.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        return _load_private_key, (der,)
    if isinstance(obj, types.PublicKeyTypes):
        der = obj.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
        return _load_public_key, (der,)
    if isinstance(obj, x509.Certificate):
        return _load_certificate, (obj.public_bytes(ser.Encoding.DER),)
    if isinstance(obj, x509.CertificateSigningRequest):
        return _load_csr, (obj.public_bytes(ser.Encoding.DER),)
    return NotImplemented


def _make_function(
    module: str, code: bytes, name: str, defaults: Any, closure: tuple[Any, ...] | None
) -> Any:
    import importlib
    import marshal

    cells = None if closure is None else tuple(types.CellType(v) for v in closure)
    return types.FunctionType(
        marshal.loads(code),  # noqa: S302 - our own sealed file, same interpreter
        importlib.import_module(module).__dict__,
        name,
        defaults,
        cells,
    )


def _reduce_local_function(fn: Any) -> Any:
    """A lambda or nested function (moto keeps some as defaultdict factories), which pickle
    cannot name: its code and closure values, rebuilt in its module on restore."""
    import marshal

    closure = None if fn.__closure__ is None else tuple(c.cell_contents for c in fn.__closure__)
    return _make_function, (
        fn.__module__,
        marshal.dumps(fn.__code__),
        fn.__name__,
        fn.__defaults__,
        closure,
    )


def _new_defaultdict(cls: type, factory: Any) -> Any:
    obj = defaultdict.__new__(cls)
    defaultdict.__init__(obj, factory)
    return obj


def _reduce_defaultdict_subclass(obj: Any) -> Any:
    """A defaultdict subclass whose __init__ takes other arguments (moto's ParameterDict):
    defaultdict's own reduction would call that __init__ with the factory."""
    return _new_defaultdict, (type(obj), obj.default_factory), obj.__dict__, None, iter(obj.items())


def _weak_values(items: dict[Any, Any]) -> weakref.WeakValueDictionary[Any, Any]:
    return weakref.WeakValueDictionary(items)


def _weak_keys(items: dict[Any, Any]) -> weakref.WeakKeyDictionary[Any, Any]:
    return weakref.WeakKeyDictionary(items)


def _weak_set(items: list[Any]) -> weakref.WeakSet[Any]:
    return weakref.WeakSet(items)


# moto's class-level registries of weak references to backends (the VPC peering and transit
# gateway look-ups across regions): a restored backend is added, as its __init__ would have.
_BACKEND_REFS = ("vpc_refs", "backend_refs", "vpc_pcx_refs")


def _register_refs(backend: Any) -> None:
    for name in _BACKEND_REFS:
        refs = getattr(type(backend), name, None)
        if isinstance(refs, defaultdict):
            refs[type(backend)].add(weakref.ref(backend))


class _Pickler(pickle.Pickler):
    dispatch_table = copyreg.dispatch_table.copy()
    for _kind in _LOCK_TYPES:
        dispatch_table[_kind] = _reduce_lock

    def reducer_override(self, obj: Any) -> Any:
        if type(obj).__module__.startswith("cryptography."):
            return _reduce_crypto(obj)
        if isinstance(obj, weakref.WeakValueDictionary):  # moto's Lambda ARN index
            return _weak_values, (dict(obj.items()),)
        if isinstance(obj, weakref.WeakKeyDictionary):
            return _weak_keys, (dict(obj.items()),)
        if isinstance(obj, weakref.WeakSet):
            return _weak_set, (list(obj),)
        if isinstance(obj, defaultdict) and type(obj) is not defaultdict:
            return _reduce_defaultdict_subclass(obj)
        if isinstance(obj, types.FunctionType) and "<locals>" in obj.__qualname__:
            return _reduce_local_function(obj)
        if isinstance(obj, types.FunctionType) and obj.__name__ == "<lambda>":
            return _reduce_local_function(obj)
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import importlib

        for new in MOVED_MODULES.get(module, ()):
            found = getattr(importlib.import_module(new), name, None)
            if found is not None:
                return found
        return super().find_class(module, name)


def loads(plain: bytes) -> Any:
    """Unpickle a state payload, finding classes where they live now (MOVED_MODULES)."""
    return _Unpickler(io.BytesIO(plain)).load()


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def persist_dir(state_dir: Path) -> Path:
    d = Path(state_dir) / PERSIST_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _sealing_key(state_dir: Path) -> bytes:
    path = persist_dir(state_dir) / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = AESGCM.generate_key(bit_length=256)
        _write_private(path, key)
        return key
    if len(key) != 32:
        raise StateError(f"{path}: expected a 32-byte key, found {len(key)} bytes")
    return key


# What every BackendDict has; anything else on one is state shared across its accounts (S3's
# bucket_accounts: the global bucket namespace and cross-account lookup).
_BACKEND_DICT_FIELDS = frozenset(
    {"backend", "service_name", "_use_boto3_regions", "_additional_regions", "_id"}
)


def _backends() -> dict[str, dict[str, Any]]:
    """service -> {"accounts": account -> region -> backend, "shared": the BackendDict's own
    extra attributes}, for every moto service that holds state."""
    from moto.core.base_backend import BackendDict

    out: dict[str, dict[str, Any]] = {}
    for bd in list(BackendDict._instances):  # type: ignore[misc]
        accounts = {acct: dict(asb.items()) for acct, asb in list(bd.items()) if len(asb)}
        if accounts:
            shared = {k: v for k, v in vars(bd).items() if k not in _BACKEND_DICT_FIELDS}
            out[bd.service_name] = {"accounts": accounts, "shared": shared}
    return out


def _extension_state() -> dict[str, Any]:
    import importlib

    return {
        f"{mod}:{name}": getattr(importlib.import_module(mod), name)
        for mod, name in EXTENSION_STATE
    }


def _started_instances() -> list[Any]:
    from local_backend.moto_ext.ec2 import started_instances

    return list(started_instances().values())


def snapshot(state_dir: Path, *, background: bool = False) -> Path | None:
    """Seal the endpoint's whole state into `<state>/persist/endpoint-state.bin`. A
    `background` snapshot is skipped (None) once the stop-time snapshot has begun."""
    import moto

    started = time.monotonic()
    with _snapshot_lock:
        if background and _stopping.is_set():
            return None
        payload = {
            "version": FORMAT_VERSION,
            "moto": moto.__version__,
            "backends": _backends(),
            "extensions": _extension_state(),
            "instances": _started_instances(),
        }
        for attempt in range(5):  # a request thread may change a dict while it is pickled
            try:
                plain = _dumps(payload)
                break
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.05)
        nonce = os.urandom(12)
        sealed = AESGCM(_sealing_key(state_dir)).encrypt(nonce, plain, MAGIC)
        path = persist_dir(state_dir) / STATE_FILE
        _write_private(path, MAGIC + nonce + sealed)
    log.info(
        "state saved: %d services, %d booted instance(s), %d KiB, %.2f s",
        len(payload["backends"]),
        len(payload["instances"]),
        len(sealed) // 1024,
        time.monotonic() - started,
    )
    return path


def _load(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir) / PERSIST_DIR / STATE_FILE
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
        raise StateError(f"{path}: not an enclavekit endpoint state file")
    nonce, sealed = blob[len(MAGIC) : len(MAGIC) + 12], blob[len(MAGIC) + 12 :]
    try:
        plain = AESGCM(_sealing_key(state_dir)).decrypt(nonce, sealed, MAGIC)
    except InvalidTag:
        raise StateError(f"{path}: does not open with {KEY_FILE} (damaged or replaced)") from None
    try:
        payload = loads(plain)  # our own file, authenticated by AES-GCM
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is one error
        raise StateError(f"{path}: cannot be read back: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("version") != FORMAT_VERSION:
        raise StateError(f"{path}: expected state format {FORMAT_VERSION}")
    return payload


def restore(state_dir: Path) -> list[Any]:
    """Load the saved state into this process's moto (before it serves); returns the instances
    to boot again (EnclaveInstance records). An unreadable file is set aside with one logged
    line and the endpoint starts empty, never half-restored."""
    import importlib

    import moto
    from moto.backends import get_backend

    try:
        payload = _load(state_dir)
    except StateError as exc:
        path = Path(state_dir) / PERSIST_DIR / STATE_FILE
        aside = path.with_name(f"{STATE_FILE}.unreadable-{int(time.time())}")
        with contextlib.suppress(OSError):
            path.replace(aside)
        log.error("state not restored: %s (set aside as %s); starting empty", exc, aside.name)
        return []
    if payload is None:
        return []
    if payload.get("moto") != moto.__version__:
        log.warning("state saved by moto %s, restored by %s", payload.get("moto"), moto.__version__)
    for service, saved in payload["backends"].items():
        try:
            bd = get_backend(service)
        except Exception:  # noqa: BLE001 - a service this moto no longer has
            log.error("state of service %s not restored: moto has no such backend", service)
            continue
        for account, regions in saved["accounts"].items():
            asb = bd[account]
            for region, backend in regions.items():
                dict.__setitem__(asb, region, backend)
                _register_refs(backend)
        for name, value in saved["shared"].items():
            setattr(bd, name, value)
    for key, value in payload["extensions"].items():
        mod, name = MOVED_EXTENSION_STATE.get(key, key).split(":", 1)
        target = getattr(importlib.import_module(mod), name)
        target.clear()
        target.update(value)
    instances = list(payload.get("instances") or [])
    log.info(
        "state restored: %d services, %d instance(s) to boot again",
        len(payload["backends"]),
        len(instances),
    )
    return instances


def boot_restored(instances: list[Any]) -> list[str]:
    """Boot the restored instances again through the EC2 start hooks (their parents or
    user-data hosts); returns one line per instance that failed to boot."""
    from local_backend.moto_ext.ec2 import hooks as ec2

    failures = []
    for info in instances:
        try:
            ec2.boot_again(info)
            log.info("instance %s: booted again after the endpoint restart", info.instance_id)
        except Exception as exc:  # noqa: BLE001 - reported, the others still boot
            log.error("instance %s: not booted again: %s", info.instance_id, exc)
            failures.append(f"{info.instance_id}: {exc}")
    return failures


def snapshot_on_stop(state_dir: Path) -> None:
    """The stop-time snapshot: never keeps the endpoint from stopping; a failure is logged."""
    _stopping.set()  # no snapshot after this one: the stop hooks empty the instance list
    try:
        snapshot(state_dir)
    except Exception:  # noqa: BLE001 - logged with its traceback, the stop goes on
        log.exception("state not saved on stop")


_pending = threading.Event()


def install(state_dir: Path) -> None:
    """Save the state after every CloudFormation stack operation has applied (in a thread,
    coalesced: the operation never waits for it, and a burst of stacks is one snapshot)."""
    from local_backend.moto_ext.cloudformation import models as cfn

    def _save_soon(_stack: Any, _operation: str) -> None:
        if _pending.is_set():
            return
        _pending.set()

        def _run() -> None:
            time.sleep(0.5)
            _pending.clear()
            try:
                snapshot(state_dir, background=True)
            except Exception:  # noqa: BLE001 - the stop-time snapshot still comes
                log.warning("state not saved after a stack operation", exc_info=True)

        threading.Thread(target=_run, name="state-snapshot", daemon=True).start()

    cfn.after_apply(_save_soon)
