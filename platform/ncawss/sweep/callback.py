"""Tune's trial events mirrored into MLflow: a run per trial under the sweep's parent run, its
metrics, fold files and status, and one console line per finished fold."""
from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ray import tune

from ..tracking.tracker import SweepTracker, log_history
from .metrics import FOLDS_DONE, METRIC, fold_lines
from .space import SweepSpec
from .summary import copy_checkpoint, failure_cause, stopped_status

log = logging.getLogger(__name__)
progress = logging.getLogger("ncawss.progress")  # one line per finished fold: the job shows it

TUNE_BOOKKEEPING = {"pid", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
                    "iterations_since_restore", "training_iteration", "done", FOLDS_DONE, "checkpoint_path"}


class TrackingCallback(tune.Callback):
    """Mirrors Tune's trial events into MLflow from the sweep's driver process.

    The MLflow calls run in order on one background thread, so a slow or restarting tracking
    server (MLflow retries with backoff) never stalls Tune's event loop; the end of the
    experiment waits for them."""

    def __init__(self, tracker: SweepTracker, spec: SweepSpec):
        self.tracker, self.spec = tracker, spec
        self._calls: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict:  # a thread pool does not pickle, should Tune pickle its callbacks
        return {**self.__dict__, "_calls": None, "_pending": []}

    def submit(self, fn, *args) -> None:
        if self._calls is None:
            self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._pending.append(self._calls.submit(fn, *args))

    def on_experiment_end(self, trials, **info):
        failed = [exc for exc in (f.exception() for f in self._pending) if exc is not None]
        for exc in failed:
            log.error("an MLflow call failed after its retries: %s: %s", type(exc).__name__, exc)
        self._pending = []

    def on_trial_start(self, iteration, trials, trial, **info):
        config = self.spec.train_config(trial.config)
        self.submit(self.tracker.start_trial, trial.trial_id, {**config.model_dump(), "searched": sorted(trial.config)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get(FOLDS_DONE):
            metrics = {k: result[k] for k in (METRIC, "train_loss_mean", "train_accuracy_mean") if k in result}
            self.submit(self.log_result, trial.trial_id, metrics, int(result["epoch"]))

    def log_result(self, trial_id: str, metrics: dict, step: int) -> None:
        self.tracker.log_metrics(self.tracker.trial_run_id(trial_id), metrics, step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        for line in fold_lines(trial.trial_id, result, self.spec.folds, self.spec.baseline_names):
            progress.info(line)
        if not result.get(FOLDS_DONE):
            progress.info(f"trial {trial.trial_id}: {stopped_status(result)} (ASHA: below the rung's cut-off)")
        self.submit(self.complete, trial.trial_id, result)

    def complete(self, trial_id: str, result: dict) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        metrics = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
        self.tracker.log_metrics(run_id, metrics, step=int(result.get("epoch", 0)))
        if result.get(FOLDS_DONE) and result.get("checkpoint_path"):
            self.log_fold_files(run_id, result["checkpoint_path"])
        if not result.get(FOLDS_DONE):
            status = stopped_status(result)
            self.tracker.note_trial(run_id, status, {"ncawss.status": status,
                                                     "ncawss.stopped_at_epoch": str(result.get("epoch", ""))})
        self.tracker.finish_trial(run_id, "FINISHED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        cause = failure_cause(trial_error(trial))
        progress.info(f"trial {trial.trial_id}: retried after failure {trial.num_failures}: {cause}")
        self.submit(self.note_retry, trial.trial_id, trial.num_failures, cause)

    def note_retry(self, trial_id: str, failures: int, cause: str) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        if run_id:
            self.tracker.note_trial(run_id, f"retried after failure {failures}: {cause}",
                                    {"ncawss.retries": str(failures)})

    def on_trial_error(self, iteration, trials, trial, **info):
        cause = failure_cause(trial_error(trial))
        progress.info(f"trial {trial.trial_id}: failed after {trial.num_failures} failure(s): {cause}")
        self.submit(self.fail, trial.trial_id, cause)

    def fail(self, trial_id: str, cause: str) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        if run_id:
            status = f"failed: {cause}"
            self.tracker.note_trial(run_id, status, {"ncawss.status": status})
            self.tracker.finish_trial(run_id, "FAILED")

    def log_fold_files(self, run_id: str, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy_checkpoint(checkpoint_path, Path(tmp))
            for fold_json in sorted(Path(tmp).glob("fold*.json")):
                fold = int(fold_json.stem.removeprefix("fold"))
                log_history(self.tracker, run_id, fold, json.loads(fold_json.read_text())["history"])
            self.tracker.log_directory(run_id, tmp, "folds")


def trial_error(trial) -> BaseException | str | None:
    """The last error Tune stored for a trial: the exception where it pickles, else its text."""
    try:
        return trial.get_pickled_error() or trial.get_error()
    except Exception as exc:  # an unreadable error file must not stop the sweep's bookkeeping
        return f"(error not readable: {type(exc).__name__}: {exc})"
