"""Ray orchestration: Tune (Optuna TPE) proposes configurations; each trial runs its
k folds as one Ray Train run, one worker per fold, so Train's launch cost is paid
once per trial. Folds checkpoint every `checkpoint_every` epochs; a failed worker
group restarts from the last checkpoint (FailureConfig).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .baselines import CAM_BASELINES, CNN_WIDTHS
from .config import TrainConfig
from .data import Dataset, stratified_folds
from .gallery import mask_gallery
from .space import Param, SweepSpec
from .tracking import SweepTracker, log_history
from .train import (CNNBaseline, FoldHooks, FoldModel, FoldResult, TestSet, baseline_name, cnn_settings,
                    evaluate, score_dataset, train_cnn, train_fold)

log = logging.getLogger(__name__)

METRIC = "iou_mean"
TUNE_BOOKKEEPING = {"pid", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
                    "iterations_since_restore", "training_iteration", "done", "checkpoint_path"}
TRAIN_STATE = "train_state_fold{}.pt"


# --- one fold per Ray Train worker ------------------------------------------

def gather(value: Any) -> list:
    """Every fold's value, in rank order (gloo process group set up by TorchTrainer)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class RayFoldHooks(FoldHooks):
    """Reports the fold-mean IoU at evaluation epochs, with a checkpoint of every fold."""

    def __init__(self, rank: int, config: TrainConfig, restored: dict | None):
        self.rank, self.config, self.restored = rank, config, restored
        self.metrics: dict = {}

    def load_checkpoint(self) -> dict | None:
        return self.restored

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        self.metrics = metrics

    def save_checkpoint(self, checkpoint: dict) -> None:
        epoch = checkpoint["epoch"]
        if epoch % self.config.eval_every or epoch >= self.config.epochs:
            return  # the last epoch is reported with the fold's results
        folds = gather(self.metrics)
        report = {"epoch": epoch, METRIC: float(np.mean([f["test_iou"] for f in folds])),
                  "fold_iou": [f["test_iou"] for f in folds],
                  "train_loss_mean": float(np.mean([f["train_loss"] for f in folds])),
                  "train_accuracy_mean": float(np.mean([f["train_accuracy"] for f in folds]))}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(checkpoint, Path(tmp) / TRAIN_STATE.format(self.rank))
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restored_state(rank: int, world: int) -> dict | None:
    """This fold's state from the newest checkpoint that holds every fold's state.

    A worker that dies while the folds report leaves the newest checkpoint with
    some folds missing; all folds then continue from the one before it.
    """
    latest = ray.train.get_checkpoint()
    if latest is None:
        return None
    filesystem, run_dir = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    names = defaultdict(set)
    for info in filesystem.get_file_info(pafs.FileSelector(run_dir, recursive=True)):
        names[posixpath.dirname(info.path)].add(posixpath.basename(info.path))
    complete = sorted(d for d, files in names.items() if all(TRAIN_STATE.format(r) in files for r in range(world)))
    if not complete:
        return None
    with filesystem.open_input_stream(posixpath.join(complete[-1], TRAIN_STATE.format(rank))) as f:
        return torch.load(io.BytesIO(f.read()), weights_only=False)


def fold_worker(loop: dict) -> None:
    """Train fold `world rank` of the trial's k-fold split, then report all folds' results."""
    started = time.time()
    context = ray.train.get_context()
    rank, k = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop["threads"])
    config = TrainConfig.model_validate(loop["train"])
    device = ray.train.torch.get_device()
    dataset: Dataset = ray.get(loop["dataset"][0])  # object store: fetched once per node
    cnns = ray.get(loop["cnns"][0])[rank] if loop["cnns"] else None
    train_idx, test_idx = stratified_folds(dataset.labels, k, loop["split_seed"])[rank]
    train, test = dataset.subset(train_idx), dataset.subset(test_idx)
    restored = restored_state(rank, k)
    if restored is not None:
        log.warning("fold %d of %d resumes from its checkpoint at epoch %d", rank, k, restored["epoch"])
    result = train_fold(config, train, test, RayFoldHooks(rank, config, restored), device=device,
                        cnns=cnns, cam_kinds=tuple(loop["cam_kinds"]))
    eval_scores = {}
    model = FoldModel.of(result, len(dataset.classes)).nca(config).to(device) if loop["eval"] else None
    for ref in loop["eval"]:
        other: Dataset = ray.get(ref)
        prepared = TestSet.prepare(other, result.norm_mean, result.norm_std, config.image_size, cnns,
                                   tuple(loop["cam_kinds"]), device)
        ev = evaluate(model, prepared, config, device, {"readout": config.readout})["readout"]
        eval_scores[other.name] = ev.summary()
    summary = {"iou": result.iou, "baseline_iou": result.baseline_iou, "accuracy": result.accuracy,
               "readout_iou": result.readout_iou, "seconds": result.seconds, "eval": eval_scores,
               "startup_s": started - loop["launched_at"],
               "resumed_from_epoch": restored["epoch"] if restored else 0}
    folds = gather(summary)
    with tempfile.TemporaryDirectory() as tmp:
        write_fold_files(Path(tmp), rank, result, train, test, config, loop["source"], loop["cam_kinds"])
        ray.train.report(trial_metrics(folds, config) if rank == 0 else {},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def write_fold_files(folder: Path, rank: int, result: FoldResult, train: Dataset, test: Dataset,
                     config: TrainConfig, source: dict, cam_kinds: list[str]) -> None:
    """Gallery, weights (NCA and baseline CNNs, with what evaluation needs) and per-image results."""
    ev = result.evaluation
    (folder / f"gallery_fold{rank}.png").write_bytes(
        mask_gallery(test.images, test.masks, ev.responses, ev.masks))
    torch.save({"state_dict": result.state_dict, "norm_mean": result.norm_mean, "norm_std": result.norm_std,
                "n_classes": len(train.classes), "classes": train.classes, "config": config.model_dump(),
                "fold": rank, "test_ids": result.test_ids, "source": source, "cam_kinds": list(cam_kinds),
                "cnns": {size: dataclasses.asdict(cnn) for size, cnn in (result.cnns or {}).items()}},
               folder / f"weights_fold{rank}.pt")
    (folder / f"fold{rank}.json").write_text(json.dumps({
        "train_ids": list(train.ids), "test_ids": result.test_ids, "iou": ev.iou.tolist(),
        "baseline_iou": {name: v.tolist() for name, v in ev.baseline_iou.items()},
        "history": result.history}))


def trial_metrics(folds: list[dict], config: TrainConfig) -> dict:
    """Fold means: NCA-WSS IoU (the objective), each baseline's IoU on the same images, the lift
    over the best baseline, every read-out variant, and every evaluation dataset."""
    iou = [f["iou"] for f in folds]
    metrics = {
        "epoch": config.epochs, "done": True,
        METRIC: float(np.mean(iou)), "iou_std": float(np.std(iou)), "fold_iou": iou,
        "accuracy_mean": float(np.mean([f["accuracy"] for f in folds])),
        "fold_accuracy": [f["accuracy"] for f in folds],
        "fold_seconds": [f["seconds"] for f in folds],
        "launch_overhead_s": float(max(f["startup_s"] for f in folds)),
        "resumed_folds": sum(f["resumed_from_epoch"] > 0 for f in folds),
    }
    for name in folds[0]["baseline_iou"]:
        values = [f["baseline_iou"][name] for f in folds]
        metrics.update({f"{name}_iou_mean": float(np.mean(values)), f"{name}_iou_std": float(np.std(values)),
                        f"fold_{name}_iou": values})
    metrics["best_baseline_iou_mean"] = max(metrics[f"{name}_iou_mean"] for name in folds[0]["baseline_iou"])
    metrics["lift"] = metrics[METRIC] - metrics["best_baseline_iou_mean"]
    for readout in folds[0]["readout_iou"]:
        metrics[f"{readout}_iou_mean"] = float(np.mean([f["readout_iou"][readout] for f in folds]))
    for name in folds[0]["eval"]:
        for key in folds[0]["eval"][name]:
            metrics[f"eval.{name}.{key}"] = float(np.mean([f["eval"][name][key] for f in folds]))
    return metrics


# --- CAM baselines: trained once per fold, never per trial ----------------------

def cnn_task(settings: dict, dataset: Dataset, folds: int, seed: int, fold: int, size: str,
             threads: int) -> CNNBaseline:
    torch.set_num_threads(threads)
    config = TrainConfig.model_validate(settings)
    train_idx, _ = stratified_folds(dataset.labels, folds, seed)[fold]
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return train_cnn(config, dataset.subset(train_idx), size, device)


def baseline_cnns(spec: SweepSpec, dataset: Dataset, dataset_ref, cache: Path) -> list[dict] | None:
    """Per fold, the CAM baselines' CNNs (both sizes). Cached on disk under a key of the dataset's
    fingerprint, the folds, the seed and the CNN's training settings; missing ones are trained
    as parallel Ray tasks, and each training appends one line to trainings.jsonl."""
    if not spec.cam_kinds:
        return None
    config = spec.train_config({})
    if "epochs" in spec.search:  # the same epoch budget as the longest trial
        config = config.model_copy(update={"epochs": max_epochs(spec)})
    settings = cnn_settings(config)
    key = hashlib.sha256(json.dumps({"dataset": dataset.fingerprint, "folds": spec.folds, "seed": spec.seed,
                                     "settings": settings}, sort_keys=True, default=list).encode()).hexdigest()[:16]
    folder = cache / key
    folder.mkdir(parents=True, exist_ok=True)
    path = lambda fold, size: folder / f"fold{fold}_{size}.pt"  # noqa: E731
    todo = [(f, size) for f in range(spec.folds) for size in CNN_WIDTHS if not path(f, size).exists()]
    if todo:
        res = spec.resources
        task = ray.remote(num_cpus=res.cpus_per_fold, num_gpus=res.gpus_per_fold)(cnn_task)
        refs = {job: task.remote(config.model_dump(), dataset_ref, spec.folds, spec.seed, *job,
                                 max(1, int(res.cpus_per_fold))) for job in todo}
        log.info("training %d baseline CNNs (%d folds x %d sizes) once for all trials",
                 len(todo), spec.folds, len(CNN_WIDTHS))
        for (fold, size), ref in refs.items():
            cnn = ray.get(ref)
            tmp = path(fold, size).with_suffix(".tmp")
            torch.save(dataclasses.asdict(cnn), tmp)
            os.replace(tmp, path(fold, size))
            with open(folder / "trainings.jsonl", "a") as f:
                f.write(json.dumps({"fold": fold, "size": size, "seconds": cnn.seconds}) + "\n")
    return [{size: CNNBaseline(**torch.load(path(f, size), weights_only=False)) for size in CNN_WIDTHS}
            for f in range(spec.folds)]


# --- one Tune trial: one TorchTrainer over k folds ---------------------------

def run_trial(params: dict, *, spec_json: str, dataset: list, cnns: list, eval_sets: list, source: dict,
              storage: str) -> None:
    spec = SweepSpec.model_validate_json(spec_json)
    config = spec.train_config(params)
    trial_id = tune.get_context().get_trial_id()
    res = spec.resources
    per_worker = {"CPU": res.cpus_per_fold, **({"GPU": res.gpus_per_fold} if res.gpus_per_fold else {})}
    trainer = TorchTrainer(
        fold_worker,
        train_loop_config={"train": config.model_dump(), "dataset": dataset, "split_seed": spec.seed,
                           "cnns": cnns, "cam_kinds": list(spec.cam_kinds), "eval": eval_sets, "source": source,
                           "threads": max(1, int(res.cpus_per_fold)), "launched_at": time.time()},
        # gloo even on GPUs: folds only exchange small result objects, and NCCL refuses
        # several workers on one GPU, which fractional GPUs per fold need.
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=spec.folds, use_gpu=res.gpus_per_fold > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"folds-{trial_id}", storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def tune_domain(param: Param):
    if param.type == "choice":
        return tune.choice(param.values)
    if param.type == "int":
        return tune.lograndint(int(param.low), int(param.high) + 1) if param.log else \
            tune.randint(int(param.low), int(param.high) + 1)
    return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)


def trainable(spec: SweepSpec, refs: dict, storage: str):
    # Object refs travel inside lists so that Ray hands them over as refs, not as their values.
    fn = tune.with_parameters(run_trial, spec_json=spec.model_dump_json(), dataset=[refs["dataset"]],
                              cnns=[refs["cnns"]] if refs["cnns"] is not None else [],
                              eval_sets=refs["eval"], source=refs["source"], storage=storage)
    # The trial driver only waits on its folds, which hold the real resources.
    return tune.with_resources(fn, {"memory": 256 * 1024 ** 2})


class TrackingCallback(tune.Callback):
    """Mirrors Tune's trial events into MLflow from the sweep's driver process."""

    def __init__(self, tracker: SweepTracker, spec: SweepSpec):
        self.tracker, self.spec = tracker, spec

    def on_trial_start(self, iteration, trials, trial, **info):
        config = self.spec.train_config(trial.config)
        self.tracker.start_trial(trial.trial_id, {**config.model_dump(), "searched": sorted(trial.config)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.tracker.trial_run_id(trial.trial_id)
        if not result.get("done"):
            self.tracker.log_metrics(run_id, {k: result[k] for k in (METRIC, "train_loss_mean", "train_accuracy_mean")
                                              if k in result}, step=int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.tracker.trial_run_id(trial.trial_id)
        result = trial.last_result or {}
        metrics = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
        for name in [k for k, v in result.items() if k.startswith("fold_") and isinstance(v, list)]:
            metrics.pop(name, None)
            metrics.update({f"{name.replace('fold_', f'fold{i}_')}": v for i, v in enumerate(result[name])})
        self.tracker.log_metrics(run_id, metrics, step=int(result.get("epoch", 0)))
        if result.get("done") and result.get("checkpoint_path"):
            self.log_fold_files(run_id, result["checkpoint_path"])
        self.tracker.finish_trial(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.tracker.trial_run_id(trial.trial_id)
        if run_id:
            self.tracker.finish_trial(run_id, "FAILED")

    def log_fold_files(self, run_id: str, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy_checkpoint(checkpoint_path, Path(tmp))
            for fold_json in sorted(Path(tmp).glob("fold*.json")):
                fold = int(fold_json.stem.removeprefix("fold"))
                log_history(self.tracker, run_id, fold, json.loads(fold_json.read_text())["history"])
            self.tracker.log_directory(run_id, tmp, "folds")


def max_epochs(spec: SweepSpec) -> int:
    if "epochs" in spec.search:
        return int(max(spec.search["epochs"].candidates()))
    return spec.train_config({}).epochs


def build_tuner(spec: SweepSpec, refs: dict, storage: str, tracker: SweepTracker) -> tune.Tuner:
    searcher = None
    if spec.search:
        searcher = OptunaSearch(points_to_evaluate=spec.first or None,
                                sampler=optuna.samplers.TPESampler(seed=spec.seed))
    scheduler = None
    if spec.scheduler:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_epochs(spec), grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.Tuner(
        trainable(spec, refs, storage),
        param_space={name: tune_domain(p) for name, p in spec.search.items()},
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=spec.trials, max_concurrent_trials=spec.max_concurrent),
        run_config=tune.RunConfig(name=spec.name, storage_path=storage,
                                  callbacks=[TrackingCallback(tracker, spec)]),
    )


def run_sweep(spec: SweepSpec, dataset: Dataset, storage: str, tracker: SweepTracker, output: Path,
              eval_sets: list[Dataset] = (), source: dict | None = None, resume: bool = False) -> tune.ResultGrid:
    """Run (or, with resume, continue) the sweep on `dataset` (the holdout already removed);
    MLflow runs end FAILED if it crashes. `source` (name, fingerprint of the file the data came
    from) is stored with every fold's weights for later evaluation."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Save Tune's experiment state at every step, so a finished trial is known as finished
    # to a resumed sweep even when the driver dies right after it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    if not ray.is_initialized():
        ray.init()  # joins the cluster this runs in (ray job submit), else starts a local Ray
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    try:
        refs = {"dataset": ray.put(dataset), "eval": [ray.put(d) for d in eval_sets],
                "source": source or {"name": dataset.name, "fingerprint": dataset.fingerprint}}
        cnns = baseline_cnns(spec, dataset, refs["dataset"], output / "baselines")
        refs["cnns"] = ray.put(cnns) if cnns is not None else None
        if resume:
            tuner = tune.Tuner.restore(experiment, trainable=trainable(spec, refs, storage), resume_errored=True)
        else:
            tuner = build_tuner(spec, refs, storage, tracker)
        return tuner.fit()
    except BaseException:
        tracker.fail_sweep()
        raise


# --- the end of a sweep ------------------------------------------------------

def trial_rows(results: tune.ResultGrid) -> list[dict]:
    """One row per trial, finished ones first by fold-mean IoU."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        status = "error" if result.error else ("done" if metrics.get("done") else "stopped")
        rows.append({**metrics, "trial": metrics.get("trial_id", "?"), "params": dict(result.config or {}),
                     "status": status})
    return sorted(rows, key=lambda r: (r["status"] != "done", -r.get(METRIC, -1.0)))


def optuna_figures(spec: SweepSpec, rows: list[dict]) -> dict[str, bytes]:
    """Optuna's parameter-importance and parallel-coordinate plots of the finished trials."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def distribution(p: Param):
        if p.type == "choice":
            return CategoricalDistribution(p.values)
        cls = IntDistribution if p.type == "int" else FloatDistribution
        return cls(int(p.low) if p.type == "int" else p.low, int(p.high) if p.type == "int" else p.high, log=p.log)

    done = [r for r in rows if r["status"] == "done"]
    if not spec.search or len(done) < 2:
        return {}
    study = optuna.create_study(direction="maximize")
    dists = {k: distribution(p) for k, p in spec.search.items()}
    for row in done:
        study.add_trial(optuna.trial.create_trial(params={k: row["params"][k] for k in dists},
                                                  distributions=dists, value=row[METRIC]))
    figures = {}
    plots = {"param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
             "parallel_coordinate.png": optuna.visualization.matplotlib.plot_parallel_coordinate}
    for name, plot in plots.items():
        try:
            axes = plot(study)
            buffer = io.BytesIO()
            axes.figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
            figures[name] = buffer.getvalue()
        except Exception as exc:  # e.g. importances of parameters that never varied
            log.warning("optuna figure %s not made: %s", name, exc)
    return figures


def table_lines(rows: list[dict], names: list[str], baselines: list[str]) -> list[list[str]]:
    """Header and one line per trial: searched parameters, IoU in %, each baseline, lift, accuracy, overhead."""
    def cell(row: dict, key: str, pattern: str, scale: float = 1.0) -> str:
        return pattern.format(scale * row[key]) if key in row else "-"

    def param(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = [["trial", *names, "IoU", "± std", *baselines, "lift", "accuracy", "launch s", "status"]]
    for r in rows:
        lines.append([r["trial"], *(param(r["params"].get(n)) for n in names),
                      cell(r, METRIC, "{:.1f}", 100), cell(r, "iou_std", "{:.1f}", 100),
                      *(cell(r, f"{b}_iou_mean", "{:.1f}", 100) for b in baselines), cell(r, "lift", "{:+.1f}", 100),
                      cell(r, "accuracy_mean", "{:.3f}"), cell(r, "launch_overhead_s", "{:.0f}"), r["status"]])
    return lines


def copy_checkpoint(checkpoint_path: str, destination: Path) -> Path:
    """A trial's last checkpoint (fold weights, results, galleries) copied to a local folder."""
    filesystem, path = pafs.FileSystem.from_uri(checkpoint_path) if "://" in checkpoint_path \
        else (pafs.LocalFileSystem(), checkpoint_path)
    destination.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(destination), source_filesystem=filesystem,
                    destination_filesystem=pafs.LocalFileSystem())
    return destination


def score_holdout(spec: SweepSpec, model_dir: Path, holdout: Dataset) -> dict[str, float]:
    """The best configuration's k fold models on the held-out images, beside every baseline."""
    records = [torch.load(p, weights_only=False) for p in sorted(model_dir.glob("weights_fold*.pt"))]
    config = TrainConfig.model_validate(records[0]["config"])
    scores = score_dataset(config, [FoldModel.from_record(r) for r in records], holdout,
                           cam_kinds=spec.cam_kinds)["readout"]
    metrics = {f"holdout_{k}": v for k, v in scores.items() if k != "fold_iou"}
    metrics.update({f"holdout_fold{i}_iou": v for i, v in enumerate(scores["fold_iou"])})
    return metrics


def summarise(spec: SweepSpec, results: tune.ResultGrid, tracker: SweepTracker, output: Path,
              holdout: Dataset | None = None) -> str:
    """Write best_config.yaml, trials.csv and best_model/, score the best configuration on the
    holdout, close the MLflow parent run; return the summary text."""
    import yaml

    rows = trial_rows(results)
    done = [r for r in rows if r["status"] == "done"]
    names = ["intensity"] + [baseline_name(kind, size) for kind in CAM_BASELINES for size in CNN_WIDTHS]
    baselines = [b for b in names if any(f"{b}_iou_mean" in r for r in rows)]
    lines = table_lines(rows, sorted(spec.search), baselines)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    table = "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
    csv = "\n".join(",".join(line) for line in lines) + "\n"
    (output / "trials.csv").write_text(csv)
    files: dict[str, str | bytes] = {"trials.csv": csv, **optuna_figures(spec, rows)}
    metrics = {"trials_done": len(done), "trials_total": len(rows)}
    text = (f"\n{len(done)} of {len(rows)} trials finished (IoU in %, at the ground truth's resolution, "
            f"every baseline on the same test images; lift = IoU minus the best baseline)\n{table}")
    if done:
        best = done[0]
        config = spec.train_config(best["params"])
        best_yaml = yaml.safe_dump({**config.model_dump(), "betas": list(config.betas)}, sort_keys=False)
        (output / "best_config.yaml").write_text(best_yaml)
        files["best_config.yaml"] = best_yaml
        overheads = [r["launch_overhead_s"] for r in done]
        best_keys = (METRIC, "iou_std", "lift", "accuracy_mean")
        metrics.update({f"best_{k}": best[k] for k in best_keys})
        metrics.update({f"best_{b}_iou_mean": best[f"{b}_iou_mean"] for b in baselines})
        metrics["launch_overhead_mean_s"] = float(np.mean(overheads))
        against = ", ".join(f"{b} {100 * best[f'{b}_iou_mean']:.1f}" for b in baselines)
        optimistic = "optimistic" if holdout is not None and len(holdout) else \
            "optimistic, and with no holdout it is also the only number"
        text += (f"\n\nbest: trial {best['trial']} {best['params']}: cross-validation IoU {100 * best[METRIC]:.1f} ± "
                 f"{100 * best['iou_std']:.1f} vs {against} (lift {100 * best['lift']:+.1f}); "
                 f"chosen on the same folds it is scored on, so {optimistic}")
        if best.get("checkpoint_path"):
            model_dir = copy_checkpoint(best["checkpoint_path"], output / "best_model")
            if holdout is not None and len(holdout):
                scores = score_holdout(spec, model_dir, holdout)
                metrics.update(scores)
                text += (f"\nheld-out test ({len(holdout)} images never seen by the search), majority vote of the "
                         f"{spec.folds} fold models: IoU {100 * scores['holdout_iou']:.1f} vs "
                         + ", ".join(f"{b} {100 * scores[f'holdout_{b}_iou']:.1f}" for b in baselines)
                         + f" (lift {100 * scores['holdout_lift']:+.1f}); folds alone: "
                         + ", ".join(f"{100 * scores[f'holdout_fold{i}_iou']:.1f}" for i in range(spec.folds)))
        text += (f"\nRay Train launch overhead per trial (paid once for all {spec.folds} folds): "
                 f"mean {np.mean(overheads):.1f} s, max {np.max(overheads):.1f} s")
    tracker.finish_sweep(metrics, files)
    return text
