"""Two objectives: the Pareto front and the selection rule on planted trials, then one smoke sweep
of IoU and accuracy whose printed front, trials.csv, MLflow tags and Optuna study agree."""
import csv
import json
import re
import subprocess
import sys

import pytest
import yaml

from ncawss import convert
from ncawss.sweep.space import SweepSpec
from ncawss.sweep.summary import pareto_front, select_best
from sweeps import private_ray_tmp, run_sweep, smoke_space, trial_runs

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


def non_dominated(rows):
    """Independently of pareto_front: a trial is off the front if another is >= on both and > on one."""
    values = {r["trial"]: (float(r["iou_mean"]), float(r["accuracy_mean"])) for r in rows if r["status"] == "done"}
    return {t for t, (i, a) in values.items()
            if not any(i2 >= i and a2 >= a and (i2, a2) != (i, a) for i2, a2 in values.values())}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pareto")
    data = convert("synthetic", None, tmp_path / "tiny.parquet", n=30, size=16)
    space = smoke_space(tmp_path, trials=3, objectives=OBJECTIVES, select={"accuracy_margin": 0.0})
    output = tmp_path / "out"
    with private_ray_tmp() as ray_tmp:
        run = run_sweep(data, output, ray_tmp, space=space)
    with open(output / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    client, parent, trials = trial_runs(output)
    return {"stdout": run.stdout, "rows": rows, "output": output, "client": client, "parent": parent,
            "trials": trials}


@pytest.mark.slow
def test_the_printed_front_is_the_non_dominated_set_of_trials_csv(sweep):
    printed = re.search(r"Pareto front of iou_mean, accuracy_mean \((\d+) trials.*?\n((?:  trial .*\n)+)",
                        sweep["stdout"])
    assert printed, sweep["stdout"][-3000:]
    front = set(re.findall(r"  trial (\w+):", printed.group(2)))
    assert len(front) == int(printed.group(1)) >= 1
    assert front == non_dominated(sweep["rows"]) == {r["trial"] for r in sweep["rows"] if r["pareto"] == "True"}


@pytest.mark.slow
def test_mlflow_tags_the_front_and_the_chosen_trial_is_registered(sweep):
    front = non_dominated(sweep["rows"])
    tags = {t.data.tags["ncawss.trial_id"]: t.data.tags["ncawss.pareto"] for t in sweep["trials"]}
    assert tags == {r["trial"]: str(r["trial"] in front).lower() for r in sweep["rows"]}
    parent = sweep["parent"]
    assert set(parent.data.tags["ncawss.pareto"].split(",")) == front
    # margin 0: the highest IoU on the front among trials at least as accurate as the majority rate
    eligible = [r for r in sweep["rows"] if r["trial"] in front
                and float(r["accuracy_mean"]) >= float(r["majority_accuracy_mean"])] \
        or [r for r in sweep["rows"] if r["trial"] in front]
    chosen = max(eligible, key=lambda r: float(r["iou_mean"]))
    assert parent.data.tags["ncawss.best_trial"] == chosen["trial"]
    assert parent.data.metrics["best_iou_mean"] == float(chosen["iou_mean"])
    assert parent.data.metrics["pareto_size"] == len(front)
    assert "pareto_front.png" in {a.path for a in sweep["client"].list_artifacts(parent.info.run_id)}
    (version,) = sweep["client"].search_model_versions("name = 'smoke'")
    assert version.run_id == parent.info.run_id


LOAD_STUDY = """
import json, sys, optuna
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
print(json.dumps({"directions": [d.name for d in study.directions], "names": study.metric_names,
                  "trials": [{"params": t.params, "values": t.values} for t in study.trials],
                  "best": [t.params for t in study.best_trials]}))
"""


@pytest.mark.slow
def test_the_optuna_study_holds_both_values_of_every_trial_and_the_same_front(sweep):
    state = yaml.safe_load((sweep["output"] / "sweep.yaml").read_text())
    out = subprocess.run([sys.executable, "-c", LOAD_STUDY, state["optuna_study"], state["optuna_storage"]],
                         capture_output=True, text=True, check=True)
    study = json.loads(out.stdout)
    assert study["directions"] == ["MAXIMIZE", "MAXIMIZE"] and study["names"] == OBJECTIVES  # named in the dashboard

    def key(params):
        return params["channels"], params["steps"], params["fire_rate"]

    csv_values = {key({k: float(r[k]) for k in ("channels", "steps", "fire_rate")}):
                  [float(r["iou_mean"]), float(r["accuracy_mean"])] for r in sweep["rows"]}
    assert {key(t["params"]): t["values"] for t in study["trials"]} == csv_values
    front = non_dominated(sweep["rows"])
    by_key = {key({k: float(r[k]) for k in ("channels", "steps", "fire_rate")}): r["trial"] for r in sweep["rows"]}
    assert {by_key[key(p)] for p in study["best"]} == front  # Optuna's own front
