import subprocess
import sys
import time

import pytest

from conftest import ROOT
from ncawss.method.config import ConfigError
from ncawss.sweep.space import load_space

GOOD = """
name: t
trials: 2
folds: 2
train: {epochs: 2, image_size: 16}
search:
  channels: {type: int, low: 6, high: 10}
  fire_rate: {type: float, low: 0.3, high: 1.0}
first:
  - {channels: 8, fire_rate: 0.5}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


SHIPPED = sorted(path.stem for path in (ROOT / "search_spaces").glob("*.yaml"))


def test_every_shipped_space_is_tested():
    assert len(SHIPPED) == 9 and {"nca_wss", "paper", "smoke", "quickstart", "cross_domain", "d1_small",
                                  "d1_wide", "pareto", "cross_stain"} <= set(SHIPPED)


def test_the_cross_stain_space_searches_normalisation_and_jitter_for_the_worst_domain():
    spec = load_space(ROOT / "search_spaces" / "cross_stain.yaml")
    assert spec.objectives == ["worst_domain_iou", "iou_mean"] and spec.scheduler is None
    assert {"normalise", "stain_jitter", "colour_jitter", "readout.binarise"} <= set(spec.search)
    assert spec.search["normalise"].values == ["fold", "image"]
    assert [spec.train_config(p).normalise for p in spec.first] == ["fold", "image"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load(name):
    spec = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert spec.name == name


def test_default_space_searches_channels_steps_and_fire_rate_and_tries_the_paper_first():
    spec = load_space(ROOT / "search_spaces" / "nca_wss.yaml")
    assert (spec.search["channels"].low, spec.search["channels"].high) == (8, 64)
    assert (spec.search["steps"].low, spec.search["steps"].high) == (8, 64)
    assert (spec.search["fire_rate"].low, spec.search["fire_rate"].high) == (0.1, 1.0)
    assert {k: spec.first[0][k] for k in ("channels", "steps", "fire_rate")} == {"channels": 32, "steps": 32,
                                                                                "fire_rate": 0.5}
    paper = spec.train_config(spec.first[0])
    assert paper.readout.name == "paper" and spec.holdout == 0.2
    assert spec.cam_kinds == ("gradcam", "eigencam")


def test_wide_space_searches_the_authors_options_and_the_read_out_with_asha():
    spec = load_space(ROOT / "search_spaces" / "d1_wide.yaml")
    assert {"lr", "epochs", "pool", "normalise", "readout.binarise", "readout.standardise", "readout.upsample",
            "readout.inference", "readout.smooth", "readout.post"} <= set(spec.search)
    assert spec.scheduler is not None and spec.trials >= 12 and spec.folds == 5 and spec.holdout == 0.2
    variants = spec.train_config(spec.first[0]).variant_readouts()
    assert variants["authors"].name == "binarise+standardise+unoriented"
    assert spec.baseline_names[:7] == ["intensity", "otsu_r", "otsu_g", "otsu_b", "otsu_s", "otsu_a", "otsu_bstar"]


def test_pareto_space_has_two_objectives_no_scheduler_and_a_selection_margin():
    spec = load_space(ROOT / "search_spaces" / "pareto.yaml")
    assert spec.objectives == ["iou_mean", "accuracy_mean"] and spec.multi_objective
    assert spec.scheduler is None and spec.select.accuracy_margin == 0.05
    assert not load_space(ROOT / "search_spaces" / "smoke.yaml").multi_objective


def test_paper_space_is_one_fixed_point_with_five_folds():
    spec = load_space(ROOT / "search_spaces" / "paper.yaml")
    config = spec.train_config({})
    assert not spec.search and spec.trials == 1 and spec.folds == 5
    assert (config.channels, config.steps, config.fire_rate, config.lr, config.epochs) == (32, 32, 0.5, 1e-4, 256)


def test_trial_config_merges_fixed_and_sampled_options(tmp_path):
    spec = load_space(write(tmp_path, GOOD))
    config = spec.train_config({"channels": 9, "fire_rate": 0.7})
    assert (config.channels, config.fire_rate, config.epochs, config.image_size) == (9, 0.7, 2, 16)


def test_read_out_options_are_searched_as_dotted_keys(tmp_path):
    spec = load_space(write(tmp_path, GOOD.replace("search:\n", "search:\n"
                                                   "  readout.smooth: {type: float, low: 0.0, high: 2.0}\n"
                                                   "  readout.post: {type: choice, values: [none, largest]}\n")))
    config = spec.train_config({"channels": 8, "readout.smooth": 1.5, "readout.post": "largest"})
    assert (config.readout.smooth, config.readout.post, config.readout.inference) == (1.5, "largest", "stochastic")


@pytest.mark.parametrize("text, pattern", [
    (GOOD + "colour: red\n", r"space\.yaml: key 'colour': Extra inputs"),
    (GOOD + "holdout: 1.0\n", r"space\.yaml: key 'holdout': .*less than 1"),
    (GOOD + "baselines: [gradcam, gradcan]\n", r"space\.yaml: key 'baselines\.1'"),
    (GOOD + "baselines: [intensity, gradcam]\n", r"key 'baselines'.*\['intensity'\]: the threshold baselines"),
    (GOOD.replace("search:\n", "search:\n  readout.post: {type: choice, values: [none, biggest]}\n"),
     r"search\.readout\.post: .*key 'readout\.post'"),
    (GOOD.replace("low: 6, high: 10", "low: 10, high: 6"), r"key 'search\.channels': .*low \(10\.0\) is greater"),
    (GOOD.replace("trials: 2", "trials: many"), r"key 'trials': .*integer"),
    (GOOD.replace("fire_rate: {type: float, low: 0.3", "fire_rate: {type: float, low: 0.0"),
     r"space\.yaml: search\.fire_rate: key 'fire_rate'"),
    (GOOD.replace("channels: {type", "chanels: {type").replace("- {channels: 8, ", "- {"),
     r"cannot search \['chanels'\]"),
    (GOOD.replace("epochs: 2", "epochs: two"), r"space\.yaml: train: key 'epochs'"),
    (GOOD.replace("search:\n", "search:\n  split: {type: choice, values: [stratified, kfold]}\n"),
     r"cannot search \['split'\]"),
    (GOOD.replace("search:\n", "search:\n  pool: {type: choice, values: [mean, sum]}\n"),
     r"search\.pool: key 'pool'"),
    ("- just a list\n", r"expected a mapping"),
    (GOOD + "objectives: [iou_mean, accuracy_mean]\nscheduler: {grace_period: 1}\n",
     r"space\.yaml: .*scheduler: ASHA stops trials on iou_mean at evaluation epochs and cannot rank"),
    (GOOD + "objectives: [worst_domain_iou]\nscheduler: {grace_period: 1}\n", r"remove 'scheduler'"),
    (GOOD + "objectives: [iou_mean, eval.b.dice]\n", r"\['eval\.b\.dice'\] unknown"),
    (GOOD + "objectives: [iou_mean, iou_mean]\n", r"names one metric twice"),
    (GOOD + "objectives: [accuracy_mean]\n", r"accuracy_mean alone would pick a trial for a number other than"),
    (GOOD + "objectives: [iou_mean, dice]\n", r"space\.yaml: .*\['dice'\] unknown"),
    (GOOD + "select: {accuracy_margin: 2}\n", r"space\.yaml: key 'select\.accuracy_margin'"),
    (GOOD.replace("- {channels: 8, ", "- {channels: 12, "), r"first\[0\]: \{'channels': 12\} lie outside"),
    (GOOD.replace("- {channels: 8, ", "- {channels: 7.5, "), r"first\[0\]: \{'channels': 7\.5\} lie outside"),
])
def test_bad_space_files_name_the_file_and_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_space(write(tmp_path, text))


def test_missing_space_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: file not found"):
        load_space(tmp_path / "nowhere.yaml")


def run_sweep_job(*args):
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "jobs/cv_sweep.py", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    return out, time.perf_counter() - started


def test_bad_space_fails_before_ray_starts(tmp_path):
    bad = write(tmp_path, GOOD.replace("low: 6, high: 10", "low: 10, high: 6"))
    out, _ = run_sweep_job("--space", str(bad), "--output", str(tmp_path / "out"))
    assert out.returncode == 2 and "key 'search.channels'" in out.stderr
    assert "Ray" not in out.stdout + out.stderr and not (tmp_path / "out").exists()


def test_asha_with_two_objectives_is_refused_before_ray_starts(tmp_path):
    bad = write(tmp_path, GOOD + "objectives: [iou_mean, accuracy_mean]\nscheduler: {grace_period: 1}\n")
    out, _ = run_sweep_job("--space", str(bad), "--output", str(tmp_path / "out"))
    assert out.returncode == 2 and "ASHA stops trials on iou_mean" in out.stderr
    assert "Ray" not in out.stdout + out.stderr and not (tmp_path / "out").exists()


def test_an_eval_objective_without_its_eval_data_stops_with_one_line_before_ray_starts(tmp_path):
    space = write(tmp_path, GOOD + "objectives: [iou_mean, eval.synthetic-b.iou_mean]\n")
    out, _ = run_sweep_job("--space", str(space), "--output", str(tmp_path / "out"))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: objective eval.synthetic-b.iou_mean: no --eval-data dataset named 'synthetic-b' (given: none)"]
    assert "Ray" not in out.stdout + out.stderr and not (tmp_path / "out" / "ray").exists()


def test_unreachable_tracking_server_fails_fast_before_training(tmp_path):
    out, seconds = run_sweep_job("--space", str(ROOT / "search_spaces/smoke.yaml"), "--output", str(tmp_path / "o"),
                                 "--mlflow-uri", "http://127.0.0.1:9")
    assert out.returncode == 2 and "MLflow tracking store http://127.0.0.1:9 is unreachable" in out.stderr
    assert "Started a local Ray" not in out.stdout + out.stderr and seconds < 60


def test_an_optuna_storage_that_cannot_be_opened_stops_the_job_before_ray(tmp_path):
    out, _ = run_sweep_job("--space", str(ROOT / "search_spaces/smoke.yaml"), "--output", str(tmp_path / "o"),
                           "--optuna-storage", "nosuchdb://somewhere/optuna")
    assert out.returncode == 2 and "--optuna-storage nosuchdb://somewhere/optuna: cannot open it" in out.stderr
    assert "Started a local Ray" not in out.stdout + out.stderr


def test_resources_take_folds_per_worker(tmp_path):
    spec = load_space(write(tmp_path, GOOD + "resources: {cpus_per_worker: 2, gpus_per_worker: 0.5, "
                                             "folds_per_worker: 1}\n"))
    res = spec.resources
    assert (res.cpus_per_worker, res.gpus_per_worker, res.folds_per_worker) == (2, 0.5, 1)
    assert load_space(write(tmp_path, GOOD)).resources.folds_per_worker is None  # all folds in one worker
    with pytest.raises(ConfigError, match="folds_per_worker"):
        load_space(write(tmp_path, GOOD + "resources: {folds_per_worker: 0}\n"))


def test_resources_take_a_device_override_and_trial_resources(tmp_path):
    spec = load_space(write(tmp_path, GOOD + "resources: {gpus_per_worker: 0.25, device: cpu, "
                                             "trial_resources: {on_demand: 0.01}}\n"))
    assert (spec.resources.device, spec.resources.trial_resources) == ("cpu", {"on_demand": 0.01})


def test_an_unknown_device_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"resources\.device.*not a torch device"):
        load_space(write(tmp_path, GOOD + "resources: {device: gpu7}\n"))


def test_robustness_objectives_name_their_eval_sets_and_are_checked_against_them(tmp_path):
    spec = load_space(write(tmp_path, GOOD + "objectives: [worst_domain_iou, eval.d1-restained.iou_mean, "
                                             "eval.lab-x.quality_mean]\n"))
    assert spec.searcher_objectives and spec.multi_objective
    assert spec.eval_objectives() == [("d1-restained", "iou_mean"), ("lab-x", "quality_mean")]
    spec.check_eval_data({"d1-restained": True, "lab-x": False})
    with pytest.raises(ConfigError, match=r"eval\.lab-x\.quality_mean: no --eval-data dataset named 'lab-x'"):
        spec.check_eval_data({"d1-restained": True})
    with pytest.raises(ConfigError, match=r"eval\.d1-restained\.iou_mean: dataset 'd1-restained' has no masks"):
        spec.check_eval_data({"d1-restained": False, "lab-x": False})
    alone = load_space(write(tmp_path, GOOD + "objectives: [worst_domain_iou]\n"))
    with pytest.raises(ConfigError, match="worst_domain_iou: needs --eval-data with masks"):
        alone.check_eval_data({"lab-x": False})
    assert not load_space(write(tmp_path, GOOD)).searcher_objectives  # iou_mean alone: Tune's, ASHA may run
