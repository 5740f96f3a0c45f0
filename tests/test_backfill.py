"""Every evaluation epoch reaches MLflow exactly once, whatever died in flight: a resumed trial's
first report carries the reports made before its checkpoint, rebuilt from its folds' histories,
and the driver logs those MLflow lacks. Which failures are retried."""
import pickle
from types import SimpleNamespace

import pytest
from ray.exceptions import ActorDiedError
from ray.train import WorkerGroupError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

from ncawss import DataError, TrainConfig, TrainingHooks, make_synthetic, train_folds
from ncawss.sweep.callback import BACKFILLED_TAG, TrackingCallback
from ncawss.sweep.metrics import EARLIER, EPOCH_CURVES, FOLDS_DONE, METRIC, earlier_reports, epoch_metrics
from ncawss.sweep.space import SweepSpec
from ncawss.sweep.status import recurring_error, trial_status
from ncawss.tracking.tracker import SweepTracker

TINY = TrainConfig(channels=6, hidden=8, steps=3, epochs=4, batch_size=8, image_size=16, eval_every=1, variants={})


class Recorder(TrainingHooks):
    """What a fold worker sees: every epoch's metrics, and the checkpoint after each epoch."""

    def __init__(self):
        self.metrics, self.checkpoints = {}, {}

    def on_epoch(self, epoch, metrics):
        self.metrics[epoch] = [dict(m) for m in metrics]

    def save_checkpoint(self, checkpoints):
        self.checkpoints[checkpoints[0]["epoch"]] = checkpoints


def test_the_reports_made_before_a_checkpoint_are_rebuilt_from_its_fold_histories():
    data = make_synthetic(n=24, size=16, seed=1)
    splits = [(data.subset(range(0, 12)), data.subset(range(12, 24))),
              (data.subset(range(12, 24)), data.subset(range(0, 12)))]
    hooks = Recorder()
    train_folds(TINY, splits, hooks)
    made = [epoch_metrics(epoch, hooks.metrics[epoch]) for epoch in (1, 2, 3)]  # epoch 4 is the final report
    histories = [checkpoint["history"] for checkpoint in hooks.checkpoints[3]]
    assert earlier_reports(histories, TINY.eval_every, TINY.epochs) == made
    assert earlier_reports([c["history"] for c in hooks.checkpoints[2]], 2, TINY.epochs) == made[1:2]
    assert earlier_reports([c["history"] for c in hooks.checkpoints[4]], 1, TINY.epochs) == made  # never the last
    assert earlier_reports([], 1, TINY.epochs) == []


def report(epoch: int, **extra) -> dict:
    return {"epoch": epoch, METRIC: epoch / 10, "train_loss_mean": 1 / epoch, "train_accuracy_mean": epoch / 20,
            **extra}


def test_reports_lost_with_a_trial_s_actor_are_back_filled_once_in_epoch_order(tmp_path):
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", artifact_root=(tmp_path / "art").as_uri())
    tracker.start_sweep({}, {}, {})
    callback = TrackingCallback(tracker, SweepSpec())
    trial = SimpleNamespace(trial_id="t1", config={}, status="RUNNING", last_result={})
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, report(1))
    # The reports of epochs 2 and 3 died with the trial's actor; their checkpoint reached storage.
    callback.on_trial_start(0, [trial], trial)  # Tune retries the trial; it resumes from epoch 3
    callback.on_trial_result(0, [trial], trial, report(4, **{EARLIER: [report(1), report(2), report(3)]}))
    callback.on_experiment_end([trial])  # the driver stops (Ctrl-C), its MLflow calls done
    assert tracker.run_tags(tracker.trial_run_id("t1"))[BACKFILLED_TAG] == "2,3"

    again = pickle.loads(pickle.dumps(callback))  # a resumed sweep's driver: it knows nothing logged yet
    again.on_trial_start(0, [trial], trial)
    again.on_trial_result(0, [trial], trial, report(5, **{EARLIER: [report(e) for e in (1, 2, 3, 4)]}))
    again.on_trial_result(0, [trial], trial, report(6))
    # Epoch 7's result died in flight; the trial resumed from its checkpoint and finished.
    trial.last_result = {**report(8), FOLDS_DONE: True, "done": True,
                         EARLIER: [report(e) for e in (1, 2, 3, 4, 5, 6, 7)]}
    trial.status = "TERMINATED"
    again.on_trial_complete(0, [trial], trial)
    again.on_experiment_end([trial])

    run = tracker.trial_run_id("t1")
    for key in EPOCH_CURVES:
        history = tracker.client.get_metric_history(run, key)
        assert [(m.step, m.value) for m in history] == [(e, report(e)[key]) for e in range(1, 9)], key
    tags = tracker.client.get_run(run).data.tags
    assert tags[BACKFILLED_TAG] == "2,3,7" and tags["ncawss.status"] == "done"
    assert tracker.run_status(run) == "FINISHED"


def test_a_trial_the_sweep_stopped_while_it_ran_is_interrupted_in_mlflow(tmp_path):
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", artifact_root=(tmp_path / "art").as_uri())
    tracker.start_sweep({}, {}, {})
    callback = TrackingCallback(tracker, SweepSpec())
    running = SimpleNamespace(trial_id="t1", config={}, status="TERMINATED", last_result=report(2))
    callback.on_trial_start(0, [running], running)
    callback.on_experiment_end([running])  # Tune ends running trials as TERMINATED when it is stopped
    run = tracker.trial_run_id("t1")
    assert tracker.client.get_run(run).data.tags["ncawss.status"] == "interrupted at epoch 2"
    assert tracker.run_status(run) == "KILLED"


@pytest.mark.parametrize("metrics, status", [
    ({**report(6), FOLDS_DONE: True, "done": True}, "done"),
    ({**report(2), "done": True}, "stopped early at epoch 2"),  # Tune marks a result it stopped on 'done'
    (report(2), "interrupted at epoch 2"),
    ({}, "interrupted before its first report"),
    ({"trial_failed": "DataError: d: no nucleus masks"}, "failed: DataError: d: no nucleus masks"),
])
def test_a_trial_s_status_follows_from_its_last_result(metrics, status):
    assert trial_status(metrics) == status


def test_only_errors_of_the_trial_s_own_code_path_are_not_worth_a_retry():
    bad_data = DataError("single-level: target 'nucleus' needs nucleus masks")
    wrapped = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(bad_data, "Traceback ...")})
    assert recurring_error(wrapped) is bad_data
    lost = WorkerGroupError("rank 0 died", {0: ActorDiedError()})
    assert recurring_error(lost) is None
    assert recurring_error(RuntimeError("gloo: connection reset")) is None
    try:
        try:
            raise bad_data
        except DataError as exc:
            raise RuntimeError("while preparing the folds") from exc
    except RuntimeError as chained:
        assert recurring_error(chained) is bad_data
