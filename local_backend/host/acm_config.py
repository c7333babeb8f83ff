"""`/etc/nitro_enclaves/acm.yaml`: the ACM for Nitro Enclaves agent's configuration.

The schema of aws/aws-nitro-enclaves-acm `src/vtok_agent/src/config.rs` (serde): `enclave`
(cpu_count, memory_mib, image_path?, boot_timeout_ms?, p11kit_port?, rpc_port?,
attestation_retry_count?), `tokens[]` (label, pin?, source one of `Acm{certificate_arn,
bucket?}` / `S3{uri}` / `FileDb{path}`, target? `Conf` alias `NginxStanza` `{path, user?,
group?}`, refresh_interval_secs?), `log?` (level, enable_timestamp?), `options` (service,
force_start alias nginx_force_start, reload_wait_ms alias nginx_reload_wait_ms,
sync_interval_secs), with serde's defaults; unknown keys are ignored as serde ignores them.
A bad file is one `ConfigError` naming the key and the form it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_PATH = "/etc/nitro_enclaves/acm.yaml"
DEFAULT_EIF_PATH = "/usr/share/nitro_enclaves/p11ne/p11ne.eif"
SERVICES = ("nginx", "httpd")
LOG_LEVELS = ("Error", "Warn", "Info", "Debug", "Trace")


class ConfigError(Exception):
    """One line: the key path and the expected form."""


@dataclass(frozen=True)
class Enclave:
    cpu_count: int
    memory_mib: int
    image_path: str = DEFAULT_EIF_PATH
    boot_timeout_ms: int = 5000
    p11kit_port: int = 9999
    rpc_port: int = 10000
    attestation_retry_count: int = 5


@dataclass(frozen=True)
class Source:
    kind: str  # Acm | S3 | FileDb
    certificate_arn: str = ""
    bucket: str = "prod"
    uri: str = ""
    path: str = ""


@dataclass(frozen=True)
class Target:
    path: str
    user: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Token:
    label: str
    source: Source
    pin: str | None = None
    target: Target | None = None
    refresh_interval_secs: int = 12 * 3600


@dataclass(frozen=True)
class Options:
    service: str = "nginx"
    force_start: bool = True
    reload_wait_ms: int = 1000
    sync_interval_secs: int = 600


@dataclass(frozen=True)
class Log:
    level: str = "Info"
    enable_timestamp: bool = False


@dataclass(frozen=True)
class Config:
    enclave: Enclave
    tokens: list[Token]
    options: Options = field(default_factory=Options)
    log: Log = field(default_factory=Log)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "a sequence"
    return "a map"


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, text: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {text}" if key else f"{self.path}: {text}")

    def map(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"invalid type: {_kind(value)}, expected a map")
        return value

    def get(
        self, m: dict[str, Any], key: str, name: str, *aliases: str, required: bool = True
    ) -> Any:
        for n in (name, *aliases):
            if n in m:
                return m[n]
        if required:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{self.path}: {where}missing field `{name}`")
        return None

    def uint(self, value: Any, key: str, *, bits: int = 64) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, f"invalid type: {_kind(value)}, expected u{bits}")
        if value >= 1 << bits:
            raise self.fail(key, f"invalid value: integer `{value}`, expected u{bits}")
        return value

    def str_(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"invalid type: {_kind(value)}, expected a string")
        return value

    def bool_(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"invalid type: {_kind(value)}, expected a boolean")
        return value

    def variant(self, value: Any, key: str, variants: tuple[str, ...]) -> tuple[str, Any]:
        """serde's externally tagged enum: a map with exactly one variant name."""
        expected = ", ".join(f"`{v}`" for v in variants)
        if isinstance(value, str):
            value = {value: None}
        if not isinstance(value, dict) or len(value) != 1:
            raise self.fail(
                key, f"invalid type: {_kind(value)}, expected a map with one of {expected}"
            )
        ((name, body),) = value.items()
        if name not in variants:
            raise self.fail(key, f"unknown variant `{name}`, expected one of {expected}")
        return name, body


def _enclave(r: _Reader, raw: Any) -> Enclave:
    m = r.map(raw, "enclave")
    out: dict[str, Any] = {}
    for name in ("cpu_count", "memory_mib"):
        out[name] = r.uint(r.get(m, "enclave", name), f"enclave.{name}")
    image = r.get(m, "enclave", "image_path", required=False)
    if image is not None:
        out["image_path"] = r.str_(image, "enclave.image_path")
    for name, bits in (
        ("boot_timeout_ms", 64),
        ("p11kit_port", 32),
        ("rpc_port", 32),
        ("attestation_retry_count", 64),
    ):
        v = r.get(m, "enclave", name, required=False)
        if v is not None:
            out[name] = r.uint(v, f"enclave.{name}", bits=bits)
    return Enclave(**out)


def _source(r: _Reader, raw: Any, key: str) -> Source:
    kind, body = r.variant(raw, key, ("Acm", "S3", "FileDb"))
    key = f"{key}.{kind}"
    m = r.map(body, key)
    if kind == "Acm":
        arn = r.str_(r.get(m, key, "certificate_arn"), f"{key}.certificate_arn")
        bucket = r.get(m, key, "bucket", required=False)
        return Source(
            kind,
            certificate_arn=arn,
            bucket="prod" if bucket is None else r.str_(bucket, f"{key}.bucket"),
        )
    if kind == "S3":
        return Source(kind, uri=r.str_(r.get(m, key, "uri"), f"{key}.uri"))
    return Source(kind, path=r.str_(r.get(m, key, "path"), f"{key}.path"))


def _target(r: _Reader, raw: Any, key: str) -> Target:
    kind, body = r.variant(raw, key, ("Conf", "NginxStanza"))
    key = f"{key}.{kind}"
    m = r.map(body, key)
    opt = {}
    for name in ("user", "group"):
        v = r.get(m, key, name, required=False)
        if v is not None:
            opt[name] = r.str_(v, f"{key}.{name}")
    return Target(path=r.str_(r.get(m, key, "path"), f"{key}.path"), **opt)


def _token(r: _Reader, raw: Any, i: int) -> Token:
    key = f"tokens[{i}]"
    m = r.map(raw, key)
    out: dict[str, Any] = {
        "label": r.str_(r.get(m, key, "label"), f"{key}.label"),
        "source": _source(r, r.get(m, key, "source"), f"{key}.source"),
    }
    pin = r.get(m, key, "pin", required=False)
    if pin is not None:
        out["pin"] = r.str_(pin, f"{key}.pin")
    target = r.get(m, key, "target", required=False)
    if target is not None:
        out["target"] = _target(r, target, f"{key}.target")
    refresh = r.get(m, key, "refresh_interval_secs", required=False)
    if refresh is not None:
        out["refresh_interval_secs"] = r.uint(refresh, f"{key}.refresh_interval_secs")
    return Token(**out)


def _options(r: _Reader, raw: Any) -> Options:
    m = r.map(raw, "options")
    out: dict[str, Any] = {}
    service = r.get(m, "options", "service", required=False)
    if service is not None:
        service = r.str_(service, "options.service")
        if service not in SERVICES:
            raise r.fail(
                "options.service", f"unknown service `{service}`, expected `nginx` or `httpd`"
            )
        out["service"] = service
    v = r.get(m, "options", "force_start", "nginx_force_start", required=False)
    if v is not None:
        out["force_start"] = r.bool_(v, "options.force_start")
    v = r.get(m, "options", "reload_wait_ms", "nginx_reload_wait_ms", required=False)
    if v is not None:
        out["reload_wait_ms"] = r.uint(v, "options.reload_wait_ms")
    v = r.get(m, "options", "sync_interval_secs", required=False)
    if v is not None:
        out["sync_interval_secs"] = r.uint(v, "options.sync_interval_secs")
    return Options(**out)


def _log(r: _Reader, raw: Any) -> Log:
    m = r.map(raw, "log")
    level = r.get(m, "log", "level")
    if level not in LOG_LEVELS:
        expected = ", ".join(f"`{v}`" for v in LOG_LEVELS)
        raise r.fail("log.level", f"unknown variant `{level}`, expected one of {expected}")
    ts = r.get(m, "log", "enable_timestamp", required=False)
    return Log(level, False if ts is None else r.bool_(ts, "log.enable_timestamp"))


def parse(text: str, path: str = CONFIG_PATH) -> Config:
    r = _Reader(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None
    m = r.map(raw, "")
    tokens_raw = r.get(m, "", "tokens")
    if not isinstance(tokens_raw, list):
        raise r.fail("tokens", f"invalid type: {_kind(tokens_raw)}, expected a sequence")
    options = m.get("options")
    log = m.get("log")
    return Config(
        enclave=_enclave(r, r.get(m, "", "enclave")),
        tokens=[_token(r, t, i) for i, t in enumerate(tokens_raw)],
        options=Options() if options is None else _options(r, options),
        log=Log() if log is None else _log(r, log),
    )


def load(path: str = CONFIG_PATH) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse(text, path)
