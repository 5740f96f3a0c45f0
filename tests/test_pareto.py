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


def summary(iou: float, eval_iou: float | None, quality: float, unmasked_quality: float):
    from ncawss import PerReadout, Scores
    from ncawss.sweep.metrics import DomainScores, FoldSummary, LaunchTimes

    def scores(value):
        return Scores(iou=value, baselines={"intensity": value - 0.1, "otsu_b": value + 0.05}, iou64_pooled=value)

    launch = LaunchTimes(actor_process=0.0, trial=1.0, worker_process=2.0, worker=3.0, data=4.0)
    return FoldSummary(scores=PerReadout(scores(iou)), majority_accuracy=0.5, seconds=1.0, launch=launch,
                       eval={"b": DomainScores(quality, None if eval_iou is None else scores(eval_iou)),
                             "lab": DomainScores(unmasked_quality)})


def test_domain_metrics_are_fold_means_and_the_worst_domain_includes_the_cross_validation():
    from ncawss.sweep.metrics import trial_metrics

    metrics = trial_metrics([summary(0.8, 0.5, 0.6, 0.3), summary(0.7, 0.7, 0.4, 0.5)], epochs=2)
    assert metrics["eval.b.iou_mean"] == 0.6 and metrics["eval.b.quality_mean"] == 0.5
    assert metrics["eval.b.best_baseline_iou_mean"] == metrics["eval.b.otsu_b_iou_mean"] == 0.65
    assert metrics["eval.b.lift"] == 0.6 - 0.65 and metrics["eval.lab.quality_mean"] == 0.4
    assert not any(k.startswith("eval.lab.") and k != "eval.lab.quality_mean" for k in metrics)  # no masks
    assert metrics["worst_domain_iou"] == 0.6 < metrics["iou_mean"] == 0.75
    better_elsewhere = trial_metrics([summary(0.6, 0.9, 0.6, 0.3)], epochs=2)
    assert better_elsewhere["worst_domain_iou"] == better_elsewhere["iou_mean"] == 0.6


def test_one_robustness_objective_registers_its_highest_trial_not_the_highest_iou():
    spec = SweepSpec(objectives=["worst_domain_iou"])
    done = [{"trial": "a", "iou_mean": 0.9, "worst_domain_iou": 0.4, "status": "done"},
            {"trial": "b", "iou_mean": 0.8, "worst_domain_iou": 0.7, "status": "done"}]
    assert select_best(spec, done) == (done[1], "highest worst_domain_iou")
