"""The local Lambda runtime's Python bootstrap: imports the function's handler from
LAMBDA_TASK_ROOT and calls it once with the event, as the managed python runtime does.

argv: <handler "module.function"> <event json file> <result json file>. The outcome goes to
the result file: {"ok": true, "payload": ...} or {"ok": false, "errorType", "errorMessage",
"trace"}.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any


class Context:
    """The fields and method of the Lambda context object handlers use."""

    def __init__(self, deadline: float) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = env.get("EK_LAMBDA_FUNCTION_ARN", "")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.aws_request_id = env.get("EK_LAMBDA_REQUEST_ID", "")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _failure(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "ok": False,
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "trace": traceback.format_exception(exc),
    }


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = os.environ.get("EK_LAMBDA_REQUEST_ID", "")
        return True


def _lambda_logging() -> None:
    """The root logger's handler the managed runtime installs: a handler's `logging` output
    reaches its log stream (with AWS's line format) once it sets a level."""
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_RequestId())
    logging.getLogger().addHandler(handler)


def main() -> None:
    handler_spec, event_file, result_file = sys.argv[1:4]
    deadline = time.time() + int(os.environ.get("EK_LAMBDA_TIMEOUT_MS", "3000")) / 1000
    sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
    _lambda_logging()
    module_name, _, function_name = handler_spec.rpartition(".")
    try:
        module = importlib.import_module(module_name.replace("/", "."))
        handler = getattr(module, function_name)
    except Exception as exc:  # noqa: BLE001 - reported as the runtime reports it
        result = _failure(exc, "Runtime.ImportModuleError")
    else:
        with open(event_file) as fh:
            event = json.load(fh)
        try:
            result = {"ok": True, "payload": handler(event, Context(deadline))}
        except Exception as exc:  # noqa: BLE001
            result = _failure(exc)
    with open(result_file, "w") as fh:
        json.dump(result, fh, default=str)


if __name__ == "__main__":
    main()
