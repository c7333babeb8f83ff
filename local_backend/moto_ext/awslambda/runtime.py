"""The local Lambda runtime: a function's handler runs as a subprocess, without Docker.

`nodejs*` functions run on the project's Node.js 22 with the AWS SDK for JavaScript v3 clients
pinned in package.json on NODE_PATH (what the managed runtime provides); `python*` functions run
on the project interpreter (boto3 included). The function's zip is unpacked once per code hash
under `<state>/lambda/`. Each invocation gets the Lambda environment (AWS_LAMBDA_*, the
function's variables, LAMBDA_TASK_ROOT), its execution role's session credentials for the
local endpoint only (`enclavekit.localenv`, nothing of the caller's, never the root key), the
function's timeout ("Task timed out after N seconds", as AWS says) and its output in the local
CloudWatch Logs group `/aws/lambda/<name>`. Handlers sit behind the endpoint's egress guard
(local_backend.egress): a connection to anything but loopback is refused and logged with its
host. A function with layers gets them, merged and read-only, at /opt in its own mount
namespace (layers.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclavekit.errors import BackendError
from enclavekit.localenv import local_aws_env
from enclavekit.toolchain import PROJECT_ROOT
from local_backend.endpoint_file import read_endpoint

from . import layers

log = logging.getLogger("enclavekit.endpoint.lambda")

HERE = Path(__file__).resolve().parent
NODE = PROJECT_ROOT / "node_modules" / "node" / "bin" / "node"
NODE_MODULES = PROJECT_ROOT / "node_modules"
# Where a CloudFormation custom-resource response is PUT (the collector in cloudformation).
RESPONSE_PREFIX = "/_enclavekit/cfn-response/"

_state: dict[str, Any] = {"state_dir": None, "response_port": 0}


# Asynchronous work in flight (Step Functions executions started by a handler): a custom
# resource whose handler answers later (cr.Provider's isComplete waiter) waits for it.
_async = {"count": 0}
_async_cond = threading.Condition()


def async_work_started() -> None:
    with _async_cond:
        _async["count"] += 1


def async_work_done() -> None:
    with _async_cond:
        _async["count"] -= 1
        _async_cond.notify_all()


def wait_async_work(timeout: float) -> None:
    """Block until no asynchronous work is in flight (at most `timeout` seconds)."""
    with _async_cond:
        _async_cond.wait_for(lambda: _async["count"] <= 0, timeout)


class RuntimeNotEmulated(BackendError):
    """A function whose runtime (or packaging) the local runtime cannot run."""


@dataclass(frozen=True)
class Invocation:
    """One finished invocation: the handler's payload or its error, and its log output."""

    ok: bool
    payload: Any
    error_type: str = ""
    error_message: str = ""
    logs: str = ""

    def error_json(self) -> str:
        """The payload AWS returns for a function error."""
        return json.dumps({"errorType": self.error_type, "errorMessage": self.error_message})


def configure(state_dir: Path) -> None:
    """Remember the endpoint's state dir (code cache, endpoint.json)."""
    _state["state_dir"] = Path(state_dir)


def set_response_port(port: int) -> None:
    """The loopback port of the custom-resource response collector (node's https shim)."""
    _state["response_port"] = port


def endpoint() -> str:
    """The running endpoint's URL (from its endpoint.json, written once it is bound)."""
    state_dir = _state["state_dir"]
    if state_dir is None:
        raise RuntimeNotEmulated("the local Lambda runtime is not configured")
    info = read_endpoint(Path(state_dir))
    if info is None:
        raise RuntimeNotEmulated(
            f"{state_dir}: no endpoint.json: the local endpoint is not running"
        )
    return info.endpoint


def _code_dir(fn: Any) -> Path:
    code = getattr(fn, "code_bytes", b"") or b""
    if not code:
        raise RuntimeNotEmulated(
            f"function {fn.function_name}: only zip packages run locally (no image functions)"
        )
    digest = hashlib.sha256(code).hexdigest()[:32]
    root = Path(_state["state_dir"] or tempfile.gettempdir()) / "lambda" / digest
    if not (root / ".unpacked").exists():
        root.mkdir(parents=True, exist_ok=True)
        try:
            layers.unzip(code, root, f"function {fn.function_name}")
        except layers.LayersNotEmulated as exc:
            raise RuntimeNotEmulated(str(exc)) from exc
        (root / ".unpacked").touch()
    return root


def _command(fn: Any, event_file: Path, result_file: Path) -> list[str]:
    runtime = str(fn.run_time or "")
    handler = str(fn.handler or "")
    if runtime.startswith("nodejs"):
        if not NODE.exists():
            raise RuntimeNotEmulated("the project's Node.js 22 is missing: run `make setup`")
        return [str(NODE), str(HERE / "bootstrap.js"), handler, str(event_file), str(result_file)]
    if runtime.startswith("python"):
        return [
            sys.executable,
            str(HERE / "bootstrap.py"),
            handler,
            str(event_file),
            str(result_file),
        ]
    raise RuntimeNotEmulated(
        f"function {fn.function_name}: runtime {runtime or '(none)'} is not emulated "
        "(nodejs* and python* are)"
    )


_guard: dict[str, Any] = {}
_guard_lock = threading.Lock()


def _egress_env() -> dict[str, str]:
    """Proxy variables of the endpoint's egress guard (started once): a handler that tries a
    non-loopback host is refused at once, and the endpoint log names the host."""
    from local_backend.egress import start_guard

    with _guard_lock:
        if "guard" not in _guard:

            def report(host: str, port: int) -> None:
                log.warning(
                    "egress guard: refused a Lambda handler's connection to %s:%s", host, port
                )

            _guard["guard"], _ = start_guard(report)
        return dict(_guard["guard"].env())


def _role_session(fn: Any, region: str) -> Any:
    """The execution role's session, as Lambda hands it to a function (`assumed-role/<role>/
    <function>`): the handler acts with the role's policies, never the account root's key."""
    from local_backend.moto_ext.iam_authz import service_roles

    return service_roles.assume("lambda.amazonaws.com", str(fn.role), fn.function_name, region)


def _environment(fn: Any, code_dir: Path, request_id: str, account_id: str, region: str) -> dict:
    # The function's variables first, then the local endpoint's credentials over them (AWS
    # reserves AWS_* names; nothing a template sets can point a handler at a real account).
    variables = {str(k): str(v) for k, v in (fn.environment_vars or {}).items()}
    session = _role_session(fn, region)
    env = local_aws_env(
        endpoint(),
        base={**_base_env(), **variables},
        region=region,
        access_key_id=session.access_key_id,
        secret_access_key=session.secret_access_key,
        session_token=session.session_token,
    )
    env.update(_egress_env())
    env.update(
        LAMBDA_TASK_ROOT=str(code_dir),
        LAMBDA_RUNTIME_DIR=str(HERE),
        AWS_LAMBDA_FUNCTION_NAME=fn.function_name,
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(fn.memory_size),
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{fn.function_name}",
        AWS_LAMBDA_LOG_STREAM_NAME=f"{time.strftime('%Y/%m/%d')}/[$LATEST]{request_id[:32]}",
        AWS_EXECUTION_ENV=f"AWS_Lambda_{fn.run_time}",
        EK_LAMBDA_FUNCTION_ARN=fn.function_arn,
        EK_LAMBDA_REQUEST_ID=request_id,
        EK_LAMBDA_TIMEOUT_MS=str(int(fn.timeout) * 1000),
        EK_CFN_RESPONSE_PREFIX=RESPONSE_PREFIX,
        EK_CFN_RESPONSE_PORT=str(_state["response_port"]),
        NODE_PATH=str(NODE_MODULES),
        TZ=":UTC",
    )
    return env


def _base_env() -> dict[str, str]:
    """The few host variables a handler process needs; nothing else of the endpoint's."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


def invoke(fn: Any, event: Any, *, account_id: str, region: str) -> Invocation:
    """Run `fn`'s handler once with `event` and wait for it (at most its timeout)."""
    request_id = str(uuid.uuid4())
    code_dir = _code_dir(fn)
    with tempfile.TemporaryDirectory(prefix="ek-lambda-") as tmp:
        event_file, result_file = Path(tmp) / "event.json", Path(tmp) / "result.json"
        event_file.write_text(json.dumps(event))
        argv = _command(fn, event_file, result_file)
        try:
            opt = layers.opt_dir(fn, Path(_state["state_dir"] or tempfile.gettempdir()))
            if opt is not None:
                argv = layers.wrap(argv, opt, NODE)
        except layers.LayersNotEmulated as exc:
            raise RuntimeNotEmulated(str(exc)) from exc
        start = time.monotonic()
        try:
            env = _environment(fn, code_dir, request_id, account_id, region)
        except Exception as exc:  # noqa: BLE001 - ServiceCannotAssume: the invocation fails
            log.warning("lambda %s: %s", fn.function_name, exc)
            message = "The role defined for the function cannot be assumed by Lambda."
            return Invocation(False, None, "InvalidParameterValueException", message, str(exc))
        if opt is not None:
            env.update(layers.environment(str(fn.run_time or ""), env))
        returncode, output = _run(argv, code_dir, env, max(1, int(fn.timeout)), Path(tmp))
        timed_out = returncode is None
        elapsed = time.monotonic() - start
        if timed_out:
            result = Invocation(
                False,
                None,
                "Sandbox.Timedout",
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {request_id} Task timed "
                f"out after {int(fn.timeout):.2f} seconds",
                output,
            )
        elif result_file.exists():
            raw = json.loads(result_file.read_text() or "{}")
            if raw.get("ok"):
                result = Invocation(True, raw.get("payload"), logs=output)
            else:
                result = Invocation(
                    False,
                    None,
                    str(raw.get("errorType", "Error")),
                    str(raw.get("errorMessage", "")),
                    output,
                )
        else:
            result = Invocation(
                False,
                None,
                "Runtime.ExitError",
                f"RequestId: {request_id} Error: Runtime exited with error: exit status "
                f"{returncode}",
                output,
            )
    log.info(
        "lambda %s (%s) %s in %.2fs%s",
        fn.function_name,
        fn.run_time,
        "ok" if result.ok else "failed",
        elapsed,
        "" if result.ok else f": {result.error_type}: {result.error_message}",
    )
    _to_cloudwatch(fn, request_id, result, account_id, region, elapsed)
    return result


def _run(argv: list[str], cwd: Path, env: dict, timeout: int, tmp: Path) -> tuple[int | None, str]:
    """(exit status, or None on timeout; the output) of the handler process. It runs in its
    own process group, killed whole when the handler returns or times out: as Lambda's
    sandbox ends with the invocation, no process it started (an `aws s3 sync` child, a
    daemon holding the output open) outlives it or delays the answer."""
    out_file = tmp / "output.log"
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            exited = _wait_unreaped(proc.pid, timeout)
        finally:
            # the unreaped leader keeps its group id ours: the kill cannot reach a stranger
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
    return (returncode if exited else None), out_file.read_text(errors="replace")


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Whether `pid` exited within `timeout` seconds; it is left a zombie (not reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


# Log events waiting for their group: Lambda delivers logs asynchronously, so a template's
# own `/aws/lambda/<name>` LogGroup (created after the function, often while a custom resource
# is being invoked) must not find the group already made by the first invocation.
_pending_logs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
_pending_lock = threading.Lock()
LOG_DELIVERY_DELAY = 5.0


def _to_cloudwatch(
    fn: Any, request_id: str, result: Invocation, account_id: str, region: str, elapsed: float
) -> None:
    """The invocation's output in `/aws/lambda/<name>`, as the managed runtime writes it."""
    group = f"/aws/lambda/{fn.function_name}"
    stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{request_id.replace('-', '')}"
    lines = [f"START RequestId: {request_id} Version: $LATEST"]
    lines += [ln for ln in result.logs.splitlines() if ln.strip()]
    if not result.ok:
        error = {"errorType": result.error_type, "errorMessage": result.error_message}
        lines.append(json.dumps(error))
    lines.append(f"END RequestId: {request_id}")
    lines.append(f"REPORT RequestId: {request_id}\tDuration: {elapsed * 1000:.2f} ms")
    now = int(time.time() * 1000)
    with _pending_lock:
        _pending_logs.setdefault((account_id, region, group), []).extend(
            {"timestamp": now, "message": ln, "stream": stream} for ln in lines
        )
    timer = threading.Timer(LOG_DELIVERY_DELAY, _deliver, args=(account_id, region, group))
    timer.daemon = True
    timer.start()


def _deliver(account_id: str, region: str, group: str) -> None:
    """Write the pending events of `group` (creating it if nobody has by now)."""
    from moto.logs.models import logs_backends

    with _pending_lock:
        events = _pending_logs.pop((account_id, region, group), [])
    if not events:
        return
    backend = logs_backends[account_id][region]
    with contextlib.suppress(Exception):  # logging must never fail anything
        backend.ensure_log_group(group)
        for stream in sorted({e["stream"] for e in events}):
            with contextlib.suppress(Exception):
                backend.create_log_stream(group, stream)
            batch = [
                {"timestamp": e["timestamp"], "message": e["message"]}
                for e in events
                if e["stream"] == stream
            ]
            backend.put_log_events(group, stream, batch)
