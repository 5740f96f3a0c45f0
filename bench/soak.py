#!/usr/bin/env python3
"""Fault soak: a sweep on a real local two-node Ray, with a real MLflow tracking server, while
faults strike at random but seeded times; then a table of what was lost (it must be nothing).

    .venv/bin/python bench/soak.py                      # 8 trials of 30 epochs, 5 faults within 5 minutes
    .venv/bin/python bench/soak.py --trials 8 --faults 8 --within 600 --seed 3

The head node has no CPUs, so every fold worker runs on the worker node; trial actors run on the
head or the worker node. Faults, each kind at least once where --faults allows:
- worker: a fold worker process (RayTrainWorker) is killed;
- node: the worker node is removed without warning (its workers die with it) and, after a
  pause, a new one joins (as an autoscaler replaces a lost spot instance);
- actor: a trial's own actor (the Tune trainable driving its Ray Train run) is killed;
- tracking: the MLflow server is killed and, after a pause, started again on the same port.
Checkpoint storage is a local folder that both nodes reach, as a shared filesystem would be.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KINDS = ("worker", "node", "actor", "tracking")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30, help="per trial (default 30)")
    p.add_argument("--images", type=int, default=300, help="synthetic 32x32 crops (default 300); with the "
                   "defaults a sweep takes minutes on 2 cores, so that the faults land mid-trial")
    p.add_argument("--faults", type=int, default=5, help="faults to inject (default 5)")
    p.add_argument("--within", type=float, default=300, help="seconds the faults are spread over (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault times and kinds")
    p.add_argument("--keep", metavar="DIR", help="keep the sweep's output in DIR (default: a temporary folder)")
    return p.parse_args()


def schedule(faults: int, within: float, seed: int) -> list[tuple[float, str]]:
    """(seconds after the sweep starts, kind), sorted: every kind once where faults allow, the
    rest at random; times uniform in [30 s, within], at least 30 s apart so that each is felt."""
    rng = random.Random(seed)
    kinds = list(KINDS[:faults]) + [rng.choice(KINDS) for _ in range(faults - len(KINDS))]
    rng.shuffle(kinds)
    times: list[float] = []
    while len(times) < faults:
        t = rng.uniform(30, within)
        if all(abs(t - other) >= 30 for other in times):
            times.append(t)
    return list(zip(sorted(times), kinds))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """A real MLflow server on loopback (SQLite runs, proxied artifacts) in its own process group."""

    def __init__(self, root: Path):
        self.root, self.port, self.process = root, free_port(), None
        self.log = open(root / "mlflow-server.log", "ab")

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(1200):  # a server starting beside training on 2 cores can take minutes
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the MLflow server on port {self.port} did not start")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def ours(marker: str) -> list[psutil.Process]:
    """Processes of this soak's Ray (its nodes are this process's children) whose title holds `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and \
                    any(parent.pid == os.getpid() for parent in proc.parents()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


class Injector:
    """Strikes the scheduled faults while the sweep runs; records what it did."""

    def __init__(self, cluster, node, server: TrackingServer, rng: random.Random):
        self.cluster, self.node, self.server, self.rng = cluster, node, server, rng
        self.done: list[tuple[float, str, str]] = []  # (seconds, kind, what happened)

    def kill_one(self, marker: str, what: str) -> str:
        """Kill one of this soak's processes whose title holds `marker`, at random."""
        candidates = ours(marker)
        if not candidates:
            return f"skipped: no {what} running"
        victim = self.rng.choice(candidates)
        victim.kill()
        return f"killed {what} pid {victim.pid}"

    def strike(self, kind: str) -> str:
        if kind == "worker":
            return self.kill_one("RayTrainWorker", "fold worker")
        if kind == "actor":
            return self.kill_one("ImplicitFunc", "trial actor")
        if kind == "node":
            self.cluster.remove_node(self.node, allow_graceful=False)
            time.sleep(10)
            self.node = self.cluster.add_node(num_cpus=2)
            return "removed the worker node; a new one joined 10 s later"
        self.server.kill()
        time.sleep(8)
        self.server.start()
        return "killed the MLflow server; restarted 8 s later"

    def run(self, plan: list[tuple[float, str]], started: float, driver: subprocess.Popen) -> None:
        """In the main thread: Ray's Cluster adds a node by installing signal handlers."""
        for at, kind in plan:
            while time.time() - started < at:
                if driver.poll() is not None:
                    return
                time.sleep(0.5)
            what = self.strike(kind)
            self.done.append((time.time() - started, kind, what))
            print(f"{time.time() - started:6.0f} s  {kind:8s}  {what}", flush=True)


def space_file(folder: Path, trials: int, epochs: int) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    space.update(name="soak", trials=trials, max_concurrent=2, checkpoint_every=1, max_failures=4, holdout=0.2)
    space["train"].update(epochs=epochs, image_size=32)
    space["search"]["steps"] = {"type": "int", "low": 8, "high": 12}  # enough work per epoch to be hit mid-trial
    space["first"] = [{"channels": 8, "steps": 8, "fire_rate": 0.5}]
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def trial_table(server_uri: str, epochs: int) -> tuple[list[list[str]], int]:
    """A row per trial from MLflow: status, epochs tracked (once each?) vs trained, resumes, launches,
    retries, back-filled epochs; and the number of epochs lost or doubled over all trials."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server_uri)
    experiment = client.get_experiment_by_name("soak")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    rows, lost = [], 0
    for run in sorted(runs, key=lambda r: r.info.start_time):
        tracked = [m.step for m in client.get_metric_history(run.info.run_id, "iou_mean")]
        trained = len(client.get_metric_history(run.info.run_id, "fold0_train_loss"))
        finished = run.data.tags.get("ncawss.status") == "done"
        expected = list(range(1, epochs + 1)) if finished else sorted(set(tracked))
        missing = len(set(expected) - set(tracked)) + len(tracked) - len(set(tracked))
        lost += missing
        m, t = run.data.metrics, run.data.tags
        rows.append([t.get("ncawss.trial_id", "?"), t.get("ncawss.status", run.info.status)[:40],
                     f"{len(set(tracked))}/{trained}", str(missing), str(int(m.get("resumed_folds", 0))),
                     str(int(m.get("train_launches", 0))), t.get("ncawss.retries", "0"),
                     t.get("ncawss.backfilled_epochs", "-")])
    header = ["trial", "status", "epochs tracked/trained", "lost or doubled", "resumed folds", "train launches",
              "actor retries", "back-filled epochs"]
    return [header, *rows], lost


def print_table(lines: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def main() -> int:
    args = parse_args()
    from ray.cluster_utils import Cluster

    from ncawss import convert

    work = Path(args.keep or tempfile.mkdtemp(prefix="soak"))
    work.mkdir(parents=True, exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.environ["RAY_TMPDIR"] = ray_tmp
    data = convert("synthetic", None, work / "data.parquet", n=args.images, size=32)
    space = space_file(work, args.trials, args.epochs)
    plan = schedule(args.faults, args.within, args.seed)
    print("fault plan (seconds after the sweep starts):", ", ".join(f"{t:.0f} s {k}" for t, k in plan))
    server = TrackingServer(work)
    server.start()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    started = time.time()
    try:
        node = cluster.add_node(num_cpus=2)
        command = [sys.executable, "jobs/cv_sweep.py", "--data", str(data), "--space", str(space),
                   "--output", str(work / "out"), "--mlflow-uri", server.uri]
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": cluster.address}
        log = open(work / "sweep.log", "w")
        driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        injector = Injector(cluster, node, server, random.Random(args.seed))
        injector.run(plan, started, driver)
        returncode = driver.wait(timeout=1800)
    finally:
        cluster.shutdown()
    seconds = time.time() - started
    lines, lost = trial_table(server.uri, args.epochs)
    server.kill()
    counts = {kind: sum(k == kind and not what.startswith("skipped") for _, k, what in injector.done) for kind in KINDS}
    done = sum(line[1] == "done" for line in lines[1:])
    print(f"\nsweep exit status {returncode} after {seconds:.0f} s; faults injected: "
          + ", ".join(f"{kind} {n}" for kind, n in counts.items())
          + f" ({len(injector.done) - sum(counts.values())} skipped: nothing of that kind was running)")
    print(f"trials finished: {done} of {args.trials}\n")
    print_table(lines)
    print(f"\nepochs lost or doubled in MLflow over all trials: {lost}")
    (work / "soak.json").write_text(json.dumps({"faults": injector.done, "table": lines, "lost": lost,
                                                "returncode": returncode, "seconds": seconds}))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return 0 if returncode == 0 and lost == 0 and done == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
