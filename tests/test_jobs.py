import json
import subprocess
import sys

import pytest

from conftest import ROOT
from ncawss.method.baselines import THRESHOLD_BASELINES


def run_job(*args, check=True):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, check=check)


@pytest.mark.parametrize("job", ["jobs/prepare_data.py", "jobs/cross_validate.py", "jobs/evaluate.py"])
def test_jobs_have_help(job):
    assert "usage" in run_job(job, "--help").stdout


def test_prepare_then_cross_validate_prints_folds_beside_the_baseline(tmp_path):
    data = tmp_path / "syn.parquet"
    out = run_job("jobs/prepare_data.py", "synthetic", "--output", str(data), "--n", "30", "--size", "16")
    assert "fingerprint" in out.stdout and data.exists()
    config = tmp_path / "c.yaml"
    config.write_text("channels: 6\nhidden: 6\nsteps: 2\nimage_size: 16\nepochs: 1\n"
                      "variants: {smooth: {smooth: 1.0}, nucleus: {target: nucleus}}\n")
    out = run_job("jobs/cross_validate.py", "--data", str(data), "--config", str(config), "--json",
                  str(tmp_path / "r.json"), "--holdout", "0.2", "--baselines", "gradcam")
    lines = out.stdout.splitlines()
    assert "24 images in the folds, 6 held out" in out.stdout
    assert any(line.split()[:2] == ["1", "12"] for line in lines)  # fold 1, 12 test images
    header = next(line for line in lines if line.split()[:2] == ["fold", "test"]).split()
    assert header[3:] == ["NCA-WSS", "iou64p", *THRESHOLD_BASELINES, "gradcam", "gradcam_large", "lift"]
    assert any(line.startswith("smooth (smooth1)") for line in lines)
    assert any(line.startswith("nucleus (nucleus)") for line in lines)
    assert any(line.startswith("Held-out images, majority vote of the 2 fold models") for line in lines)
    record = json.loads((tmp_path / "r.json").read_text())
    held = record["holdout_scores"]
    assert len(held["configured"]["fold_iou"]) == 2 and set(held["variants"]) == {"smooth", "nucleus"}


def test_holdout_too_small_for_the_classes_is_refused(tmp_path):
    out = run_job("jobs/cross_validate.py", "--holdout", "0.01", check=False)
    assert out.returncode == 2 and "holdout" in out.stderr


def test_bad_config_fails_with_the_key_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("fire_rate: 2\n")
    out = run_job("jobs/cross_validate.py", "--config", str(config), check=False)
    assert out.returncode == 2 and "c.yaml: key 'fire_rate'" in out.stderr


def test_bad_source_fails_with_the_file_named(tmp_path):
    out = run_job("jobs/prepare_data.py", "zheng2018", "--source", str(tmp_path), "--output",
                  str(tmp_path / "x.parquet"), check=False)
    assert out.returncode == 2 and "Dataset 1: folder not found" in out.stderr


def test_evaluate_names_a_model_folder_without_weights(tmp_path):
    data = tmp_path / "syn.parquet"
    run_job("jobs/prepare_data.py", "synthetic", "--output", str(data), "--n", "5", "--size", "16")
    (tmp_path / "empty").mkdir()
    out = run_job("jobs/evaluate.py", "--model", str(tmp_path / "empty"), "--data", str(data), check=False)
    assert out.returncode == 2 and "empty: no weights_fold*.pt files" in out.stderr
    out = run_job("jobs/evaluate.py", "--model", "0123abcd", "--data", str(data), check=False)
    assert out.returncode == 2 and "0123abcd: not a directory" in out.stderr
