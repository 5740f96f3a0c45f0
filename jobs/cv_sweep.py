#!/usr/bin/env python3
"""NCA-WSS hyperparameter sweep: Ray Tune + Optuna over configurations, each evaluated by
k-fold cross-validation with Ray Train; everything tracked in MLflow.

With no arguments: search_spaces/quickstart.yaml on built-in synthetic data, local Ray.
On a cluster:  ray job submit --working-dir . -- python jobs/cv_sweep.py --data s3://... \\
                 --space search_spaces/nca_wss.yaml --output /shared/runs/x
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import yaml

import ncawss
from ncawss import environment
from ncawss.data import DataFile, dataset_metadata, encode_png
from ncawss.method.config import override
from ncawss.sweep.plan import OptunaStudy, sweep_splits
from ncawss.sweep.space import load_space
from ncawss.tracking.tracker import SweepTracker, TrackingError

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = 130  # the exit status of a sweep stopped by Ctrl-C, as a shell gives a program SIGINT ends


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset file or URI from jobs/prepare_data.py (default: synthetic, 200 crops)")
    p.add_argument("--space", default=str(ROOT / "search_spaces/quickstart.yaml"), help="search space YAML")
    p.add_argument("--trials", type=int, help="override the space's number of trials")
    p.add_argument("--folds", type=int, help="override the space's k")
    p.add_argument("--name", help="sweep name: MLflow experiment and Tune run (default: the space's name)")
    p.add_argument("--output", help="directory for results, checkpoints and the default MLflow store "
                                    "(default: runs/NAME)")
    p.add_argument("--storage", help="Ray storage path or URI for checkpoints (default: OUTPUT/ray); "
                                     "must be shared storage on a multi-node cluster")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                        "else sqlite:///OUTPUT/mlflow.db)")
    p.add_argument("--holdout", type=float, help="override the space's holdout share (0: none)")
    p.add_argument("--eval-data", nargs="+", default=[], metavar="PATH",
                   help="datasets (labels not needed) every trial's fold models also segment: the mean quality "
                        "estimate of their masks, and where a set has masks, its IoU beside each baseline; the "
                        "space's objectives may name them (eval.<dataset>.iou_mean, .quality_mean, "
                        "worst_domain_iou)")
    p.add_argument("--optuna-storage", metavar="URL", help="Optuna RDB storage for the sweep's study (default: "
                   "sqlite:///OUTPUT/optuna.db; a server database, e.g. postgresql://..., on a cluster)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in OUTPUT")
    p.add_argument("--verbose", action="store_true", help="show Ray's worker output and Tune's full reports here "
                                                          "(default: they go to Ray's log files)")
    return p.parse_args()


def open_data(path: str | None, spec) -> DataFile:
    """The sweep's dataset: a file read chunk by chunk, or the built-in synthetic crops."""
    if path is None:
        synthetic = ncawss.make_synthetic(n=200, size=spec.train.get("image_size", 64))
        return DataFile.of(synthetic, "synthetic:n=200,seed=0")
    return DataFile.open(path)


def joined(chunks: Iterable[ncawss.Dataset]) -> ncawss.Dataset | None:
    chunks = list(chunks)
    return ncawss.Dataset.join(chunks) if chunks else None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def quiet_console(verbose: bool) -> None:
    """One line per finished fold from ncawss; Ray's own INFO lines only with --verbose."""
    progress = logging.getLogger("ncawss.progress")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    if not verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name in ("ray.train", "ray.tune", "ray.air", "mlflow.pyfunc", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)


def check_optuna_storage(url: str) -> None:
    """Stop before Ray starts on a storage Optuna cannot open (a typo, a server that is down)."""
    import optuna
    try:
        optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy's many error types: one message naming the URL
        raise ValueError(f"--optuna-storage {url}: cannot open it ({type(exc).__name__}: {exc})") from None


def main() -> int:
    args = parse_args()
    environment.for_sweep()
    quiet_console(args.verbose)
    try:
        spec = load_space(args.space)
        for key, value in (("trials", args.trials), ("folds", args.folds), ("name", args.name),
                           ("holdout", args.holdout)):
            if value is not None:
                spec = override(spec, key, value)
    except (ncawss.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output or ROOT / "runs" / spec.name).resolve()
    state_file = output / "sweep.yaml"
    if args.resume and not state_file.exists():
        print(f"error: --resume: {state_file} not found: no sweep to continue in {output}", file=sys.stderr)
        return 2
    state = yaml.safe_load(state_file.read_text()) if args.resume else {}
    # One study per sweep run, named after its start, so that reruns into OUTPUT never mix trials.
    study = OptunaStudy(state.get("optuna_storage") or args.optuna_storage or f"sqlite:///{output / 'optuna.db'}",
                        state.get("optuna_study") or f"{spec.name}-{datetime.datetime.now():%Y%m%dT%H%M%S}")
    uri = state.get("mlflow_uri") or args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") \
        or f"sqlite:///{output / 'mlflow.db'}"
    local_store = uri.startswith("sqlite:") or uri.startswith("file:")
    # A store on this machine keeps artifacts beside it; a server decides for itself.
    tracker = SweepTracker(uri, spec.name, artifact_root=(output / "mlartifacts").as_uri() if local_store else None,
                           parent_run_id=state.get("parent_run_id"))
    output.mkdir(parents=True, exist_ok=True)
    try:
        with environment.tracking_fails_fast():  # during the sweep MLflow retries with backoff
            tracker.check()
        check_optuna_storage(study.storage)
        data = open_data(args.data, spec)
        eval_sets = [dataset_metadata(path) for path in args.eval_data]  # read a chunk at a time by the workers
        names = [meta["name"] for meta in eval_sets]
        if len(set(names)) < len(names):
            raise ValueError(f"--eval-data: datasets {args.eval_data} share a name ({names}); metrics are "
                             "named after datasets, so give each its own name (prepare_data.py --name)")
        spec.check_eval_data({meta["name"]: meta.get("mask_levels") is not None for meta in eval_sets})
        kept, held = ncawss.holdout_split(data.labels, spec.holdout, spec.seed)
        sweep_splits(spec, data.labels[kept])  # every sample labelled, every fold possible
        tracker.dataset = {"name": data.name, "fingerprint": data.fingerprint, "uri": data.uri}
    except (TrackingError, ncawss.DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    holdout_ids = [data.ids[i] for i in held]
    (output / "holdout_ids.txt").write_text("".join(f"{i}\n" for i in holdout_ids))

    # Imports Ray: only once the inputs are valid.
    from ncawss.sweep.summary import summarise, was_interrupted
    from ncawss.sweep.tuner import run_sweep

    storage = args.storage or str(output / "ray")
    parent = tracker.start_sweep(
        params={**{f"space.{k}": v for k, v in spec.model_dump(exclude={"train", "search", "first"}).items()},
                **{f"train.{k}": v for k, v in spec.train.items()},
                **{f"search.{k}": v.model_dump(exclude_none=True) for k, v in spec.search.items()}},
        tags={"dataset": data.name, "dataset.fingerprint": data.fingerprint, "git.commit": git_commit(),
              "optuna.storage": study.storage, "optuna.study": study.name,
              "space.file": Path(args.space).name, "eval_data": ",".join(names)},
        files={"search_space.yaml": Path(args.space).read_text(), "holdout_ids.txt": "\n".join(holdout_ids)})
    state_file.write_text(yaml.safe_dump({"name": spec.name, "mlflow_uri": uri, "parent_run_id": parent,
                                          "storage": storage, "space": str(args.space),
                                          "optuna_storage": study.storage, "optuna_study": study.name,
                                          "started": datetime.datetime.now().isoformat(timespec="seconds")}))
    baselines = ", ".join(["the thresholds", *spec.baselines])
    print(f"sweep {spec.name}: {spec.trials} trials x {spec.folds} folds on {data.name}: {len(kept)} images "
          f"in the folds, {len(held)} held out; baselines: {baselines}; MLflow parent run {parent}")
    if not args.verbose:
        print("worker output: Ray's log files (/tmp/ray/session_latest/logs on each node); --verbose shows it here")
    # The holdout leaves here: trials only ever receive the cross-validation part, read chunk by chunk.
    results = run_sweep(spec, data.rows(kept), data.labels[kept], storage, tracker, output, study,
                        args.eval_data, {"name": data.name, "fingerprint": data.fingerprint}, resume=args.resume,
                        verbose=args.verbose)
    holdout = joined(data.rows(held))  # read only now, for its score at the end
    example = encode_png(joined(data.rows(kept[:1])).images[0])
    summary = summarise(spec, results, tracker, output, holdout, example, names)
    print(summary)
    print(f"\nbest configuration: {output / 'best_config.yaml'}")
    if spec.search:
        print(f"Optuna study {study.name}: optuna-dashboard {study.storage}   "
              f"or optuna.load_study(study_name={study.name!r}, storage={study.storage!r})")
    # MLflow 3's UI starts in its GenAI view whatever the experiment's kind; this link opens the runs table.
    page = f"#/experiments/{tracker.ensure_experiment()}?workflowType=machine_learning"
    if local_store:
        print(f"open MLflow:  mlflow ui --backend-store-uri {uri}   then  http://127.0.0.1:5000/{page}")
    else:
        print(f"MLflow: {uri.rstrip('/')}/{page}" if uri.startswith("http") else f"MLflow: {uri}")
    return INTERRUPTED if was_interrupted(results) else 0


if __name__ == "__main__":
    sys.exit(main())
