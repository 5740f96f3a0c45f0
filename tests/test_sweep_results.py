"""One sweep with a holdout, the CAM baselines, a read-out variant and --eval-data, run once for the
module; each test reads one behaviour off its outputs: the sweep's files and MLflow runs, then
evaluate.py, predict.py and the registered model on them (slow: minutes)."""
import csv
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.entities import LoggedModelStatus
from PIL import Image

from conftest import ROOT
from ncawss import Ensemble, convert, make_synthetic, read_dataset, write_dataset
from ncawss.method.baselines import THRESHOLD_BASELINES
from ncawss.method.scoring import evaluation
from ncawss.method.scoring.evaluation import evaluate
from ncawss.method.scoring.metrics import majority_vote
from ncawss.method.training.plan import native_bf16
from sweeps import private_ray_tmp, run_sweep, smoke_space, trial_runs

pytestmark = pytest.mark.slow
ALL_BASELINES = (*THRESHOLD_BASELINES, "gradcam", "eigencam", "gradcam_large", "eigencam_large")
OBJECTIVES = ["iou_mean", "accuracy_mean"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """3 trials with two objectives (IoU, accuracy), CAM baselines and --eval-data on 30 images (6 held out)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    data = convert("synthetic", None, tmp_path / "tiny.parquet", n=30, size=16)
    other = convert("synthetic", None, tmp_path / "other.parquet", n=10, size=20, domain="b")
    unmasked = write_dataset(replace(make_synthetic(n=8, size=20, seed=9, domain="b"), masks=None, nucleus=None,
                                     name="no-masks"), tmp_path / "no-masks.parquet")
    space = smoke_space(tmp_path, trials=3, first=[], holdout=0.2, baselines=["gradcam", "eigencam"],
                        train={"variants": {"largest": {"post": "largest"}}}, objectives=OBJECTIVES,
                        select={"accuracy_margin": 0.0})
    output = tmp_path / "out"
    with private_ray_tmp() as ray_tmp:
        run = run_sweep(data, output, ray_tmp, "--eval-data", str(other), str(unmasked), space=space)
    client, parent, trials = trial_runs(output)
    return {"data": data, "other": other, "output": output, "stdout": run.stdout, "client": client,
            "parent": parent, "trials": trials, "tmp": tmp_path}


def csv_rows(sweep):
    with open(sweep["output"] / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def non_dominated(rows):
    """Independently of pareto_front: a trial is off the front if another is >= on both and > on one."""
    values = {r["trial"]: (float(r["iou_mean"]), float(r["accuracy_mean"])) for r in rows if r["status"] == "done"}
    return {t for t, (i, a) in values.items()
            if not any(i2 >= i and a2 >= a and (i2, a2) != (i, a) for i2, a2 in values.values())}


LOAD_STUDY = """
import json, sys, optuna
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
print(json.dumps({"directions": [d.name for d in study.directions], "names": study.metric_names,
                  "trials": [{"state": t.state.name, "params": t.params, "values": t.values} for t in study.trials],
                  "best": [t.params for t in study.best_trials]}))
"""


def test_the_optuna_study_is_in_a_database_with_both_values_of_every_trial_of_trials_csv(sweep):
    state = yaml.safe_load((sweep["output"] / "sweep.yaml").read_text())
    assert state["optuna_storage"] == f"sqlite:///{sweep['output'] / 'optuna.db'}"
    assert sweep["parent"].data.tags["optuna.study"] == state["optuna_study"]
    out = subprocess.run([sys.executable, "-c", LOAD_STUDY, state["optuna_study"], state["optuna_storage"]],
                         capture_output=True, text=True, check=True)  # a fresh process: the file alone
    study = json.loads(out.stdout)
    assert study["directions"] == ["MAXIMIZE", "MAXIMIZE"] and study["names"] == OBJECTIVES  # named in the dashboard
    rows = csv_rows(sweep)
    assert len(study["trials"]) == len(rows) == 3 and all(t["state"] == "COMPLETE" for t in study["trials"])

    def key(params):
        return int(params["channels"]), int(params["steps"]), float(params["fire_rate"])

    assert {key(t["params"]): t["values"] for t in study["trials"]} == \
        {key(r): [float(r["iou_mean"]), float(r["accuracy_mean"])] for r in rows}  # exactly, not rounded
    by_key = {key(r): r["trial"] for r in rows}
    assert {by_key[key(p)] for p in study["best"]} == non_dominated(rows)  # Optuna's own front


def test_the_printed_front_is_the_non_dominated_set_of_trials_csv(sweep):
    printed = re.search(r"Pareto front of iou_mean, accuracy_mean \((\d+) trials.*?\n((?:  trial .*\n)+)",
                        sweep["stdout"])
    assert printed, sweep["stdout"][-3000:]
    front = set(re.findall(r"  trial (\w+):", printed.group(2)))
    assert len(front) == int(printed.group(1)) >= 1
    rows = csv_rows(sweep)
    assert front == non_dominated(rows) == {r["trial"] for r in rows if r["pareto"] == "True"}


def test_mlflow_tags_the_front_and_the_trial_the_rule_chooses_is_registered(sweep):
    rows = csv_rows(sweep)
    front = non_dominated(rows)
    tags = {t.data.tags["ncawss.trial_id"]: t.data.tags["ncawss.pareto"] for t in sweep["trials"]}
    assert tags == {r["trial"]: str(r["trial"] in front).lower() for r in rows}
    parent = sweep["parent"]
    assert set(parent.data.tags["ncawss.pareto"].split(",")) == front
    # margin 0: the highest IoU on the front among trials at least as accurate as the majority rate
    on_front = [r for r in rows if r["trial"] in front]
    eligible = [r for r in on_front if float(r["accuracy_mean"]) >= float(r["majority_accuracy_mean"])] or on_front
    chosen = max(eligible, key=lambda r: float(r["iou_mean"]))
    assert parent.data.tags["ncawss.best_trial"] == chosen["trial"]
    assert parent.data.metrics["best_iou_mean"] == float(chosen["iou_mean"])
    assert parent.data.metrics["pareto_size"] == len(front)
    assert "pareto_front.png" in {a.path for a in sweep["client"].list_artifacts(parent.info.run_id)}
    best = yaml.safe_load((sweep["output"] / "best_config.yaml").read_text())
    assert (best["channels"], best["steps"], best["fire_rate"]) == \
        (int(chosen["channels"]), int(chosen["steps"]), float(chosen["fire_rate"]))


def test_the_holdout_is_set_aside_before_any_trial_sees_the_data(sweep):
    assert "24 images in the folds, 6 held out" in sweep["stdout"]
    holdout = set((sweep["output"] / "holdout_ids.txt").read_text().split())
    assert len(holdout) == 6
    for trial in sweep["trials"]:
        received = set()
        for fold in (0, 1):  # what the trial's folds were actually given
            path = sweep["client"].download_artifacts(trial.info.run_id, f"folds/fold{fold}.json", str(sweep["tmp"]))
            ids = json.loads(Path(path).read_text())
            assert not holdout & set(ids["train_ids"]) and not holdout & set(ids["test_ids"])
            received |= set(ids["train_ids"]) | set(ids["test_ids"])
        assert len(received) == 24


def test_the_best_configuration_is_scored_on_the_holdout_beside_every_baseline(sweep):
    assert "held-out test (6 images" in sweep["stdout"]
    metrics = sweep["parent"].data.metrics
    assert {"holdout_iou", "holdout_fold0_iou", "holdout_fold1_iou", "holdout_lift"} <= set(metrics)
    baselines = {b: metrics[f"holdout_{b}_iou"] for b in ALL_BASELINES}
    assert metrics["holdout_lift"] == pytest.approx(metrics["holdout_iou"] - max(baselines.values()))


def test_the_summary_says_what_the_best_trial_trained_in_as_precision_auto_resolves_here(sweep):
    """precision: auto and compile: auto, resolved in each fold worker: a smoke trial is far too short to
    compile, and trains in bf16 exactly where this CPU computes it natively."""
    expected = "bf16" if native_bf16() else "fp32"
    assert (f"the best trial's folds trained in {expected}, not compiled (precision: auto, compile: auto)"
            in sweep["stdout"]), sweep["stdout"][-2000:]
    for trial in sweep["trials"]:
        assert trial.data.metrics["bf16_folds"] == (2 if expected == "bf16" else 0)
        assert trial.data.metrics["compiled_folds"] == 0


def test_cam_baselines_are_trained_once_per_fold_and_size_not_per_trial(sweep):
    trainings = [json.loads(line) for f in (sweep["output"] / "baselines").glob("*/trainings.jsonl")
                 for line in f.read_text().splitlines()]
    assert sorted((t["fold"], t["size"]) for t in trainings) == [(0, "large"), (0, "small"), (1, "large"),
                                                                 (1, "small")]
    assert len(sweep["trials"]) == 3


def test_every_trial_reports_each_baseline_the_read_out_variant_and_the_eval_dataset(sweep):
    for trial in sweep["trials"]:
        metrics = trial.data.metrics
        assert {"gradcam_iou_mean", "eigencam_large_iou_mean", "otsu_b_iou_mean", "largest_iou_mean",
                "iou64_pooled_mean", "largest_iou64_pooled_mean", "fold0_iou64_pooled", "eval.synthetic-b.iou_mean",
                "eval.synthetic-b.intensity_iou_mean", "eval.synthetic-b.lift", "eval.synthetic-b.quality_mean",
                "eval.no-masks.quality_mean", "worst_domain_iou"} <= set(metrics)
        assert not any(key.startswith("eval.no-masks.") and key != "eval.no-masks.quality_mean" for key in metrics)
        assert metrics["worst_domain_iou"] == min(metrics["iou_mean"], metrics["eval.synthetic-b.iou_mean"])
        assert 0 <= metrics["eval.no-masks.quality_mean"] <= 1
        assert {f"fold{i}_{b}_iou" for i in (0, 1) for b in ALL_BASELINES} <= set(metrics)
        assert metrics["lift"] == pytest.approx(metrics["iou_mean"] - max(
            metrics[f"{b}_iou_mean"] for b in ALL_BASELINES))


@pytest.mark.parametrize("source", ["output", "run id", "registered model"])
def test_evaluate_reproduces_the_logged_fold_iou_and_logs_its_table(sweep, source):
    output, client, trials = sweep["output"], sweep["client"], sweep["trials"]
    best = max(trials, key=lambda r: r.data.metrics["iou_mean"])
    model = {"output": str(output), "run id": best.info.run_id, "registered model": "models:/smoke/1"}[source]
    result = sweep["tmp"] / f"cross-{source}.json"
    experiment = client.get_experiment_by_name("cross_domain")
    before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    out = subprocess.run([sys.executable, "jobs/evaluate.py", "--model", model, "--data", str(sweep["data"]),
                          str(sweep["other"]), "--mlflow-uri", f"sqlite:///{output}/mlflow.db", "--json", str(result)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = json.loads(result.read_text())
    assert len(table) == 1 and list(next(iter(table.values()))) == ["synthetic-a", "synthetic-b"]
    own = next(iter(table.values()))["synthetic-a"]
    candidates = [best] if source == "run id" else trials  # the output's best_model: one of them
    (trial,) = [t for t in candidates if own["fold_iou"] == pytest.approx(
        [t.data.metrics["fold0_iou"], t.data.metrics["fold1_iou"]], abs=1e-9)]
    # each fold alone on the other dataset: what the trial's workers scored, reading it a chunk at a time
    other = next(iter(table.values()))["synthetic-b"]
    assert np.mean(other["fold_iou"]) == pytest.approx(trial.data.metrics["eval.synthetic-b.iou_mean"], abs=1e-9)
    runs = client.search_runs([client.get_experiment_by_name("cross_domain").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert len(runs) == before + 1
    assert {"cross_domain.png", "cross_domain.txt", "cross_domain.json"} <= {
        a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_mlflow_shows_a_model_training_experiment_with_the_dataset_as_every_run_s_input(sweep):
    client, parent = sweep["client"], sweep["parent"]
    assert client.get_experiment_by_name("smoke").tags["mlflow.experimentKind"] == "custom_model_development"
    for run in [parent, *sweep["trials"]]:
        (entry,) = run.inputs.dataset_inputs
        assert entry.dataset.name == "synthetic-a"
        assert entry.dataset.digest == parent.data.tags["dataset.fingerprint"][:36]


def test_the_best_fold_ensemble_is_a_logged_model_of_the_parent_run_registered_as_version_one(sweep):
    client, parent = sweep["client"], sweep["parent"]
    (model,) = client.search_logged_models([parent.info.experiment_id])
    assert model.source_run_id == parent.info.run_id and model.status == LoggedModelStatus.READY
    assert model.name == "model"
    assert [o.model_id for o in client.get_run(parent.info.run_id).outputs.model_outputs] == [model.model_id]
    (version,) = client.search_model_versions("name = 'smoke'")
    assert int(version.version) == 1 and version.run_id == parent.info.run_id
    assert version.source == f"models:/{model.model_id}"
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "smoke", "version": "1"}]
    linked = {m.key: m.value for m in model.metrics}
    assert linked["holdout_iou"] == parent.data.metrics["holdout_iou"] and "holdout_lift" in linked
    assert linked["best_iou_mean"] == parent.data.metrics["best_iou_mean"] and "trials_done" not in linked
    best = yaml.safe_load((sweep["output"] / "best_config.yaml").read_text())
    assert model.params["channels"] == str(best["channels"])
    assert "model" not in {a.path for a in client.list_artifacts(parent.info.run_id)}  # the model's own files
    assert f"registered model: models:/smoke/1 (jobs/predict.py --model models:/smoke/1), logged model " \
           f"models:/{model.model_id}" in sweep["stdout"]


@pytest.fixture(scope="module")
def predicted(sweep):
    """predict.py's masks of the other domain's images from the sweep's output."""
    folder = sweep["tmp"] / "predicted"
    run = subprocess.run([sys.executable, "jobs/predict.py", "--model", str(sweep["output"]), "--images",
                          str(sweep["other"]), "--output", str(folder)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    dataset = read_dataset(sweep["other"])
    return dataset, [np.asarray(Image.open(folder / "masks" / f"{i}.png")) > 0 for i in dataset.ids]


def test_predict_votes_with_the_masks_evaluation_computes(sweep, predicted):
    dataset, masks = predicted
    ensemble = Ensemble.load(sweep["output"] / "best_model")
    config = ensemble.config
    votes = []
    for fold in ensemble.folds:  # what evaluate.py's majority vote computes (ncawss.score_dataset)
        test = evaluation.TestSet.prepare(dataset, fold.normalisation, config.image_size)
        votes.append(evaluate(fold.nca(config), test, config, variants=False).configured.masks)
    assert all(m.shape == image.shape[:2] for m, image in zip(masks, dataset.images))
    assert all(np.array_equal(m, e) for m, e in zip(masks, majority_vote(votes)))


REGISTERED = """
import io, sys
import mlflow, numpy as np, pandas as pd
from PIL import Image
from ncawss import read_dataset
from ncawss.data import encode_png
mlflow.set_tracking_uri(sys.argv[1])
images = pd.DataFrame({"image": [encode_png(image) for image in read_dataset(sys.argv[2]).images]})
out = mlflow.pyfunc.load_model(sys.argv[4]).predict(images)
masks = [np.asarray(Image.open(io.BytesIO(data))) > 0 for data in out["mask"]]
np.save(sys.argv[3], np.array(masks, dtype=object), allow_pickle=True)
print(list(out.columns), len(out))
"""


@pytest.mark.parametrize("which", ["registered version", "logged model", "run"])
def test_the_model_loaded_in_a_fresh_process_predicts_the_same_masks(sweep, predicted, which):
    """No ncawss objects in memory: only the SQLite store, by each of the model's URIs."""
    _, masks = predicted
    parent = sweep["parent"]
    (model,) = sweep["client"].search_logged_models([parent.info.experiment_id])
    model_uri = {"registered version": "models:/smoke/1", "logged model": f"models:/{model.model_id}",
                 "run": f"runs:/{parent.info.run_id}/model"}[which]
    uri, saved = f"sqlite:///{sweep['output']}/mlflow.db", sweep["tmp"] / "served.npy"
    served = subprocess.run([sys.executable, "-c", REGISTERED, uri, str(sweep["other"]), str(saved), model_uri],
                            cwd=sweep["tmp"], capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "['mask', 'label', 'probability', 'quality']" in served.stdout
    served_masks = np.load(saved, allow_pickle=True)
    assert len(served_masks) == len(masks) and all(np.array_equal(a, b) for a, b in zip(served_masks, masks))


def test_the_printed_per_domain_table_is_what_trials_csv_holds(sweep):
    text = sweep["stdout"]
    lines = text[text.index("IoU per domain"):].splitlines()[1:]
    header, body = lines[0].split(), [line.split() for line in lines[1:] if line.strip()][:3]
    assert header == ["trial", "cross-validation", "synthetic-b", "no-masks", "worst"]
    rows = {r["trial"]: r for r in csv_rows(sweep) if r["status"] == "done"}
    assert sorted(cells[0] for cells in body) == sorted(rows)
    for cells in body:
        row = rows[cells[0]]

        def pct(key):
            return f"{100 * float(row[key]):.1f}"

        assert cells[1:4] == [pct("iou_mean"), "/", pct("best_baseline_iou_mean")]
        assert cells[4:7] == [pct("eval.synthetic-b.iou_mean"), "/", pct("eval.synthetic-b.best_baseline_iou_mean")]
        assert cells[7:9] == ["quality", f"{float(row['eval.no-masks.quality_mean']):.3f}"]
        assert cells[9] == pct("worst_domain_iou")
