#!/usr/bin/env python3
"""Time and peak memory of the jobs as the dataset grows: prepare, a 1-trial sweep, predict.

For each N, synthetic crops of --size pixels (`prepare_data.py synthetic`), then a sweep of one
trial, 2 folds, 1 epoch at 32 x 32 (search_spaces/smoke.yaml's model) on them, then
`predict.py` with that sweep's model on the same file. Memory: the peak of the machine's used
memory (every process: the job's, Ray's, its workers') above what it was just before the
command, sampled every 0.1 s; for the sweep, also less an idle local Ray's own (measured first).
Run it alone on the machine: anything else that allocates memory meanwhile is counted.

    python bench/scale.py                       # N = 1000 4000 16000 at 256 px
    python bench/scale.py --n 1000 4000 --work /tmp/scale
    python bench/scale.py --n 1000 4000 --work /tmp/scale --jobs predict   # reusing that run's files
    python bench/scale.py --n 1000 --work /tmp/scale --jobs sweep --eval-data OTHER.parquet  # sweep + eval set
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from common import machine

ROOT = Path(__file__).resolve().parent.parent
JOBS = ("prepare", "sweep", "predict")
GB = 1024 ** 3


class PeakMemory:
    """The peak of the machine's used memory above its level at the start, sampled in a thread."""

    def __init__(self, every: float = 0.1):
        self.every, self.start, self.peak = every, psutil.virtual_memory().used, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, psutil.virtual_memory().used - self.start)
            self.done.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def measured(args: list[str], log: Path) -> tuple[float, float]:
    """(seconds, peak GB above the start) of a job, its output in `log`; a failure stops the bench."""
    started = time.perf_counter()
    with PeakMemory() as memory, open(log, "w") as out:
        code = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"{' '.join(args[:2])} failed (exit {code}); see {log}")
    return time.perf_counter() - started, memory.peak / GB


def idle_ray() -> float:
    """GB a local Ray holds, idle, in the 15 s after it started, started as the sweep starts one
    (`ray.init()`: every CPU, the dashboard)."""
    script = "import ray, time; ray.init(log_to_driver=False); time.sleep(15); ray.shutdown()"
    with PeakMemory() as memory:
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, check=True)
    return memory.peak / GB


def space(work: Path) -> Path:
    values = yaml.safe_load((ROOT / "search_spaces/smoke.yaml").read_text())
    values.update(name="scale", trials=1, holdout=0.0, first=values["first"][:1])
    values["train"].update(image_size=32, epochs=1, batch_size=32)
    values["resources"] = {"cpus_per_worker": 2}
    path = work / "scale.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 16000], help="dataset sizes")
    p.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    p.add_argument("--work", help="folder for the files (default: a temporary one, removed at the end)")
    p.add_argument("--eval-data", nargs="+", default=[], metavar="PATH",
                   help="the sweep's --eval-data sets (default none)")
    p.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS),
                   help="the jobs to time (default all); the others' files must be in --work from an earlier run")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        ray_idle = idle_ray() if "sweep" in args.jobs else float("nan")
        print(f"machine: {machine('cpu')}, {psutil.virtual_memory().total / GB:.0f} GB; "
              f"idle local Ray: {ray_idle:.2f} GB", flush=True)
        rows = []
        for n in args.n:
            data, model = work / f"synthetic-{n}.parquet", work / f"sweep-{n}"
            commands = {"prepare": ["jobs/prepare_data.py", "synthetic", "--n", str(n), "--size", str(args.size),
                                    "--seed", "0", "--output", str(data)],
                        "sweep": ["jobs/cv_sweep.py", "--data", str(data), "--space", str(space(work)),
                                  "--output", str(model), *(["--eval-data", *args.eval_data] * bool(args.eval_data))],
                        "predict": ["jobs/predict.py", "--model", str(model), "--images", str(data),
                                    "--output", str(work / f"predict-{n}")]}
            prepare, sweep, predict = (measured(commands[job], work / f"{job}-{n}.log") if job in args.jobs
                                       else (float("nan"), float("nan")) for job in JOBS)
            rows.append((n, prepare, (sweep[0], sweep[1] - ray_idle), predict))
            print(f"N={n}: prepare {prepare[0]:.0f} s +{prepare[1]:.2f} GB, sweep {sweep[0]:.0f} s "
                  f"+{sweep[1] - ray_idle:.2f} GB, predict {predict[0]:.0f} s +{predict[1]:.2f} GB", flush=True)
        print(f"\n{args.size} x {args.size} px; memory: peak above the start (the sweep's: also above an idle "
              f"local Ray, {ray_idle:.2f} GB)\n")
        print("| N images | prepare | sweep (1 trial, 2 folds, 1 epoch) | predict |")
        print("|---:|---|---|---|")
        for n, prepare, sweep, predict in rows:
            print(f"| {n:,} | {prepare[0]:.0f} s, +{prepare[1]:.2f} GB | {sweep[0]:.0f} s, +{sweep[1]:.2f} GB | "
                  f"{predict[0]:.0f} s ({n / predict[0]:.0f} img/s), +{predict[1]:.2f} GB |")
        if len(rows) > 1:
            (n0, *first), (n1, *last) = rows[0], rows[-1]
            growth = [(b[1] - a[1]) / (n1 - n0) * 1000 for a, b in zip(first, last)]
            print(f"| growth per 1,000 images | {growth[0]:+.2f} GB | {growth[1]:+.2f} GB | {growth[2]:+.2f} GB |")


if __name__ == "__main__":
    main()
