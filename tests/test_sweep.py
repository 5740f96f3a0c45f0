"""The distributed sweep on a real local Ray, with a real MLflow store (slow: minutes)."""
import csv
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT
from ncawss import convert, make_synthetic, write_dataset
from ncawss.environment import LOOPBACK_ONLY
from ncawss.method.baselines import THRESHOLD_BASELINES
from sweeps import (
    SMOKE,
    VENV_BIN,
    env_with,
    free_port,
    private_ray_tmp,
    run_sweep,
    smoke_space,
    sweep_command,
    trial_runs,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return convert("synthetic", None, tmp_path_factory.mktemp("data") / "tiny.parquet", n=30, size=16)


# --- ray job submit on a head with token authentication ---------------------------

@pytest.fixture(scope="module")
def submitted(tiny_data, tmp_path_factory):
    """The smoke sweep submitted with `ray job submit` to a local head (token authentication on,
    a token of the test's own), and the head kept for the tests that ask it more."""
    tmp_path = tmp_path_factory.mktemp("submit")
    with private_ray_tmp() as ray_tmp:
        dashboard = free_port()
        env = env_with(ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        ports = {f"--{name}={free_port()}" for name in (
            "port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port")}
        subprocess.run([f"{VENV_BIN}/ray", "start", "--head", "--node-ip-address=127.0.0.1", *ports,
                        f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={ray_tmp}",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
        output, address = tmp_path / "out", f"http://127.0.0.1:{dashboard}"
        for _ in range(30):  # the head's job agent needs a few seconds after `ray start`
            submit = subprocess.run([f"{VENV_BIN}/ray", "job", "submit", "--address", address, "--submission-id",
                                     "smoke-1", "--working-dir", ".", "--", *sweep_command(tiny_data, output)],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in submit.stderr:
                break
            time.sleep(3)
        yield {"submit": submit, "output": output, "address": address, "env": env, "home": tmp_path}


def job_client(submitted, expression: str) -> str:
    """`expression` of a JobSubmissionClient of the head, printed by a fresh process with the token."""
    code = f"import sys; from ray.job_submission import JobSubmissionClient as C; print({expression})"
    out = subprocess.run([sys.executable, "-c", code, submitted["address"]], env=submitted["env"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() + out.stderr[-2000:]


def test_ray_job_submit_runs_the_smoke_sweep_to_success(submitted):
    submit = submitted["submit"]
    status = job_client(submitted, "C(sys.argv[1]).get_job_status('smoke-1')")
    assert status.endswith("SUCCEEDED"), submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "trials finished" in submit.stdout and "mlflow ui --backend-store-uri" in submit.stdout


def test_the_job_api_refuses_a_submission_without_the_token(submitted):
    no_token = {k: v for k, v in submitted["env"].items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    no_token["HOME"] = str(submitted["home"])  # and no ~/.ray/auth_token to fall back on
    refused = subprocess.run([f"{VENV_BIN}/ray", "job", "submit", "--address", submitted["address"],
                              "--submission-id", "smoke-2", "--no-wait", "--", "echo", "hi"], cwd=ROOT, env=no_token,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert re.search(r"(?i)auth|token|401|unauthori", refused.stdout + refused.stderr), refused.stderr[-2000:]
    listed = job_client(submitted, "sorted(j.submission_id for j in C(sys.argv[1]).list_jobs())")
    assert listed == "['smoke-1']"  # the head stored no smoke-2


def test_mlflow_holds_the_submitted_sweep_its_trials_and_their_fold_files(submitted):
    client, parent, trials = trial_runs(submitted["output"])
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert parent.data.tags["dataset.fingerprint"] and "best_iou_mean" in parent.data.metrics
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "search_space.yaml", "trials.csv"} <= parent_files
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        files = {a.path for a in client.list_artifacts(run.info.run_id, "folds")}
        assert {"folds/gallery_fold0.png", "folds/gallery_fold1.png", "folds/weights_fold0.pt"} <= files
        assert len(client.get_metric_history(run.info.run_id, "fold0_train_loss")) == 2  # one per epoch


def test_each_trial_run_holds_fold_means_and_the_lift_over_the_baseline(submitted):
    _, _, trials = trial_runs(submitted["output"])
    for run in trials:
        metrics = run.data.metrics
        assert {"fold0_iou", "fold1_iou", "iou_mean", "iou_std", "intensity_iou_mean", "fold0_accuracy"} <= set(metrics)
        best = max(metrics[f"{b}_iou_mean"] for b in THRESHOLD_BASELINES)  # the colour thresholds included
        assert metrics["lift"] == pytest.approx(metrics["iou_mean"] - best)
        assert metrics["best_baseline_iou_mean"] == pytest.approx(best)
        assert 0 < metrics["iou64_pooled_mean"] <= 1  # the authors' metric beside ours
        params = run.data.params
        assert (params["pool"], params["normalise"], params["split"]) == ("mean", "fold", "stratified")
        assert abs(metrics["iou_mean"] - (metrics["fold0_iou"] + metrics["fold1_iou"]) / 2) < 1e-9
        assert 0 <= metrics["iou_mean"] <= 1 and metrics["launch_overhead_s"] > 0
        # one worker holds both folds: its launch is the scheduling of its process plus its setup
        assert metrics["launch_overhead_s"] == pytest.approx(metrics["launch_worker_process_s"]
                                                             + metrics["launch_worker_setup_s"])
        assert metrics["launch_trial_actor_s"] > 0 and metrics["launch_data_s"] > 0
        assert 0 < metrics["majority_accuracy_mean"] < 1


def test_best_config_is_the_best_trial_s_configuration(submitted):
    _, _, trials = trial_runs(submitted["output"])
    top = max(r.data.metrics["iou_mean"] for r in trials)
    best_config = yaml.safe_load((submitted["output"] / "best_config.yaml").read_text())
    assert any(all(str(best_config[key]) == r.data.params[key] for key in ("channels", "steps", "fire_rate"))
               for r in trials if r.data.metrics["iou_mean"] == top)  # one of the best (ties happen)


# --- a sweep's own local Ray ---------------------------------------------------------

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
    # two workers: a store with a client, gloo pairs between them
    space = smoke_space(tmp_path, resources={"cpus_per_worker": 1, "folds_per_worker": 1})
    command = sweep_command(tiny_data, tmp_path / "out", "--trials", "1", space=space)
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


def test_ctrl_c_marks_running_trials_interrupted_and_resume_finishes_them_without_rerunning_others(
        tiny_data, tmp_path, ray_tmp):
    """Ctrl-C (SIGINT to the job's process group, as a terminal sends it) once the first trial (2
    epochs) has finished and the second (40 epochs) has reported its first: the summary and MLflow
    say the second is interrupted, the job exits 130; --resume finishes it from its checkpoint,
    leaves the first alone, and MLflow holds each of its epochs once."""
    space = yaml.safe_load(SMOKE.read_text())
    del space["train"]["epochs"]
    space["search"]["epochs"] = {"type": "int", "low": 2, "high": 40}
    space["first"] = [{**space["first"][0], "epochs": 2}, {**space["first"][0], "epochs": 40}]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    output, log = tmp_path / "out", tmp_path / "driver.log"
    env = env_with(ray_tmp)
    with log.open("w") as sink:
        driver = subprocess.Popen(sweep_command(tiny_data, output, space=tmp_path / "space.yaml"), cwd=ROOT,
                                  env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    client = MlflowClient(f"sqlite:///{output}/mlflow.db")
    deadline = time.time() + 600
    first = second = None
    while time.time() < deadline and second is None:
        time.sleep(1)
        if (output / "sweep.yaml").exists():  # written once the driver has set up the MLflow store
            _, _, trials = trial_runs(output)
            done = [r for r in trials if r.info.status == "FINISHED"]
            running = [r for r in trials if r.info.status == "RUNNING"
                       and client.get_metric_history(r.info.run_id, "iou_mean")]
            if done and running:
                first, second = done[0], running[0]
    assert second is not None, "the second trial did not report in time"
    assert [m.step for m in client.get_metric_history(first.info.run_id, "iou_mean")] == [1, 2]
    os.killpg(driver.pid, signal.SIGINT)
    assert driver.wait(timeout=600) == 130, log.read_text()[-3000:]
    stdout = log.read_text()
    assert re.search(rf"interrupted \(the sweep was stopped\): trial {second.data.tags['ncawss.trial_id']} "
                     r"at epoch \d+; continue them with: .*--resume", stdout), stdout[-3000:]
    stopped = client.get_run(second.info.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["ncawss.status"].startswith("interrupted at epoch")
    _, parent, _ = trial_runs(output)
    assert parent.info.status == "KILLED" and parent.data.metrics["trials_interrupted"] == 1

    resumed = subprocess.run(sweep_command(tiny_data, output, "--resume", space=tmp_path / "space.yaml"), cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 trials finished" in resumed.stdout
    client, parent, trials = trial_runs(output)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    again = client.get_run(first.info.run_id)
    assert again.info.end_time == first.info.end_time  # not re-run
    assert [m.step for m in client.get_metric_history(first.info.run_id, "iou_mean")] == [1, 2]
    state = yaml.safe_load((output / "sweep.yaml").read_text())
    study = optuna.load_study(study_name=state["optuna_study"], storage=state["optuna_storage"])
    print("study after resume:", [(t.number, t.state.name) for t in study.trials])
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2  # the same study continued
    finished = client.get_run(second.info.run_id)
    print("back-filled epochs:", finished.data.tags.get("ncawss.backfilled_epochs", "none"))
    assert finished.info.status == "FINISHED" and finished.data.tags["ncawss.status"] == "done"
    assert finished.data.metrics["resumed_folds"] == 2  # from its checkpoint, not from epoch 0
    assert [m.step for m in client.get_metric_history(second.info.run_id, "iou_mean")] == list(range(1, 41))


def test_folds_batched_in_one_worker_equal_one_fold_per_worker(tiny_data, tmp_path, ray_tmp):
    fold_iou, workers = {}, {}
    for per_worker in (None, 1):
        resources = {"cpus_per_worker": 1, **({"folds_per_worker": per_worker} if per_worker else {})}
        space = smoke_space(tmp_path, f"space{per_worker}.yaml", trials=1, holdout=0.0,
                            first=[{"channels": 8, "steps": 3, "fire_rate": 0.5}], resources=resources)
        output = tmp_path / f"out{per_worker}"
        run_sweep(tiny_data, output, ray_tmp, space=space)
        _, _, trials = trial_runs(output)
        metrics = trials[0].data.metrics
        fold_iou[per_worker] = [metrics["fold0_iou"], metrics["fold1_iou"]]
        # which workers wrote training state into the epoch-1 checkpoint
        workers[per_worker] = sorted({p.name for p in (output / "ray").glob("folds-*/checkpoint_*/train_state_*")})
    assert workers[None] == ["train_state_worker0.pt"]
    assert workers[1] == ["train_state_worker0.pt", "train_state_worker1.pt"]
    assert fold_iou[None] == pytest.approx(fold_iou[1], abs=1e-9)


# --- ASHA --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def asha(tiny_data, tmp_path_factory):
    """A first point with a fire rate of 1e-6 (no cell ever fires: the NCA stays the identity) and
    PCA on the hidden channels only, which then stay zero: its masks are empty, so ASHA must stop
    that trial at its first rung."""
    tmp_path = tmp_path_factory.mktemp("asha")
    space = smoke_space(tmp_path, name="asha", trials=2, holdout=0, train={"epochs": 4},
                        scheduler={"grace_period": 1, "reduction_factor": 2},
                        search={"fire_rate": {"type": "float", "low": 1e-6, "high": 1.0},
                                "readout.channels": {"type": "choice", "values": ["all", "hidden"]}},
                        first=[{"fire_rate": 0.5, "readout.channels": "all"},
                               {"fire_rate": 1e-6, "readout.channels": "hidden"}])
    output = tmp_path / "out"
    with private_ray_tmp() as ray_tmp:
        run = run_sweep(tiny_data, output, ray_tmp, space=space)
    client, parent, trials = trial_runs(output, "asha")
    by_fire = {float(t.data.params["fire_rate"]): t for t in trials}
    return {"run": run, "output": output, "client": client, "parent": parent, "bad": by_fire[1e-6],
            "good": by_fire[0.5]}


def test_asha_stops_a_planted_bad_trial_at_the_grace_period(asha):
    reported = {name: [m.step for m in asha["client"].get_metric_history(asha[name].info.run_id, "iou_mean")]
                for name in ("bad", "good")}  # what the trials' fold workers reported, epoch by epoch
    assert max(reported["bad"]) == 1 and max(reported["good"]) == 4
    assert "fold0_iou" in asha["good"].data.metrics


def test_a_stopped_trial_s_workers_train_no_further(asha):
    """Fewer epochs than the others' 4: its last checkpoint holds epoch 1 or 2 (the stop reaches a
    worker after the rung's report)."""
    import torch

    trial_id = asha["bad"].data.tags["ncawss.trial_id"]
    states = sorted((asha["output"] / "ray").glob(f"folds-{trial_id}/checkpoint_*/train_state_worker0.pt"))
    epochs = [s["epoch"] for s in torch.load(states[-1], weights_only=False)]
    assert len(epochs) == 2 and epochs[0] == epochs[1] and 1 <= epochs[0] < 4


def test_an_asha_stop_is_seen_in_mlflow_the_summary_and_trials_csv(asha):
    bad, good = asha["bad"], asha["good"]
    assert bad.data.tags["ncawss.status"] == "stopped early at epoch 1"
    assert "stopped early at epoch 1" in bad.data.tags["mlflow.note.content"]
    assert good.data.tags["ncawss.status"] == "done"
    assert f"trial {bad.data.tags['ncawss.trial_id']} at epoch 1" in asha["run"].stdout
    assert "stopped early at epoch 1" in (asha["output"] / "trials.csv").read_text()
    assert asha["parent"].data.metrics["trials_stopped_early"] == 1


# --- GPUs, simulated -------------------------------------------------------------

def test_one_declared_gpu_runs_four_quarter_gpu_trials_at_once_on_the_cpu(tiny_data, tmp_path, ray_tmp, monkeypatch):
    """A local Ray that declares one GPU it does not have: five trials asking 0.25 of it each.
    Ray's own placement records show at most four trials' workers holding their GPU share at
    once; each worker saw GPU id 0 and, by the space's device override, trained on the CPU."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    space = smoke_space(tmp_path, trials=5, max_concurrent=5, holdout=0, first=[], train={"epochs": 4},
                        resources={"cpus_per_worker": 1, "gpus_per_worker": 0.25, "device": "cpu"})
    output = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": 1})
    try:
        ray.init(address=cluster.address)
        driver = subprocess.Popen(sweep_command(tiny_data, output, space=space), cwd=ROOT,
                                  env=env_with(ray_tmp, RAY_ADDRESS=cluster.address), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        most, deadline = 0, time.time() + 900
        while driver.poll() is None and time.time() < deadline:
            holding = [pg for pg in ray.util.placement_group_table().values() if pg["state"] == "CREATED"
                       and any(bundle.get("GPU") for bundle in pg["bundles"].values())]
            most = max(most, len(holding))
            time.sleep(0.2)
        stdout, _ = driver.communicate(timeout=60)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert driver.returncode == 0, stdout[-4000:]
    assert most == 4  # 1 GPU / 0.25: four at once, and never the fifth beside them
    client, _, trials = trial_runs(output)
    assert len(trials) == 5 and all(t.info.status == "FINISHED" for t in trials)
    for trial in trials:
        assert trial.data.metrics["fold0_gpu_id"] == 0 and trial.data.metrics["fold1_gpu_id"] == 0
        placement = json.loads(Path(client.download_artifacts(trial.info.run_id, "folds/fold0.json",
                                                               str(tmp_path))).read_text())
        assert placement["gpu_ids"] == [0] and placement["device"] == "cpu"


# --- a trial whose error would recur ----------------------------------------------

def test_a_trial_whose_error_would_recur_fails_at_once_with_its_cause(tmp_path, ray_tmp):
    """A planted failure: one trial scores the nucleus on data whose masks have no nucleus level.
    A DataError recurs on any retry: the trial is launched once (max_failures 2 is not spent), and
    the sweep reports why, finishing the rest. The objective is worst_domain_iou over an --eval-data
    set: Optuna's searcher holds it, the failed trial's NaN placeholder counts as failed."""
    single = dataclasses.replace(make_synthetic(n=30, size=16), nucleus=None, name="single-level")
    data = write_dataset(single, tmp_path / "single.parquet")
    other = write_dataset(make_synthetic(n=8, size=16, seed=3, domain="b"), tmp_path / "b.parquet")
    space = smoke_space(tmp_path, trials=2, holdout=0, max_failures=2, objectives=["worst_domain_iou"],
                        search={"readout.target": {"type": "choice", "values": ["cell", "nucleus"]}},
                        first=[{"readout.target": "cell"}, {"readout.target": "nucleus"}])
    output = tmp_path / "out"
    run = run_sweep(data, output, ray_tmp, "--eval-data", str(other), space=space)
    assert "1 of 2 trials finished" in run.stdout
    assert re.search(r"trial \w+: failed: .*DataError.*nucleus.*\(not retried: it would fail again\)", run.stdout)
    assert re.search(r"failed \(a recurring error at once.*\): trial \w+: failed: .*DataError.*nucleus", run.stdout)
    assert "retried after failure" not in run.stdout
    client, parent, trials = trial_runs(output)
    by_target = {t.data.params["readout"]: t for t in trials if "nucleus" in t.data.params["readout"]}
    (failed,) = by_target.values()
    assert failed.info.status == "FAILED" and "ncawss.retries" not in failed.data.tags
    assert failed.data.metrics["train_launches"] == 1  # one Ray Train run, no retry of it
    assert failed.data.tags["ncawss.status"].startswith("failed: DataError") and "nucleus" in failed.data.tags[
        "ncawss.status"]
    rows = list(csv.reader((output / "trials.csv").open()))
    assert sum(row[-1].startswith("failed: ") and "nucleus" in row[-1] for row in rows) == 1
    assert parent.data.metrics["trials_failed"] == 1 and parent.info.status == "FINISHED"
    assert client.get_model_version("smoke", "1").run_id == parent.info.run_id  # the finished trial's model
    state = yaml.safe_load((output / "sweep.yaml").read_text())
    study = optuna.load_study(study_name=state["optuna_study"], storage=state["optuna_storage"])
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # failed, not pruned
    assert study.metric_names == ["worst_domain_iou"] and "IoU per domain" in run.stdout
    done = next(row for row in csv.DictReader((output / "trials.csv").open()) if row["status"] == "done")
    complete = next(t for t in study.trials if t.state.name == "COMPLETE")
    assert complete.values == [pytest.approx(float(done["worst_domain_iou"]))]
    assert float(done["worst_domain_iou"]) == min(float(done["iou_mean"]), float(done["eval.synthetic-b.iou_mean"]))
