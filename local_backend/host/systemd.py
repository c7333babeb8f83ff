"""`systemctl` and `journalctl` of an instance host, over real unit files.

Units are read from /etc/systemd/system, /run/systemd/system and /usr/lib/systemd/system (first
found wins; drop-in directories are not read). A started service gets a supervisor process
(forked by `systemctl start`, re-parented to the host's PID 1 as services are to systemd;
`python -m local_backend.host.systemd supervise UNIT` runs the same) that runs
`ExecStartPre`, `ExecStart`, `ExecStartPost` with the unit's `Environment`/`EnvironmentFile`,
`User`/`Group`, `WorkingDirectory`, for `Type=` simple, exec,
notify (ready when started: no sd_notify), oneshot (`RemainAfterExit`) and forking
(`PIDFile`), restarts it by `Restart=`/`RestartSec=`, and writes its output to the journal
(`/var/log/journal/<unit>.log`, read by `journalctl -u`). `ExecStop`, `ExecReload` run on
stop/reload. `Requires=`/`Wants=` units start first; at boot the enabled units start ordered by
`After=`. Command lines follow systemd's rules: quoting, `$$`, `${VAR}`, a word `$VAR` split,
and the `-` (ignore failure) and `@`/`+`/`!` prefixes.
Services start with systemd's clean environment plus the host's DefaultEnvironment (the
endpoint variables PID 1 has), never the caller's.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

UNIT_PATHS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system")
STATE_DIR = Path("/run/systemd/units")
JOURNAL_DIR = Path("/var/log/journal")
DEFAULT_ENV_FILE = Path("/run/enclavekit-host/default-environment.json")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
STOP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 90.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD_VAR = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


class UnitNotFound(Exception):
    pass


def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


def find_unit(name: str) -> Path:
    for d in UNIT_PATHS:
        p = Path(d) / name
        if p.is_file():
            return p
    raise UnitNotFound(name)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (repeated keys accumulate; an empty value resets)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = out.setdefault(s[1:-1], {})
            continue
        if section is None or "=" not in s:
            continue
        key, _, value = s.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            section[key] = []
        else:
            section.setdefault(key, []).append(value)
    return out


def split_command(line: str, env: dict[str, str]) -> list[str]:
    """A systemd command line -> argv (quotes, escapes, `$$`, `${VAR}`, a lone `$VAR`)."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        word, quote, raw_word = [], None, True
        start = i
        while i < n:
            c = line[i]
            if quote is None and c in " \t":
                break
            if c in "\"'" and (quote is None or quote == c):
                quote = None if quote == c else c
                raw_word = False
                i += 1
                continue
            if c == "\\" and i + 1 < n and quote != "'":
                nxt = line[i + 1]
                word.append(
                    {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", " ": " "}.get(
                        nxt, "\\" + nxt
                    )
                )
                i += 2
                continue
            word.append(c)
            i += 1
        text = "".join(word)
        m = _WORD_VAR.match(line[start:i]) if raw_word else None
        if m:
            words.extend(env.get(m.group(1), "").split())
            continue
        text = _VAR.sub(lambda mm: env.get(mm.group(1), ""), text.replace("$$", "\0"))
        words.append(text.replace("\0", "$"))
    return words


class Unit:
    def __init__(self, name: str) -> None:
        self.name = unit_name(name)
        self.path = find_unit(self.name)
        self.sections = parse_unit(self.path.read_text())

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        values = self.sections.get(section, {}).get(key)
        return values[-1] if values else default

    def all(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def words(self, section: str, key: str) -> list[str]:
        return [w for v in self.all(section, key) for w in v.split()]

    @property
    def service(self) -> dict[str, list[str]]:
        return self.sections.get("Service", {})

    def environment(self) -> dict[str, str]:
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8"}
        with contextlib.suppress(OSError, ValueError):
            env.update(json.loads(DEFAULT_ENV_FILE.read_text()))
        for value in self.all("Service", "Environment"):
            for word in split_command(value, {}):
                k, sep, v = word.partition("=")
                if sep:
                    env[k] = v
        for value in self.all("Service", "EnvironmentFile"):
            optional = value.startswith("-")
            path = Path(value.lstrip("-"))
            if not path.exists():
                if optional:
                    continue
                raise OSError(f"Failed to load environment files: {path}: No such file")
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, _, v = line.partition("=")
                    env[k.strip()] = v.strip().strip('"').strip("'")
        user = self.get("Service", "User")
        if user:
            pw = pwd.getpwnam(user)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user, SHELL=pw.pw_shell)
        else:
            env.update(HOME="/root", USER="root", LOGNAME="root")
        return env


# ------------------------------------------------------------------ state


def _state_path(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def read_state(name: str) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(_state_path(name).read_text())
    return {}


def _main_pid_env(name: str) -> dict[str, str]:
    """$MAINPID, as systemd sets it for ExecReload/ExecStop while the main process runs."""
    pid = read_state(name).get("MainPID")
    return {"MAINPID": str(pid)} if pid else {}


def write_state(name: str, **fields: Any) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    st = read_state(name)
    st.update(fields)
    tmp = _state_path(name).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(st))
    os.replace(tmp, _state_path(name))


def set_state(name: str, active: str, sub: str, **fields: Any) -> None:
    """Move a unit to ActiveState `active` / SubState `sub` now (`since`), with `fields`."""
    write_state(name, ActiveState=active, SubState=sub, **fields, since=time.time())


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


def active_state(name: str) -> str:
    st = read_state(name)
    state = st.get("ActiveState", "inactive")
    exited = state == "active" and st.get("SubState") == "exited"
    if (
        state in ("active", "activating", "deactivating")
        and not exited
        and not _alive(st.get("supervisor"))
    ):
        return "failed" if st.get("Result", "success") != "success" else "inactive"
    return state


# ------------------------------------------------------------------ journal


class Journal:
    def __init__(self, unit: str, ident: str) -> None:
        JOURNAL_DIR.mkdir(parents=True, exist_ok=True)
        self.path = JOURNAL_DIR / f"{unit}.log"
        self.ident = ident
        self.lock = threading.Lock()

    def line(self, text: str, pid: int | None = None, ident: str | None = None) -> None:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
        host = os.uname().nodename.split(".")[0]
        who = ident or self.ident
        tag = f"{who}[{pid}]" if pid else who
        with self.lock, open(self.path, "a") as fh:
            fh.write(f"{stamp} {host} {tag}: {text}\n")

    def pump(self, stream: Any, pid: int, ident: str) -> threading.Thread:
        def run() -> None:
            for raw in iter(stream.readline, b""):
                self.line(raw.decode(errors="replace").rstrip("\n"), pid, ident)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


# ------------------------------------------------------------------ supervisor


class Supervisor:
    """Runs one service (in its own process, a child of the host's PID 1)."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.name = unit.name
        self.type = unit.get("Service", "Type", "simple") or "simple"
        ident = unit.get("Service", "SyslogIdentifier")
        self.journal = Journal(self.name, ident or self.name.rsplit(".", 1)[0])
        self.ident = ident
        self.stopping = False
        self.main: subprocess.Popen[bytes] | None = None

    def _spawn(self, line: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes] | None, bool]:
        ignore = False
        while line[:1] in "-@+!:":
            ignore = ignore or line[0] == "-"
            line = line[1:]
        argv = split_command(line, env)
        user = self.unit.get("Service", "User")
        group = self.unit.get("Service", "Group")
        cwd = self.unit.get("Service", "WorkingDirectory") or "/"
        if cwd == "~":
            cwd = env.get("HOME", "/")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd.lstrip("-"),
                user=user,
                group=group or (pwd.getpwnam(user).pw_gid if user else None),
                extra_groups=None,
                start_new_session=True,
            )
        except (OSError, KeyError) as exc:
            self.journal.line(f"{self.name}: Failed to execute {argv[:1]}: {exc}", None, "systemd")
            return None, ignore
        assert proc.stdout is not None
        self.journal.pump(proc.stdout, proc.pid, self.ident or os.path.basename(argv[0]))
        return proc, ignore

    def _run_all(self, key: str, env: dict[str, str]) -> int:
        """Run every command of `key` in turn; the first failure's status (ignored ones 0)."""
        for line in self.unit.all("Service", key):
            proc, ignore = self._spawn(line, env)
            if proc is None:
                if not ignore:
                    return 203
                continue
            if key == "ExecStart":
                self.main = proc
                write_state(self.name, MainPID=proc.pid)
            code = proc.wait()
            if code != 0 and not ignore:
                return code
        return 0

    def _fail(self, code: int, what: str) -> None:
        set_state(
            self.name,
            "failed",
            "failed",
            Result="exit-code",
            ExecMainStatus=code,
            ExecMainCode=what,
        )
        self.journal.line(
            f"{self.name}: {what} process exited, code=exited, status={code}/FAILURE",
            None,
            "systemd",
        )
        self.journal.line(f"{self.name}: Failed with result 'exit-code'.", None, "systemd")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        desc = self.unit.get("Unit", "Description", self.name)
        restart = self.unit.get("Service", "Restart", "no")
        delay = _seconds(self.unit.get("Service", "RestartSec", "100ms"))
        try:
            env = self.unit.environment()
        except (OSError, KeyError) as exc:
            self.journal.line(f"{self.name}: {exc}", None, "systemd")
            self._fail(1, "config")
            return 1
        while True:
            set_state(self.name, "activating", "start", supervisor=os.getpid(), Result="success")
            self.journal.line(f"Starting {desc}...", None, "systemd")
            code = self._run_all("ExecStartPre", env)
            if code:
                self._fail(code, "control")
                return 1
            if self.type == "oneshot":
                code = self._run_all("ExecStart", env)
                if code:
                    self._fail(code, "main")
                    return 1
                self._run_all("ExecStartPost", env)
                remain = (self.unit.get("Service", "RemainAfterExit", "no") or "no").lower()
                if remain in ("yes", "true", "1", "on"):
                    set_state(self.name, "active", "exited", ExecMainStatus=0)
                else:
                    set_state(self.name, "inactive", "dead", ExecMainStatus=0)
                self.journal.line(f"Finished {desc}.", None, "systemd")
                return 0
            lines = self.unit.all("Service", "ExecStart")
            if not lines:
                self._fail(1, "config")
                return 1
            proc, _ignore = self._spawn(lines[-1], env)
            if proc is None:
                self._fail(203, "main")
                return 1
            self.main = proc
            pid: int | None = proc.pid
            if self.type == "forking":
                code = proc.wait()
                if code:
                    self._fail(code, "control")
                    return 1
                pid = self._pidfile_pid()
            set_state(self.name, "active", "running", MainPID=pid)
            self._run_all("ExecStartPost", env)
            self.journal.line(f"Started {desc}.", None, "systemd")
            if self.type == "forking":
                while not self.stopping and _alive(pid):
                    time.sleep(0.2)
                code = 0
            else:
                code = proc.wait()
            if self.stopping:
                return 0
            if code == 0 and restart in ("always",):
                pass
            elif code != 0 and restart in ("always", "on-failure", "on-abnormal"):
                self.journal.line(
                    f"{self.name}: Main process exited, code=exited, status={code}/FAILURE",
                    None,
                    "systemd",
                )
            else:
                if code:
                    self._fail(code, "main")
                    return 1
                set_state(self.name, "inactive", "dead", ExecMainStatus=0)
                self.journal.line(f"{self.name}: Deactivated successfully.", None, "systemd")
                return 0
            self.journal.line(f"{self.name}: Scheduled restart job.", None, "systemd")
            time.sleep(delay)

    def _pidfile_pid(self) -> int | None:
        path = self.unit.get("Service", "PIDFile")
        if not path:
            return None
        for _ in range(50):
            with contextlib.suppress(OSError, ValueError):
                return int(Path(path).read_text().strip())
            time.sleep(0.1)
        return None

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True
        env = (
            {**self.unit.environment(), **_main_pid_env(self.name)}
            if self.unit.all("Service", "ExecStop")
            else {}
        )
        if env:
            self._run_all("ExecStop", env)
        pids = [
            p
            for p in (self.main.pid if self.main else None, read_state(self.name).get("MainPID"))
            if p
        ]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                if self.main is not None:
                    self.main.poll()
                time.sleep(0.05)
            if not any(_alive(p) for p in pids):
                break
        set_state(self.name, "inactive", "dead")
        self.journal.line(
            f"Stopped {self.unit.get('Unit', 'Description', self.name)}.", None, "systemd"
        )
        os._exit(0)


def _seconds(text: str | None) -> float:
    t = (text or "0").strip()
    m = re.fullmatch(r"([\d.]+)\s*(ms|s|sec|min|m)?", t)
    if not m:
        return 0.1
    value = float(m.group(1))
    return {"ms": value / 1000, "min": value * 60, "m": value * 60}.get(m.group(2) or "s", value)


# ------------------------------------------------------------------ systemctl verbs


def start(name: str, *, chain: tuple[str, ...] = ()) -> int:
    unit = Unit(name)
    if active_state(unit.name) in ("active", "activating"):
        return 0
    for dep in unit.words("Unit", "Requires") + unit.words("Unit", "Wants"):
        if dep in chain or not dep.endswith(".service"):
            continue
        with contextlib.suppress(UnitNotFound):
            start(dep, chain=(*chain, unit.name))
    set_state(unit.name, "activating", "start", supervisor=None, Result="success")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing buffered may be written twice by the fork
    pid = os.fork()
    if pid == 0:  # double fork: the supervisor is re-parented to the host's PID 1
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        _become_supervisor(unit.name)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + START_TIMEOUT_S
    oneshot = (unit.get("Service", "Type", "simple") or "simple") == "oneshot"
    while time.monotonic() < deadline:
        st = read_state(unit.name)
        state = st.get("ActiveState")
        if state == "failed":
            kind = "control process" if st.get("ExecMainCode") == "control" else "control process"
            print(
                f"Job for {unit.name} failed because the {kind} exited with error code.\n"
                f'See "systemctl status {unit.name}" and "journalctl -xeu {unit.name}" for '
                "details.",
                file=sys.stderr,
            )
            return 1
        if state == "active" or (oneshot and state == "inactive" and st.get("supervisor")):
            return 0
        if state == "inactive" and st.get("supervisor") and not oneshot:
            return 0
        time.sleep(0.02)
    print(f"Job for {unit.name} timed out.", file=sys.stderr)
    return 1


def _become_supervisor(name: str) -> None:
    """The forked process turns into the unit's supervisor (what `python -m
    local_backend.host.systemd supervise UNIT` runs), without a second Python start-up: the
    caller's descriptors and signal handlers go (PID 1's would stop the host), stdio is
    /dev/null."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, _max_fd())
        code = Supervisor(Unit(name)).run()
    finally:
        os._exit(code)


def _max_fd() -> int:
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 1024


def stop(name: str) -> int:
    unit_n = unit_name(name)
    st = read_state(unit_n)
    sup = st.get("supervisor")
    if sup and _alive(sup):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S * 2 + 1
        while _alive(sup) and time.monotonic() < deadline:
            time.sleep(0.02)
    if st:
        set_state(unit_n, "inactive", "dead")
    return 0


def _wanted_dirs(unit: Unit) -> list[Path]:
    return [
        Path("/etc/systemd/system") / f"{t}.wants"
        for t in unit.words("Install", "WantedBy") + unit.words("Install", "RequiredBy")
    ]


def enable(name: str) -> int:
    unit = Unit(name)
    dirs = _wanted_dirs(unit)
    if not dirs:
        print(
            "The unit files have no installation config (WantedBy=, RequiredBy=, Also=,\n"
            "Alias= settings in the [Install] section, and DefaultInstance= for template\n"
            "units). This means they are not meant to be enabled or disabled using systemctl.",
            file=sys.stderr,
        )
        return 0
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        link = d / unit.name
        if not link.is_symlink():
            link.symlink_to(unit.path)
            print(f"Created symlink {link} \u2192 {unit.path}.", file=sys.stderr)
    return 0


def disable(name: str) -> int:
    n = unit_name(name)
    for link in Path("/etc/systemd/system").glob(f"*.wants/{n}"):
        link.unlink()
        print(f'Removed "{link}".', file=sys.stderr)
    return 0


def is_enabled(name: str) -> bool:
    return any(Path("/etc/systemd/system").glob(f"*.wants/{unit_name(name)}"))


def status(name: str) -> int:
    unit = Unit(name)
    st = read_state(unit.name)
    state = active_state(unit.name)
    sub = st.get("SubState", "dead") if state != "inactive" else "dead"
    desc = unit.get("Unit", "Description", unit.name)
    enabled = "enabled" if is_enabled(unit.name) else "disabled"
    dot = {"active": "\u25cf", "failed": "\u00d7"}.get(state, "\u25cb")
    print(f"{dot} {unit.name} - {desc}")
    print(f"     Loaded: loaded ({unit.path}; {enabled}; preset: disabled)")
    since = st.get("since")
    when = time.strftime(" since %a %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else ""
    result = f" (Result: {st.get('Result')})" if state == "failed" else ""
    print(f"     Active: {state} ({sub}){result}{when}")
    if st.get("MainPID"):
        code = st.get("ExecMainStatus")
        extra = f" (code=exited, status={code})" if code is not None and state != "active" else ""
        print(f"   Main PID: {st['MainPID']}{extra}")
    journal = JOURNAL_DIR / f"{unit.name}.log"
    if journal.exists():
        print()
        for line in journal.read_text().splitlines()[-10:]:
            print(line)
    return 0 if state == "active" else 3


def start_enabled(out: Any = None) -> None:
    """At boot: start every enabled service, `After=` ordering respected."""
    names = sorted({p.name for p in Path("/etc/systemd/system").glob("*.wants/*.service")})
    done: set[str] = set()

    def visit(n: str, chain: tuple[str, ...]) -> None:
        if n in done or n in chain:
            return
        with contextlib.suppress(UnitNotFound):
            for dep in Unit(n).words("Unit", "After"):
                if dep in names:
                    visit(dep, (*chain, n))
            start(n)
        done.add(n)

    for n in names:
        visit(n, ())


def stop_all() -> None:
    if STATE_DIR.is_dir():
        for p in STATE_DIR.glob("*.json"):
            stop(p.stem)


def systemctl(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = {a for a in argv if a.startswith("-")}
    if not args:
        print("systemctl: a command is required (start, stop, status, ...)", file=sys.stderr)
        return 1
    cmd, names = args[0], args[1:]
    try:
        if cmd == "daemon-reload":
            return 0
        if cmd in ("start", "restart", "try-restart", "reload-or-restart"):
            rc = 0
            for n in names:
                if cmd != "start":
                    stop(n)
                try:
                    rc = start(n) or rc
                except UnitNotFound:
                    print(
                        f"Failed to {cmd} {unit_name(n)}: Unit {unit_name(n)} not found.",
                        file=sys.stderr,
                    )
                    rc = 5
            return rc
        if cmd == "stop":
            for n in names:
                stop(n)
            return 0
        if cmd == "reload":
            rc = 0
            for n in names:
                unit = Unit(n)
                if not unit.all("Service", "ExecReload"):
                    print(
                        f"Failed to reload {unit.name}: Job type reload is not applicable "
                        f"for unit {unit.name}.",
                        file=sys.stderr,
                    )
                    rc = 1
                    continue
                # systemd gives ExecReload $MAINPID (`kill -HUP $MAINPID`, the usual line)
                env = {**unit.environment(), **_main_pid_env(unit.name)}
                rc = Supervisor(unit)._run_all("ExecReload", env) or rc
            return rc
        if cmd in ("enable", "disable"):
            rc = 0
            for n in names:
                rc = (enable(n) if cmd == "enable" else disable(n)) or rc
                if "--now" in flags:
                    rc = (start(n) if cmd == "enable" else stop(n)) or rc
            return rc
        if cmd == "show":  # `--property=P` (AWS's ACM agent asks MainPID): 0 when not running
            props = [f.split("=", 1)[1] for f in flags if f.startswith("--property=")]
            for n in names:
                name = unit_name(n)
                state = active_state(name)
                values = {
                    "MainPID": read_state(name).get("MainPID", 0) if state == "active" else 0,
                    "ActiveState": state,
                }
                for prop in props or list(values):
                    if prop in values:
                        print(f"{prop}={values[prop]}")
            return 0
        if cmd == "is-active":
            states = [active_state(unit_name(n)) for n in names]
            if "--quiet" not in flags and "-q" not in flags:
                print("\n".join(states))
            return 0 if all(s == "active" for s in states) else 3
        if cmd == "is-failed":
            states = [active_state(unit_name(n)) for n in names]
            print("\n".join(states))
            return 0 if any(s == "failed" for s in states) else 1
        if cmd == "is-enabled":
            flags_ = [is_enabled(n) for n in names]
            print("\n".join("enabled" if f else "disabled" for f in flags_))
            return 0 if all(flags_) else 1
        if cmd == "status":
            rc = 0
            for n in names:
                try:
                    rc = status(n) or rc
                except UnitNotFound:
                    print(f"Unit {unit_name(n)} could not be found.", file=sys.stderr)
                    rc = 4
            return rc
    except UnitNotFound as exc:
        print(f"Failed to {cmd} {exc}: Unit {exc} not found.", file=sys.stderr)
        return 5
    print(f"Unknown command verb '{cmd}'.", file=sys.stderr)
    return 1


def journalctl(argv: list[str]) -> int:
    units: list[str] = []
    lines: int | None = None
    it = iter(argv)
    for a in it:
        if a in ("-u", "--unit"):
            units.append(unit_name(next(it, "")))
        elif a.startswith("--unit="):
            units.append(unit_name(a.split("=", 1)[1]))
        elif a in ("-n", "--lines"):
            lines = int(next(it, "10"))
        elif a.startswith("-n") and a[2:].isdigit():
            lines = int(a[2:])
    paths = (
        [JOURNAL_DIR / f"{u}.log" for u in units] if units else sorted(JOURNAL_DIR.glob("*.log"))
    )
    out: list[str] = []
    for p in paths:
        with contextlib.suppress(OSError):
            out.extend(p.read_text().splitlines())
    if not out:
        print("-- No entries --")
        return 0
    for line in out[-lines:] if lines else out:
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["supervise"]:
        return Supervisor(Unit(args[1])).run()
    return systemctl(args)


if __name__ == "__main__":
    sys.exit(main())
