"""Faults a cluster really has, on real local Ray clusters: a killed fold worker, a lost node, a
tracking server restart, each mid-sweep (minutes each; `-m "not fault"` leaves them out)."""
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from ncawss import convert
from sweeps import (
    VENV_BIN,
    env_with,
    free_port,
    smoke_space,
    started_here,
    sweep_command,
    trial_runs,
    wait_for_checkpoint,
)

pytestmark = [pytest.mark.slow, pytest.mark.fault]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return convert("synthetic", None, tmp_path_factory.mktemp("data") / "tiny.parquet", n=30, size=16)


def test_a_killed_fold_worker_resumes_from_its_checkpoint(tmp_path, ray_tmp):
    data = convert("synthetic", None, tmp_path / "d.parquet", n=120, size=32)
    space = smoke_space(tmp_path, trials=1, first=[], checkpoint_every=1, train={"image_size": 32, "epochs": 8},
                        search={"channels": {"type": "int", "low": 16, "high": 16},
                                "steps": {"type": "int", "low": 16, "high": 16}})
    output = tmp_path / "out"
    command = sweep_command(data, output, space=space)
    driver = subprocess.Popen(command, cwd=ROOT, env=env_with(ray_tmp), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = None
    deadline = time.time() + 600
    while time.time() < deadline and killed is None:
        time.sleep(0.5)
        snapshots = list((output / "ray").glob("folds-*/checkpoint_manager_snapshot.json"))
        if snapshots and '"epoch":' in snapshots[0].read_text():  # a checkpoint Ray Train registered
            workers = [p for p in psutil.process_iter(["cmdline"])
                       if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and started_here(p, ray_tmp)]
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
    assert metrics["train_launches"] == 2  # a lost worker is worth a retry: the trial launched its run again
    assert "fold0_iou" in metrics and "fold1_iou" in metrics
    client = MlflowClient(f"sqlite:///{output}/mlflow.db")
    assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "iou_mean")] == list(range(1, 9))


def test_losing_the_node_that_holds_the_folds_resumes_them_on_another_node(tmp_path, ray_tmp, monkeypatch):
    """A real two-node Ray cluster on loopback: the head has no CPUs, so every fold worker runs on
    the worker node. That node is removed mid-trial (as a spot instance goes) and a new one joins
    (as the autoscaler brings one); the trial's folds resume there from their checkpoint. The
    storage path is a local folder that both nodes reach, as a shared filesystem would be."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    data = convert("synthetic", None, tmp_path / "d.parquet", n=120, size=32)
    space = smoke_space(tmp_path, trials=2, checkpoint_every=1, holdout=0.2,
                        first=[{"channels": 16, "steps": 16, "fire_rate": 0.5}], train={"image_size": 32, "epochs": 6},
                        search={"channels": {"type": "int", "low": 16, "high": 16},
                                "steps": {"type": "int", "low": 16, "high": 16},
                                "fire_rate": {"type": "float", "low": 0.3, "high": 1.0}})
    output = tmp_path / "out"
    command = sweep_command(data, output, space=space)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        node = cluster.add_node(num_cpus=2)
        driver = subprocess.Popen(command, cwd=ROOT, env=env_with(ray_tmp, RAY_ADDRESS=cluster.address),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert wait_for_checkpoint(output), "no checkpoint appeared in time"
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(num_cpus=2)
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


def test_losing_the_node_that_holds_a_trial_s_own_actor_retries_the_trial_from_its_checkpoint(
        tmp_path, ray_tmp, monkeypatch):
    """A real two-node cluster whose head has CPUs. Trial actors reserve a custom resource that
    both nodes offer, but the head's is taken while the trials start, so the first trial's own
    actor (the Tune trainable driving its TorchTrainer) runs on the worker node. Once its folds
    have checkpointed, the head's share is freed and the worker node is killed, with no node to
    replace it: Tune retries the trial on the head and its folds resume from the checkpoint."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    class Blocker:  # defined here, so that Ray ships it by value: worker processes cannot import tests
        """Holds a resource on the node it is placed on."""

        def where(self) -> str:
            return ray.get_runtime_context().get_node_id()

    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    data = convert("synthetic", None, tmp_path / "d.parquet", n=120, size=32)
    space = smoke_space(tmp_path, trials=2, checkpoint_every=1, holdout=0.2, max_failures=2,
                        first=[{"channels": 16, "steps": 16, "fire_rate": 0.5}], train={"image_size": 32, "epochs": 6},
                        search={"channels": {"type": "int", "low": 16, "high": 16},
                                "steps": {"type": "int", "low": 16, "high": 16},
                                "fire_rate": {"type": "float", "low": 0.3, "high": 1.0}},
                        resources={"cpus_per_worker": 1, "trial_resources": {"trial_slot": 0.01}})
    output = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"trial_slot": 1}})
    try:
        node = cluster.add_node(num_cpus=2, resources={"trial_slot": 1})
        ray.init(address=cluster.address)
        head = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        blocker = ray.remote(resources={"trial_slot": 1}, num_cpus=0)(Blocker).options(
            scheduling_strategy=head).remote()
        assert ray.get(blocker.where.remote()) == ray.get_runtime_context().get_node_id()
        driver = subprocess.Popen(sweep_command(data, output, space=space), cwd=ROOT,
                                  env=env_with(ray_tmp, RAY_ADDRESS=cluster.address), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert wait_for_checkpoint(output), "no checkpoint appeared in time"
        ray.kill(blocker)  # room for trial actors on the head again
        cluster.remove_node(node, allow_graceful=False)  # and no node replaces it
        stdout, _ = driver.communicate(timeout=900)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert driver.returncode == 0, stdout[-4000:]
    client, parent, trials = trial_runs(output)
    assert parent.info.status == "FINISHED" and "holdout_iou" in parent.data.metrics
    assert client.get_model_version("smoke", "1").run_id == parent.info.run_id
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    first = min(trials, key=lambda t: t.info.start_time)
    assert first.data.tags.get("ncawss.retries") == "1", stdout[-4000:]  # Tune retried the trial itself
    assert first.data.metrics["resumed_folds"] == 2, first.data.metrics  # from the checkpoint, not epoch 0
    # Every epoch once, in order, whatever died in flight with the actor (back-filled if so).
    print("back-filled epochs:", first.data.tags.get("ncawss.backfilled_epochs", "none"))
    for trial in trials:
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "iou_mean")] == [1, 2, 3, 4, 5, 6]
        # training curves at the evaluation epochs (the last epoch's report holds the folds' results)
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "train_loss_mean")] == [1, 2, 3, 4, 5]
        assert len(client.get_metric_history(trial.info.run_id, "fold0_train_loss")) == 6


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

