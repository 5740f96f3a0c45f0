"""How a trial ended, in one vocabulary for the console, the summary and MLflow, and which failures
are worth a retry.

A trial ends one of four ways:
- done: every fold trained and was scored;
- failed: an error of the trial's own code path (TRIAL_ERRORS: bad data, a bad configuration),
  which would fail again on any retry, so the trial fails at once; or a lost worker, actor or
  node, retried `max_failures` times first, each retry resuming from the folds' last checkpoint;
- stopped early: the scheduler (ASHA) ended it below a rung's cut-off;
- interrupted: the sweep was stopped (Ctrl-C) while it ran; `--resume` continues it.
"""
from __future__ import annotations

import re

from pydantic import ValidationError

from ..data import DataError
from ..method.config import ConfigError
from .metrics import FOLDS_DONE, TRIAL_FAILED

# Errors that recur on every retry of the same trial: retrying them only burns the retry budget.
TRIAL_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError, ValidationError)


def recurring_error(error: BaseException) -> BaseException | None:
    """The first of TRIAL_ERRORS inside `error`: itself, a Ray Train worker's failure, or a cause
    it wraps; None if there is none (a lost worker, actor or node: worth a retry)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TRIAL_ERRORS):
            return e
        # Ray Train's WorkerGroupError (per rank), its wrapper of a worker's exception, Ray's task
        # and controller errors: each holds the error it reports under its own name.
        todo += list(getattr(e, "worker_failures", {}).values())
        todo += [getattr(e, name, None) for name in ("_base_exc", "cause", "controller_failure")]
        todo += [e.__cause__, e.__context__]
    return None


def failure_cause(error: BaseException | str | None) -> str:
    """One line for why a trial failed: the innermost "SomeError: message" line of the error's
    text (Ray wraps a worker's exception in its own), else its first line."""
    if error is None:
        return "unknown error"
    text = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", line)]
    return (raised[-1] if raised else lines[0] if lines else type(error).__name__)[:300]


def trial_status(metrics: dict, error: BaseException | str | None = None) -> str:
    """done, failed: cause, stopped early at epoch N, or interrupted at epoch N, from a trial's
    last result (Tune marks a result 'done' where it stopped the trial itself) and its error."""
    if error is not None:
        return f"failed: {failure_cause(error)}"
    if metrics.get(TRIAL_FAILED):
        return f"failed: {metrics[TRIAL_FAILED]}"
    if metrics.get(FOLDS_DONE):
        return "done"
    at = f" at epoch {metrics['epoch']}" if "epoch" in metrics else " before its first report"
    return f"stopped early{at}" if metrics.get("done") else f"interrupted{at}"
