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
from .metrics import EARLIER, EPOCH_CURVES, FOLDS_DONE, METRIC, TRAIN_LAUNCHES, TRIAL_FAILED, fold_lines
from .space import SweepSpec
from .status import failure_cause, trial_status
from .summary import copy_checkpoint

log = logging.getLogger(__name__)
progress = logging.getLogger("ncawss.progress")  # one line per finished fold: the job shows it

BACKFILLED_TAG = "ncawss.backfilled_epochs"  # on a trial run: epochs logged from a resumed trial's copy
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
        self._epochs: dict[str, set[int]] = {}  # trial run id -> evaluation epochs MLflow holds
        self._backfilled: dict[str, set[int]] = {}  # trial run id -> epochs logged from EARLIER

    def __getstate__(self) -> dict:  # a thread pool does not pickle, should Tune pickle its callbacks
        return {**self.__dict__, "_calls": None, "_pending": [], "_epochs": {}, "_backfilled": {}}

    def submit(self, fn, *args) -> None:
        if self._calls is None:
            self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._pending.append(self._calls.submit(fn, *args))

    def on_experiment_end(self, trials, **info):
        for trial in trials:  # Tune ends the trials it was running when the sweep is stopped (Ctrl-C)
            status = trial_status(trial.last_result or {})
            if trial.status != "ERROR" and status.startswith("interrupted"):
                progress.info(f"trial {trial.trial_id}: {status}; --resume continues it")
                self.submit(self.interrupt, trial.trial_id, status)
        failed = [exc for exc in (f.exception() for f in self._pending) if exc is not None]
        for exc in failed:
            log.error("an MLflow call failed after its retries: %s: %s", type(exc).__name__, exc)
        self._pending = []

    def on_trial_start(self, iteration, trials, trial, **info):
        config = self.spec.train_config(trial.config)
        self.submit(self.tracker.start_trial, trial.trial_id, {**config.model_dump(), "searched": sorted(trial.config)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result and not result.get(FOLDS_DONE):
            self.submit(self.log_epochs, trial.trial_id, result.get(EARLIER, []), result)

    def log_epochs(self, trial_id: str, earlier: list[dict], current: dict | None) -> None:
        """Each evaluation epoch's curves in MLflow exactly once, in epoch order: an epoch MLflow
        already holds is skipped; `earlier` reports that never reached it (they died in flight with
        a lost actor) are logged from their copy in a resumed trial's first report, then `current`."""
        run_id = self.tracker.trial_run_id(trial_id)
        if run_id not in self._epochs:  # a resumed sweep, or a new driver: ask MLflow once
            self._epochs[run_id] = self.tracker.metric_steps(run_id, METRIC)
            tag = self.tracker.run_tags(run_id).get(BACKFILLED_TAG, "")
            self._backfilled[run_id] = {int(epoch) for epoch in tag.split(",") if epoch}
        logged, backfilled = self._epochs[run_id], self._backfilled[run_id]
        for report in sorted(earlier, key=lambda r: int(r["epoch"])) + ([current] if current else []):
            epoch = int(report["epoch"])
            if epoch not in logged:
                self.tracker.log_metrics(run_id, {k: report[k] for k in EPOCH_CURVES if k in report}, step=epoch)
                logged.add(epoch)
                backfilled.update({epoch} if report is not current else set())
        if backfilled:
            self.tracker.note_trial(run_id, None, {BACKFILLED_TAG: ",".join(map(str, sorted(backfilled)))})

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        status = trial_status(result)
        for line in fold_lines(trial.trial_id, result, self.spec.folds, self.spec.baseline_names):
            progress.info(line)
        if status.startswith("stopped early"):
            progress.info(f"trial {trial.trial_id}: {status} (ASHA: below the rung's cut-off)")
        if status.startswith("failed"):
            progress.info(f"trial {trial.trial_id}: {status} (not retried: it would fail again)")
            self.submit(self.fail, trial.trial_id, result[TRIAL_FAILED], result.get(TRAIN_LAUNCHES))
            return
        self.submit(self.complete, trial.trial_id, result)

    def complete(self, trial_id: str, result: dict) -> None:
        if result.get(EARLIER):
            self.log_epochs(trial_id, result[EARLIER], None)
        run_id = self.tracker.trial_run_id(trial_id)
        metrics = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
        self.tracker.log_metrics(run_id, metrics, step=int(result.get("epoch", 0)))
        if result.get(FOLDS_DONE) and result.get("checkpoint_path"):
            self.log_fold_files(run_id, result["checkpoint_path"])
        status = trial_status(result)
        self.tracker.note_trial(run_id, status, {"ncawss.status": status,
                                                 **({} if result.get(FOLDS_DONE) else
                                                    {"ncawss.stopped_at_epoch": str(result.get("epoch", ""))})})
        self.tracker.finish_trial(run_id, "FINISHED")

    def interrupt(self, trial_id: str, status: str) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        if run_id:
            self.tracker.note_trial(run_id, f"{status}; --resume continues it", {"ncawss.status": status})
            self.tracker.finish_trial(run_id, "KILLED")

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

    def fail(self, trial_id: str, cause: str, launches: int | None = None) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        if run_id:
            status = f"failed: {cause}"
            self.tracker.note_trial(run_id, status, {"ncawss.status": status})
            if launches is not None:
                self.tracker.log_metrics(run_id, {TRAIN_LAUNCHES: launches})
            self.tracker.finish_trial(run_id, "FAILED")

    def log_fold_files(self, run_id: str, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy_checkpoint(checkpoint_path, Path(tmp))
            for fold_json in sorted(Path(tmp).glob("fold*.json")):
                fold = int(fold_json.stem.removeprefix("fold"))
                log_history(self.tracker, run_id, fold, json.loads(fold_json.read_text())["history"])
            self.tracker.log_directory(run_id, tmp, "folds")


def trial_error(trial) -> BaseException | str | None:
    """The last error Tune stored for a trial: the exception where it pickles, else its text; where
    Tune has not yet copied its error file to the storage path, the text of its local copy."""
    try:
        error = trial.get_pickled_error() or trial.get_error()
        local = Path(trial.local_path or "", trial.run_metadata.error_filename or "")
        if error is None and trial.run_metadata.error_filename and local.is_file():
            error = local.read_text().split("Failure #")[-1].partition("\n")[2]  # the last failure's text
        return error
    except Exception as exc:  # an unreadable error file must not stop the sweep's bookkeeping
        return f"(error not readable: {type(exc).__name__}: {exc})"
