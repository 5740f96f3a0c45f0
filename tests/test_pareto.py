"""Two objectives: the Pareto front and the selection rule on planted trials (the sweep of
tests/test_sweep_results.py has two objectives and checks them end to end)."""
from ncawss.sweep.space import SweepSpec
from ncawss.sweep.summary import pareto_front, select_best

OBJECTIVES = ["iou_mean", "accuracy_mean"]


def row(trial, iou, accuracy, majority=0.5, status="done"):
    return {"trial": trial, "iou_mean": iou, "accuracy_mean": accuracy, "majority_accuracy_mean": majority,
            "status": status, "params": {}}


PLANTED = [row("a", 0.80, 0.50), row("b", 0.70, 0.60), row("c", 0.60, 0.70), row("d", 0.65, 0.55),
           row("e", 0.60, 0.70), row("f", 0.90, 0.90, status="failed: RuntimeError: x")]


def test_the_front_is_the_finished_trials_nothing_beats_on_both_objectives():
    # d: b is better on both; e ties c exactly, so neither dominates the other; f did not finish
    assert [r["trial"] for r in pareto_front(PLANTED, OBJECTIVES)] == ["a", "b", "c", "e"]


def test_the_chosen_trial_is_the_best_iou_on_the_front_whose_accuracy_beats_the_majority_by_the_margin():
    spec = SweepSpec(objectives=OBJECTIVES, select={"accuracy_margin": 0.05})
    best, rule = select_best(spec, [r for r in PLANTED if r["status"] == "done"])
    assert best["trial"] == "b" and "beats the majority rate by 0.05" in rule
    strict = SweepSpec(objectives=OBJECTIVES, select={"accuracy_margin": 0.3})
    best, rule = select_best(strict, [r for r in PLANTED if r["status"] == "done"])
    assert best["trial"] == "a" and "no trial on it beats the majority rate by 0.3" in rule


def test_one_objective_chooses_the_first_finished_trial_as_before():
    best, _ = select_best(SweepSpec(), [row("x", 0.5, 0.9), row("y", 0.4, 1.0)])
    assert best["trial"] == "x"


def test_the_majority_rate_is_the_training_majority_class_share_of_the_labelled_test_images():
    from ncawss.method.scoring.scores import majority_accuracy

    train, test = [0, 0, 1, 2, -1, -1, -1], [0, 1, 0, -1]  # class 0 is the training majority; -1 unlabelled
    assert majority_accuracy(train, test) == 2 / 3
    assert majority_accuracy([2, 2, 1], [1, 1]) == 0.0
