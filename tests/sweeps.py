"""Helpers of the sweep tests: a smoke space with changes, the sweep command, its MLflow runs,
and a private Ray temp dir whose processes, and only those, are ended afterwards."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = str(Path(sys.executable).parent)
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def smoke_space(folder: Path, file: str = "space.yaml", train: dict | None = None, **changes) -> Path:
    """search_spaces/smoke.yaml with top-level `changes` and `train` options merged in, written to folder/file."""
    space = yaml.safe_load(SMOKE.read_text())
    space.update(changes)
    space["train"].update(train or {})
    path = folder / file
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_command(data, output, *extra, space: Path = SMOKE) -> list[str]:
    return ["python", "jobs/cv_sweep.py", "--data", str(data), "--space", str(space), "--output", str(output),
            "--mlflow-uri", f"sqlite:///{output}/mlflow.db", *extra]


def env_with(ray_tmp: str, **extra) -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_TMPDIR": ray_tmp, **extra}


def run_sweep(data, output, ray_tmp, *extra, space: Path = SMOKE) -> subprocess.CompletedProcess:
    run = subprocess.run(sweep_command(data, output, *extra, space=space), cwd=ROOT, env=env_with(ray_tmp),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def trial_runs(output, name="smoke"):
    """(client, parent run, trial runs) of the sweep's MLflow experiment in OUTPUT/mlflow.db."""
    client = MlflowClient(f"sqlite:///{output}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client, None, []
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent[0] if parent else None, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def wait_for_checkpoint(output: Path, timeout: float = 600) -> bool:
    """Wait until Ray Train has registered a checkpoint of a trial's folds under OUTPUT/ray."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        snapshots = list((output / "ray").glob("folds-*/checkpoint_manager_snapshot.json"))
        if snapshots and '"epoch":' in snapshots[0].read_text():
            return True
        time.sleep(0.5)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started_here(proc: psutil.Process, path: str) -> bool:
    """A process of this test: its command line or its environment names the test's Ray temp dir,
    or it descends from this test process."""
    try:
        if path in " ".join(proc.cmdline()) or proc.environ().get("RAY_TMPDIR") == path:
            return True
        return any(parent.pid == os.getpid() for parent in proc.parents())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


@contextlib.contextmanager
def private_ray_tmp():
    """A short, private Ray temp dir (RAY_TMPDIR); afterwards, the processes started meanwhile that
    belong to it (started_here), and their children, are killed; no other process is touched."""
    before = {(p.pid, p.create_time()) for p in psutil.process_iter()}
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        yield path
    finally:
        new = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if (proc.pid, proc.create_time()) not in before and proc.pid != os.getpid():
                    new.append(proc)
        ours = {p.pid: p for p in new if started_here(p, path)}
        for proc in list(ours.values()):  # setproctitle hides some children's environment: take them by descent
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                ours.update({c.pid: c for c in proc.children(recursive=True)})
        for proc in ours.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.kill()
        psutil.wait_procs(list(ours.values()), timeout=10)
        shutil.rmtree(path, ignore_errors=True)
