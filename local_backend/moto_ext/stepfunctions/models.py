"""Executions of state machines made of Lambda `Task`s, `Pass`, `Succeed` and `Fail` states
run for real, in a background thread, on the local Lambda runtime.

That is what aws-cdk-lib's provider framework (`cr.Provider` with `isCompleteHandler`) starts:
a waiter whose Task invokes the isComplete handler, `Retry` on `States.ALL` (interval, max
attempts, backoff rate) and `Catch` to a timeout task. moto 5.2.5 records an execution and runs
nothing, so such a custom resource never answered. Other state types (Choice, Map, Parallel,
Wait, service integrations) leave moto's recording-only behaviour as it was; the execution
says so in its error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from moto.stepfunctions.models import Execution, StateMachine

from local_backend.moto_ext.awslambda import runtime

log = logging.getLogger("enclavekit.endpoint.stepfunctions")

RUNNABLE = frozenset({"Task", "Pass", "Succeed", "Fail"})


class TaskFailed(Exception):
    """A state's error, with its ASL error name (`errorType` of a Lambda failure).

    Outside enclavekit.errors on purpose: it is the user's task failing (an ASL error the
    interpreter catches and routes through Catch/Retry), not something enclavekit refuses."""

    def __init__(self, error: str, cause: str):
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


def runnable(definition: dict[str, Any]) -> bool:
    """Whether every state is one this interpreter runs (Lambda ARNs as Task resources)."""
    states = definition.get("States") or {}
    for state in states.values():
        if state.get("Type") not in RUNNABLE:
            return False
        if state.get("Type") == "Task" and ":function:" not in str(state.get("Resource", "")):
            return False
    return bool(states) and definition.get("StartAt") in states


def _invoke(resource: str, payload: Any, account_id: str, region: str) -> Any:
    from moto.awslambda.models import lambda_backends

    fn = lambda_backends[account_id][region].get_function(resource)
    result = runtime.invoke(fn, payload, account_id=account_id, region=region)
    if not result.ok:
        raise TaskFailed(result.error_type or "Error", result.error_message)
    return result.payload


def _matches(errors: list[str], error: str) -> bool:
    return "States.ALL" in errors or error in errors


def _run_task(state: dict[str, Any], data: Any, account_id: str, region: str) -> Any:
    """Invoke the Task's function, retrying per the first matching `Retry` rule."""
    retry = state.get("Retry") or []
    attempts = [0] * len(retry)
    while True:
        try:
            return _invoke(state["Resource"], data, account_id, region)
        except TaskFailed as exc:
            index = next(
                (i for i, r in enumerate(retry) if _matches(r.get("ErrorEquals", []), exc.error)),
                None,
            )
            if index is None or attempts[index] >= int(retry[index].get("MaxAttempts", 3)):
                raise
            rule = retry[index]
            delay = float(rule.get("IntervalSeconds", 1))
            time.sleep(delay * float(rule.get("BackoffRate", 2.0)) ** attempts[index])
            attempts[index] += 1


def run(definition: dict[str, Any], data: Any, account_id: str, region: str) -> Any:
    """Run the state machine on `data`; its output, or TaskFailed."""
    states = definition["States"]
    name = definition["StartAt"]
    while True:
        state = states[name]
        kind = state["Type"]
        if kind == "Succeed":
            return data
        if kind == "Fail":
            raise TaskFailed(state.get("Error", "States.Fail"), state.get("Cause", ""))
        if kind == "Pass":
            data = state.get("Result", data)
        else:
            try:
                data = _run_task(state, data, account_id, region)
            except TaskFailed as exc:
                catcher = next(
                    (c for c in state.get("Catch") or [] if _matches(c["ErrorEquals"], exc.error)),
                    None,
                )
                if catcher is None:
                    raise
                data = {"Error": exc.error, "Cause": exc.cause}
                name = catcher["Next"]
                continue
        if state.get("End"):
            return data
        name = state["Next"]


def _execute(machine: StateMachine, execution: Execution, definition: dict[str, Any]) -> None:
    try:
        data = json.loads(execution.execution_input or "{}")
        output = run(definition, data, execution.account_id, execution.region_name)
        execution.output = json.dumps(output)
        execution.status = "SUCCEEDED"
    except TaskFailed as exc:
        execution.status, execution.error, execution.cause = "FAILED", exc.error, exc.cause
    except Exception as exc:  # noqa: BLE001 - the execution's failure, logged
        log.exception("execution %s failed", execution.execution_arn)
        execution.status, execution.error, execution.cause = "FAILED", "States.Runtime", str(exc)
    finally:
        execution.stop_date = datetime.now(UTC)
        runtime.async_work_done()
    log.info("execution %s %s", execution.execution_arn, execution.status)


_original_start = StateMachine.start_execution


def start_execution(
    self: StateMachine,
    region_name: str,
    account_id: str,
    execution_name: str,
    execution_input: str,
) -> Execution:
    execution = _original_start(self, region_name, account_id, execution_name, execution_input)
    try:
        definition = json.loads(self.definition)
    except (TypeError, ValueError):
        return execution
    if execution.status == "RUNNING" and runnable(definition):
        runtime.async_work_started()
        threading.Thread(target=_execute, args=(self, execution, definition), daemon=True).start()
    return execution


def install() -> None:
    """Swap in the running start_execution (idempotent)."""
    StateMachine.start_execution = start_execution  # type: ignore[method-assign]
