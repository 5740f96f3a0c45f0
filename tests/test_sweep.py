"""The distributed sweep on a real local Ray, with a real MLflow store (slow: minutes)."""
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import LOOPBACK_ONLY, ROOT
from ncawss import convert

pytestmark = pytest.mark.slow
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return convert("synthetic", None, tmp_path_factory.mktemp("data") / "tiny.parquet", n=30, size=16)


@pytest.fixture
def ray_tmp():
    """A short, private Ray temp dir; afterwards, stop only the Ray processes this test started."""
    before = {(p.pid, p.create_time()) for p in psutil.process_iter()}
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            if (proc.pid, proc.create_time()) in before:
                continue
            command = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
            if "ray" in command.lower() or path in command:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    shutil.rmtree(path, ignore_errors=True)


def env_with(ray_tmp, **extra):
    return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_TMPDIR": ray_tmp,
            "RAY_TRAIN_V2_ENABLED": "1", **extra}


def sweep_command(data, output, *extra):
    return ["python", "jobs/cv_sweep.py", "--data", str(data), "--space", "search_spaces/smoke.yaml",
            "--output", str(output), "--mlflow-uri", f"sqlite:///{output}/mlflow.db", *extra]


def trial_runs(output, name="smoke"):
    client = MlflowClient(f"sqlite:///{output}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client, None, []
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent[0] if parent else None, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_the_smoke_sweep_and_mlflow_holds_it(tiny_data, tmp_path, ray_tmp):
    dashboard = free_port()
    # Token authentication on, with a token of the test's own (never the user's ~/.ray/auth_token).
    env = env_with(ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    ports = {f"--{name}={free_port()}" for name in (
        "port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")}
    subprocess.run([f"{VENV_BIN}/ray", "start", "--head", "--node-ip-address=127.0.0.1", *ports,
                    f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={ray_tmp}",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
    output = tmp_path / "out"
    address = f"http://127.0.0.1:{dashboard}"
    client_env = env
    for _ in range(30):  # the head's job agent needs a few seconds after `ray start`
        submit = subprocess.run([f"{VENV_BIN}/ray", "job", "submit", "--address", address, "--submission-id",
                                 "smoke-1", "--working-dir", ".", "--", *sweep_command(tiny_data, output)],
                                cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in submit.stderr:
            break
        time.sleep(3)
    # Without the token, the head's job API refuses the same submission.
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    no_token["HOME"] = str(tmp_path)  # and no ~/.ray/auth_token to fall back on
    refused = subprocess.run([f"{VENV_BIN}/ray", "job", "submit", "--address", address, "--submission-id", "smoke-2",
                              "--no-wait", "--", "echo", "hi"], cwd=ROOT, env=no_token, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0
    assert re.search(r"(?i)auth|token|401|unauthori", refused.stdout + refused.stderr), refused.stderr[-2000:]
    jobs = subprocess.run([sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient; "
                           "print(sorted(j.submission_id for j in JobSubmissionClient(sys.argv[1]).list_jobs()))",
                           address], env=client_env, capture_output=True, text=True, timeout=60)
    assert jobs.stdout.strip() == "['smoke-1']", jobs.stdout + jobs.stderr[-2000:]  # the head stored no smoke-2
    status = subprocess.run([sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient; "
                             "print(JobSubmissionClient(sys.argv[1]).get_job_status('smoke-1'))", address],
                            env=client_env, capture_output=True, text=True, timeout=60)
    assert status.stdout.strip().endswith("SUCCEEDED"), submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "trials finished" in submit.stdout and "mlflow ui --backend-store-uri" in submit.stdout

    client, parent, trials = trial_runs(output)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert parent.data.tags["dataset.fingerprint"] and "best_iou_mean" in parent.data.metrics
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "search_space.yaml", "trials.csv"} <= parent_files
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        metrics = run.data.metrics
        assert {"fold0_iou", "fold1_iou", "iou_mean", "iou_std", "intensity_iou_mean", "fold0_accuracy"} <= set(metrics)
        assert metrics["lift"] == pytest.approx(metrics["iou_mean"] - metrics["intensity_iou_mean"])
        assert abs(metrics["iou_mean"] - (metrics["fold0_iou"] + metrics["fold1_iou"]) / 2) < 1e-9
        assert 0 <= metrics["iou_mean"] <= 1 and metrics["launch_overhead_s"] > 0
        files = {a.path for a in client.list_artifacts(run.info.run_id, "folds")}
        assert {"folds/gallery_fold0.png", "folds/gallery_fold1.png", "folds/weights_fold0.pt"} <= files
        assert len(client.get_metric_history(run.info.run_id, "fold0_train_loss")) == 2  # one per epoch

    top = max(r.data.metrics["iou_mean"] for r in trials)
    best_config = yaml.safe_load((output / "best_config.yaml").read_text())
    assert any(all(str(best_config[key]) == r.data.params[key] for key in ("channels", "steps", "fire_rate"))
               for r in trials if r.data.metrics["iou_mean"] == top)  # one of the best (ties happen)


def listening_sockets(root: psutil.Process) -> set[tuple[str, str]]:
    """(address, program) of every socket that accepts connections in `root`'s process tree."""
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            command = proc.cmdline()
            program = command[0] if command[0].startswith("ray::") else Path(command[0]).name
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and not conn.raddr):
                    found.add((conn.laddr.ip, program))
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            pass
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_a_sweep_that_starts_its_own_ray_listens_on_loopback_only(tiny_data, tmp_path, ray_tmp):
    """Sampled while a local sweep runs: every socket its processes accept connections on (the
    driver, GCS, raylet, agents, dashboard, Tune's and Train's workers) is bound to loopback."""
    env = env_with(ray_tmp)
    env.pop(LOOPBACK_ONLY, None)  # the job's own default is under test, not the test suite's
    space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    space["resources"]["folds_per_worker"] = 1  # two workers: a store with a client, gloo pairs between them
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    command = sweep_command(tiny_data, tmp_path / "out", "--trials", "1")
    command[command.index("search_spaces/smoke.yaml")] = str(tmp_path / "space.yaml")
    with open(tmp_path / "sweep.log", "w") as log:
        driver = psutil.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen, deadline = set(), time.time() + 900
        while driver.poll() is None and time.time() < deadline:
            seen |= listening_sockets(driver)
            time.sleep(0.3)
        if driver.poll() is None:
            driver.kill()
    assert driver.wait() == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    programs = {program for _, program in seen}
    # The sampling saw Ray's core services and the workers that train the folds.
    assert {"gcs_server", "raylet"} <= programs and any("RayTrainWorker" in p for p in programs), programs
    wide = sorted((address, program) for address, program in seen if not is_loopback(address))
    assert not wide, f"listening beyond loopback: {wide}"


def test_resume_continues_an_interrupted_sweep_without_rerunning_finished_trials(tiny_data, tmp_path, ray_tmp):
    output = tmp_path / "out"
    env = env_with(ray_tmp)
    driver = subprocess.Popen(sweep_command(tiny_data, output), cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    first = None
    while time.time() < deadline and first is None:
        time.sleep(2)
        if (output / "sweep.yaml").exists():  # written once the driver has set up the MLflow store
            _, _, trials = trial_runs(output)
            done = [r for r in trials if r.info.status == "FINISHED"]
            states = list((output / "ray" / "smoke").glob("experiment_state*.json"))
            if done and states and "TERMINATED" in states[0].read_text():  # finished for Tune too
                first = done[0]
    assert first is not None, "no trial finished in time"
    history_before = len(MlflowClient(f"sqlite:///{output}/mlflow.db").get_metric_history(first.info.run_id,
                                                                                          "iou_mean"))
    assert history_before == 2  # epoch 1 (evaluation) and the final result
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()

    resumed = subprocess.run(sweep_command(tiny_data, output, "--resume"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 trials finished" in resumed.stdout
    client, parent, trials = trial_runs(output)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    again = client.get_run(first.info.run_id)
    assert again.info.end_time == first.info.end_time  # not re-run
    assert len(client.get_metric_history(first.info.run_id, "iou_mean")) == history_before
    assert all(r.info.status == "FINISHED" for r in trials)


@pytest.mark.fault
def test_a_killed_fold_worker_resumes_from_its_checkpoint(tmp_path, ray_tmp):
    data = convert("synthetic", None, tmp_path / "d.parquet", n=120, size=32)
    space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    space.update(trials=1, first=[], checkpoint_every=1)
    space["train"].update(image_size=32, epochs=8)
    space["search"] = {"channels": {"type": "int", "low": 16, "high": 16},
                       "steps": {"type": "int", "low": 16, "high": 16}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    output = tmp_path / "out"
    command = sweep_command(data, output)
    command[command.index("search_spaces/smoke.yaml")] = str(tmp_path / "space.yaml")
    driver = subprocess.Popen(command, cwd=ROOT, env=env_with(ray_tmp), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = None
    deadline = time.time() + 600
    while time.time() < deadline and killed is None:
        time.sleep(0.5)
        snapshots = list((output / "ray").glob("folds-*/checkpoint_manager_snapshot.json"))
        if snapshots and '"epoch":' in snapshots[0].read_text():  # a checkpoint Ray Train registered
            workers = [p for p in psutil.process_iter(["cmdline"])
                       if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
            if workers:
                killed = workers[0].pid
                workers[0].kill()
    assert killed is not None, "no checkpoint appeared in time"
    stdout, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, stdout[-4000:]
    _, _, trials = trial_runs(output)
    metrics = trials[0].data.metrics
    # One worker held both folds: both resumed from the checkpoint, neither from epoch 0.
    assert trials[0].info.status == "FINISHED" and metrics["resumed_folds"] == 2, metrics
    assert "fold0_iou" in metrics and "fold1_iou" in metrics


def test_holdout_baselines_eval_data_and_cross_domain_evaluation(tiny_data, tmp_path, ray_tmp):
    """3 trials with CAM baselines and --eval-data; then jobs/evaluate.py on the output and on a trial run."""
    other = convert("synthetic", None, tmp_path / "other.parquet", n=10, size=20, domain="b")
    space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    space.update(trials=3, first=[], holdout=0.2, baselines=["intensity", "gradcam", "eigencam"])
    space["train"]["variants"] = {"largest": {"post": "largest"}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    output = tmp_path / "out"
    command = sweep_command(tiny_data, output, "--eval-data", str(other))
    command[command.index("search_spaces/smoke.yaml")] = str(tmp_path / "space.yaml")
    run = subprocess.run(command, cwd=ROOT, env=env_with(ray_tmp), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "24 images in the folds, 6 held out" in run.stdout and "held-out test (6 images" in run.stdout

    # The CAM baselines were trained once per fold and size, not once per trial.
    trainings = [json.loads(line) for f in (output / "baselines").glob("*/trainings.jsonl")
                 for line in f.read_text().splitlines()]
    assert sorted((t["fold"], t["size"]) for t in trainings) == [(0, "large"), (0, "small"), (1, "large"), (1, "small")]

    holdout = set((output / "holdout_ids.txt").read_text().split())
    client, parent, trials = trial_runs(output)
    assert len(holdout) == 6 and len(trials) == 3
    assert {"holdout_iou", "holdout_intensity_iou", "holdout_gradcam_iou", "holdout_lift"} <= set(parent.data.metrics)
    for trial in trials:
        metrics = trial.data.metrics
        assert {"gradcam_iou_mean", "eigencam_large_iou_mean", "largest_iou_mean", "eval.synthetic-b.iou",
                "eval.synthetic-b.intensity_iou"} <= set(metrics)
        assert metrics["lift"] == pytest.approx(metrics["iou_mean"] - max(
            metrics[f"{b}_iou_mean"] for b in ("intensity", "gradcam", "eigencam", "gradcam_large", "eigencam_large")))
        received = set()
        for fold in (0, 1):  # what the trial's folds were actually given
            path = client.download_artifacts(trial.info.run_id, f"folds/fold{fold}.json", str(tmp_path))
            ids = json.loads(Path(path).read_text())
            assert not holdout & set(ids["train_ids"]) and not holdout & set(ids["test_ids"])
            received |= set(ids["train_ids"]) | set(ids["test_ids"])
        assert len(received) == 24

    # evaluate.py reproduces the logged fold IoU on the training data and fills a dataset x dataset table.
    best = max(trials, key=lambda r: r.data.metrics["iou_mean"])
    for model in (str(output), best.info.run_id, "models:/smoke/1"):
        result = tmp_path / "cross.json"
        out = subprocess.run([sys.executable, "jobs/evaluate.py", "--model", model, "--data", str(tiny_data),
                              str(other), "--mlflow-uri", f"sqlite:///{output}/mlflow.db", "--json", str(result)],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        table = json.loads(result.read_text())
        assert len(table) == 1 and list(next(iter(table.values()))) == ["synthetic-a", "synthetic-b"]
        own = next(iter(table.values()))["synthetic-a"]
        candidates = [best] if model == best.info.run_id else trials  # the output's best_model: one of them
        assert any(own["fold_iou"] == pytest.approx([t.data.metrics["fold0_iou"], t.data.metrics["fold1_iou"]],
                                                    abs=1e-9) for t in candidates)
    cross = client.get_experiment_by_name("cross_domain")
    runs = client.search_runs([cross.experiment_id])
    assert len(runs) == 3 and {"cross_domain.png", "cross_domain.txt", "cross_domain.json"} <= {
        a.path for a in client.list_artifacts(runs[0].info.run_id)}

    check_predict_and_registered_model(output, other, tmp_path, run.stdout)


def check_predict_and_registered_model(output, other, tmp_path, sweep_stdout):
    """predict.py on the sweep's output votes as evaluation does; the registered MLflow model, loaded
    in a fresh process from the SQLite registry, returns the same masks; MLflow shows the sweep as
    a model-training experiment with its dataset as the runs' input."""
    import numpy as np
    import torch
    from PIL import Image

    from ncawss import TrainConfig, read_dataset
    from ncawss.evaluation import FoldModel, TestSet, evaluate, majority_vote

    uri = f"sqlite:///{output}/mlflow.db"
    client, parent, trials = trial_runs(output)
    assert client.get_experiment_by_name("smoke").tags["mlflow.experimentKind"] == "custom_model_development"
    for run in [parent, *trials]:
        (entry,) = run.inputs.dataset_inputs
        assert entry.dataset.name == "synthetic-a" and entry.dataset.digest == \
            parent.data.tags["dataset.fingerprint"][:36]
    (version,) = client.search_model_versions("name = 'smoke'")
    assert int(version.version) == 1 and version.run_id == parent.info.run_id
    assert "registered model: models:/smoke/1" in sweep_stdout

    predicted = tmp_path / "predicted"
    run = subprocess.run([sys.executable, "jobs/predict.py", "--model", str(output), "--images", str(other),
                          "--output", str(predicted)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    dataset = read_dataset(other)
    records = [torch.load(p, weights_only=False) for p in sorted((output / "best_model").glob("weights_fold*.pt"))]
    config = TrainConfig.model_validate(records[0]["config"])
    votes = []
    for record in records:  # what evaluate.py's majority vote computes (ncawss.score_dataset)
        fold = FoldModel.from_record(record)
        test = TestSet.prepare(dataset, fold.norm_mean, fold.norm_std, config.image_size)
        votes.append(evaluate(fold.nca(config), test, config, readouts={"readout": config.readout})["readout"].masks)
    expected = majority_vote(votes)
    masks = [np.asarray(Image.open(predicted / "masks" / f"{i}.png")) > 0 for i in dataset.ids]
    assert all(m.shape == image.shape[:2] for m, image in zip(masks, dataset.images))
    assert all(np.array_equal(m, e) for m, e in zip(masks, expected))

    # The registered model in a fresh process: no ncawss objects in memory, only the registry.
    script = """
import io, sys
import mlflow, numpy as np, pandas as pd
from PIL import Image
from ncawss import read_dataset
from ncawss.data import encode_png
mlflow.set_tracking_uri(sys.argv[1])
images = pd.DataFrame({"image": [encode_png(image) for image in read_dataset(sys.argv[2]).images]})
out = mlflow.pyfunc.load_model("models:/smoke/1").predict(images)
masks = [np.asarray(Image.open(io.BytesIO(data))) > 0 for data in out["mask"]]
np.save(sys.argv[3], np.array(masks, dtype=object), allow_pickle=True)
print(list(out.columns), len(out))
"""
    served = subprocess.run([sys.executable, "-c", script, uri, str(other), str(tmp_path / "served.npy")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "['mask', 'label', 'probability', 'quality']" in served.stdout
    served_masks = np.load(tmp_path / "served.npy", allow_pickle=True)
    assert len(served_masks) == len(masks) and all(np.array_equal(a, b) for a, b in zip(served_masks, masks))


def test_folds_batched_in_one_worker_equal_one_fold_per_worker(tiny_data, tmp_path, ray_tmp):
    fold_iou, workers = {}, {}
    for per_worker in (None, 1):
        space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
        space.update(trials=1, holdout=0.0, first=[{"channels": 8, "steps": 3, "fire_rate": 0.5}])
        space["resources"] = {"cpus_per_worker": 1, **({"folds_per_worker": per_worker} if per_worker else {})}
        (tmp_path / f"space{per_worker}.yaml").write_text(yaml.safe_dump(space))
        output = tmp_path / f"out{per_worker}"
        command = sweep_command(tiny_data, output)
        command[command.index("search_spaces/smoke.yaml")] = str(tmp_path / f"space{per_worker}.yaml")
        run = subprocess.run(command, cwd=ROOT, env=env_with(ray_tmp), capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        _, _, trials = trial_runs(output)
        metrics = trials[0].data.metrics
        fold_iou[per_worker] = [metrics["fold0_iou"], metrics["fold1_iou"]]
        # which workers wrote training state into the epoch-1 checkpoint
        workers[per_worker] = sorted({p.name for p in (output / "ray").glob("folds-*/checkpoint_*/train_state_*")})
    assert workers[None] == ["train_state_worker0.pt"]
    assert workers[1] == ["train_state_worker0.pt", "train_state_worker1.pt"]
    assert fold_iou[None] == pytest.approx(fold_iou[1], abs=1e-9)


def test_asha_stops_a_planted_bad_trial_at_the_grace_period(tiny_data, tmp_path, ray_tmp):
    """A first point with a fire rate of 1e-6 (no cell ever fires: the NCA stays the identity) and
    PCA on the hidden channels only, which then stay zero: its masks are empty, so ASHA must stop
    that trial at its first rung."""
    space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    space.update(name="asha", trials=2, holdout=0, scheduler={"grace_period": 1, "reduction_factor": 2})
    space["train"]["epochs"] = 4
    space["search"] = {"fire_rate": {"type": "float", "low": 1e-6, "high": 1.0},
                       "readout.channels": {"type": "choice", "values": ["all", "hidden"]}}
    space["first"] = [{"fire_rate": 0.5, "readout.channels": "all"}, {"fire_rate": 1e-6, "readout.channels": "hidden"}]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    output = tmp_path / "out"
    command = sweep_command(tiny_data, output)
    command[command.index("search_spaces/smoke.yaml")] = str(tmp_path / "space.yaml")
    run = subprocess.run(command, cwd=ROOT, env=env_with(ray_tmp), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    client, parent, trials = trial_runs(output, "asha")
    by_fire = {float(t.data.params["fire_rate"]): t for t in trials}
    bad, good = by_fire[1e-6], by_fire[0.5]
    # What the trials' fold workers reported, epoch by epoch, as MLflow holds it.
    reported = {name: [m.step for m in client.get_metric_history(t.info.run_id, "iou_mean")]
                for name, t in (("bad", bad), ("good", good))}
    assert max(reported["bad"]) == 1 and max(reported["good"]) == 4
    assert bad.data.tags["ncawss.status"] == "stopped early at epoch 1"
    assert "stopped early at epoch 1" in bad.data.tags["mlflow.note.content"]
    assert "ncawss.status" not in good.data.tags and "fold0_iou" in good.data.metrics
    # The stopped trial's workers trained fewer epochs than the 4 of the others: their last
    # checkpoint holds epoch 1 or 2 (the stop reaches a worker after the rung's report).
    import torch
    states = sorted((output / "ray").glob(f"folds-{bad.data.tags['ncawss.trial_id']}/checkpoint_*/train_state_worker0.pt"))
    epochs = [s["epoch"] for s in torch.load(states[-1], weights_only=False)]
    assert len(epochs) == 2 and epochs[0] == epochs[1] and 1 <= epochs[0] < 4
    assert f"trial {bad.data.tags['ncawss.trial_id']} at epoch 1" in run.stdout
    assert "stopped early at epoch 1" in (output / "trials.csv").read_text()
    assert parent.data.metrics["trials_stopped_early"] == 1



@pytest.mark.fault
def test_losing_the_node_that_holds_the_folds_resumes_them_on_another_node(tmp_path, ray_tmp, monkeypatch):
    """A real two-node Ray cluster on loopback: the head has no CPUs, so every fold worker runs on
    the worker node. That node is removed mid-trial (as a spot instance goes) and a new one joins
    (as the autoscaler brings one); the trial's folds resume there from their checkpoint. The
    storage path is a local folder that both nodes reach, as a shared filesystem would be."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    data = convert("synthetic", None, tmp_path / "d.parquet", n=120, size=32)
    space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    space.update(trials=2, checkpoint_every=1, holdout=0.2)
    space["first"] = [{"channels": 16, "steps": 16, "fire_rate": 0.5}]
    space["train"].update(image_size=32, epochs=6)
    space["search"] = {"channels": {"type": "int", "low": 16, "high": 16},
                       "steps": {"type": "int", "low": 16, "high": 16},
                       "fire_rate": {"type": "float", "low": 0.3, "high": 1.0}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    output = tmp_path / "out"
    command = sweep_command(data, output)
    command[command.index("search_spaces/smoke.yaml")] = str(tmp_path / "space.yaml")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        node = cluster.add_node(num_cpus=2)
        driver = subprocess.Popen(command, cwd=ROOT, env=env_with(ray_tmp, RAY_ADDRESS=cluster.address),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        removed = False
        deadline = time.time() + 600
        while time.time() < deadline and not removed:
            time.sleep(0.5)
            snapshots = list((output / "ray").glob("folds-*/checkpoint_manager_snapshot.json"))
            if snapshots and '"epoch":' in snapshots[0].read_text():  # a checkpoint Ray Train registered
                cluster.remove_node(node, allow_graceful=False)
                cluster.add_node(num_cpus=2)
                removed = True
        assert removed, "no checkpoint appeared in time"
        stdout, _ = driver.communicate(timeout=900)
    finally:
        cluster.shutdown()
    assert driver.returncode == 0, stdout[-4000:]
    client, parent, trials = trial_runs(output)
    assert parent.info.status == "FINISHED" and "holdout_iou" in parent.data.metrics
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    first = min(trials, key=lambda t: t.info.start_time)
    # The trial that lost its node: both folds resumed from the checkpoint, neither from epoch 0.
    assert first.data.metrics["resumed_folds"] == 2, first.data.metrics
    for trial in trials:
        assert {"fold0_iou", "fold1_iou", "iou_mean"} <= set(trial.data.metrics)
        assert len(client.get_metric_history(trial.info.run_id, "fold0_train_loss")) == 6
    assert (output / "best_model" / "weights_fold0.pt").exists()


def start_mlflow_server(port, root, log):
    """A real MLflow tracking server on loopback (SQLite runs, proxied artifacts), in its own
    process group so that killing it kills its workers too."""
    server = subprocess.Popen([f"{VENV_BIN}/mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server on port {port} did not start")


@pytest.mark.fault
def test_a_tracking_server_restart_mid_sweep_loses_nothing(tiny_data, tmp_path, ray_tmp):
    port, root = free_port(), tmp_path / "server"
    root.mkdir()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "ab")
    server = start_mlflow_server(port, root, log)
    output = tmp_path / "out"
    command = sweep_command(tiny_data, output)
    command[command.index("--mlflow-uri") + 1] = uri
    sweep = subprocess.Popen(command, cwd=ROOT, env=env_with(ray_tmp), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        client = MlflowClient(uri)
        deadline = time.time() + 600
        while time.time() < deadline:  # kill the server once the first trial's run exists
            experiment = client.get_experiment_by_name("smoke")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if any("mlflow.parentRunId" in r.data.tags for r in runs):
                break
            assert sweep.poll() is None, sweep.stdout.read()[-3000:]
            time.sleep(1)
        finished_before = sum(r.info.status == "FINISHED" for r in runs)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(8)
        server = start_mlflow_server(port, root, log)
        out, _ = sweep.communicate(timeout=900)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    try:
        assert sweep.returncode == 0, out[-3000:]
        assert finished_before == 0  # the server went down while the first trial ran
        assert "MLflow call failed" not in out
        experiment = client.get_experiment_by_name("smoke")
        runs = client.search_runs([experiment.experiment_id])
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parent) == 1 and parent[0].info.status == "FINISHED" and len(trials) == 2
        assert "best_iou_mean" in parent[0].data.metrics and "holdout_iou" in parent[0].data.metrics
        for run in trials:
            assert run.info.status == "FINISHED"
            assert {"fold0_iou", "fold1_iou", "iou_mean", "intensity_iou_mean", "lift"} <= set(run.data.metrics)
            assert {"channels", "steps", "fire_rate"} <= set(run.data.params)
            assert len(client.get_metric_history(run.info.run_id, "fold0_train_loss")) == 2
            files = {a.path for a in client.list_artifacts(run.info.run_id, "folds")}
            assert {"folds/weights_fold0.pt", "folds/weights_fold1.pt", "folds/gallery_fold0.png"} <= files
        assert client.get_model_version("smoke", "1").run_id == parent[0].info.run_id
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        log.close()
