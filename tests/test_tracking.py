import pickle

from ncawss.tracking.tracker import SweepTracker


def make_tracker(tmp_path):
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", artifact_root=(tmp_path / "art").as_uri())
    tracker.check()
    tracker.start_sweep({"space.trials": 2}, {"dataset": "d"}, {"search_space.yaml": "trials: 2\n"})
    return tracker


def test_a_crashed_sweep_ends_its_running_runs_as_failed(tmp_path):
    tracker = make_tracker(tmp_path)
    done, running = tracker.start_trial("t1", {"channels": 8}), tracker.start_trial("t2", {"channels": 9})
    tracker.finish_trial(done)
    tracker.fail_sweep()
    assert tracker.run_status(done) == "FINISHED"
    assert tracker.run_status(running) == "FAILED" and tracker.run_status(tracker.parent_run_id) == "FAILED"


def test_a_resumed_tracker_continues_the_parent_and_the_trial_runs(tmp_path):
    tracker = make_tracker(tmp_path)
    run = tracker.start_trial("t1", {"channels": 8})
    tracker.fail_sweep()
    again = pickle.loads(pickle.dumps(tracker))  # as Tune stores it with the experiment
    assert again.start_sweep({}, {}, {}) == tracker.parent_run_id
    assert again.start_trial("t1", {"channels": 8}) == run
    assert again.run_status(run) == "RUNNING" and again.run_status(again.parent_run_id) == "RUNNING"
    assert len(again.trial_runs()) == 1


def test_metrics_logged_with_steps_form_a_history(tmp_path):
    tracker = make_tracker(tmp_path)
    run = tracker.start_trial("t1", {})
    for epoch, value in enumerate([0.5, 0.6, 0.7], start=1):
        tracker.log_metrics(run, {"iou_mean": value, "fold_iou": [value], "done": True}, step=epoch)
    history = tracker.client.get_metric_history(run, "iou_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert "fold_iou" not in tracker.client.get_run(run).data.metrics  # lists and flags are not metrics
