"""moto's `LambdaFunction._invoke_lambda` replaced by the local runtime (moto needs Docker)."""

from __future__ import annotations

import json
from typing import Any

from moto.awslambda.models import LambdaFunction

from . import runtime


def _invoke_lambda(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
    """(payload JSON, errored, log text) for one synchronous invocation."""
    if isinstance(event, str | bytes):
        event = json.loads(event or "{}")
    try:
        result = runtime.invoke(
            self,
            event if event is not None else {},
            account_id=self.account_id,
            region=self.region,
        )
    except runtime.RuntimeNotEmulated as exc:
        body = json.dumps({"errorType": "Runtime.InvalidRuntime", "errorMessage": str(exc)})
        return body, True, str(exc)
    if result.ok:
        return json.dumps(result.payload), False, result.logs
    return result.error_json(), True, result.logs


def install() -> None:
    """Swap in the runtime above (idempotent)."""
    LambdaFunction._invoke_lambda = _invoke_lambda  # type: ignore[method-assign,assignment]
