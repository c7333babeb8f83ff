"""An unexpected error in a handler answers as AWS does — `InternalFailure` in the service's
own protocol, with a log line — instead of werkzeug's HTML 500 page.

The cdk CLI printed that HTML page as an XML parse error, hiding the cause; the SDKs parse an
`InternalFailure` (HTTP 500, as AWS sends it) and print its message. The traceback goes to
the endpoint log, so every such answer is a bug to fix and easy to find. An AWS action moto
does not implement (moto's NotImplementedError) answers `NotImplemented` with HTTP 501 and
the action's name: not retried by the SDKs, not counted as a server fault.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult, BaseResponse

log = logging.getLogger("enclavekit.endpoint.internal_failure")


class InternalFailure(ServiceException):
    code = "InternalFailure"


class NotEmulated(ServiceException):
    code = "NotImplemented"


def _error_body(
    response: BaseResponse, error: ServiceException, status: int
) -> tuple[int, dict[str, Any], Any]:
    try:
        _, headers, body = response.serialized(ActionResult(error))
    except Exception:  # noqa: BLE001 - a service without a serializer: AWS's query XML shape
        headers = {"Content-Type": "text/xml"}
        body = (
            f"<ErrorResponse><Error><Type>Receiver</Type><Code>{error.code}</Code>"
            f"<Message>{_xml_escape(error.message)}</Message></Error>"
            "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
        )
    headers = dict(headers)
    headers["status"] = str(status)
    return status, headers, body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_original_call_action = BaseResponse.call_action


def call_action(self: BaseResponse) -> Any:
    try:
        return _original_call_action(self)
    except NotImplementedError as exc:
        # An AWS action moto lacks: 501 (SDKs do not retry it), naming the action.
        action = getattr(self, "_get_action", lambda: "?")()
        log.warning("NotImplemented: %s %s: %s", type(self).__name__, action, exc)
        message = f"{action} is not emulated by the enclavekit local endpoint ({exc})"
        return _error_body(self, NotEmulated(message), 501)
    except Exception as exc:  # noqa: BLE001 - a bug of ours or moto's: say so, log it
        action = getattr(self, "_get_action", lambda: "?")()
        log.exception(
            "InternalFailure: %s %s: %s: %s", type(self).__name__, action, type(exc).__name__, exc
        )
        message = (
            "The request processing has failed because of an unknown error "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:400]})"
        )
        return _error_body(self, InternalFailure(message), 500)


def install(state_dir: Path) -> None:
    """Wrap every service's dispatch (idempotent)."""
    BaseResponse.call_action = call_action  # type: ignore[method-assign]
