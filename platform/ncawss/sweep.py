"""Ray orchestration: Tune (Optuna TPE) proposes configurations; each trial runs its k folds
as one Ray Train run, so Train's launch cost is paid once per trial. By default one worker holds
all k folds as one batched model (resources.folds_per_worker splits them over several workers).
Workers checkpoint every `checkpoint_every` epochs; a failed worker group restarts from the last
checkpoint (FailureConfig). The fold worker is in worker.py, the end of a sweep in summary.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import optuna
import ray
import ray.train
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .baselines import CNN_WIDTHS, CNNBaseline, cnn_settings, train_cnns
from .config import TrainConfig
from .data import Dataset, replace_atomically, stratified_folds
from .process_group import GlooConfig
from .space import Param, SweepSpec
from .summary import copy_checkpoint, stopped_status
from .tracking import SweepTracker, log_history
from .worker import FOLDS_DONE, METRIC, fold_worker

log = logging.getLogger(__name__)
progress = logging.getLogger("ncawss.progress")  # one line per finished fold: the job shows it

PROGRESS_METRICS = ["epoch", METRIC, "lift", "accuracy_mean"]
TUNE_BOOKKEEPING = {"pid", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
                    "iterations_since_restore", "training_iteration", "done", FOLDS_DONE, "checkpoint_path"}


# --- CAM baselines: trained once per fold, never per trial ----------------------

def cnn_task(settings: dict, dataset: Dataset, folds: int, seed: int, todo: list[int], size: str,
             threads: int) -> list[CNNBaseline]:
    """One size's CNNs for the folds `todo`, trained as one batched model."""
    torch.set_num_threads(threads)
    config = TrainConfig.model_validate(settings)
    split = stratified_folds(dataset.labels, folds, seed)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return train_cnns(config, [dataset.subset(split[f][0]) for f in todo], size, device)


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
        task = ray.remote(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker)(cnn_task)
        by_size = {size: [f for f, s in todo if s == size] for size in CNN_WIDTHS}
        refs = {size: task.remote(config.model_dump(), dataset_ref, spec.folds, spec.seed, folds, size,
                                  max(1, int(res.cpus_per_worker))) for size, folds in by_size.items() if folds}
        log.info("training %d baseline CNNs (%d folds x %d sizes, each size's folds batched) once for all trials",
                 len(todo), spec.folds, len(CNN_WIDTHS))
        for size, ref in refs.items():
            for fold, cnn in zip(by_size[size], ray.get(ref)):
                replace_atomically(path(fold, size), lambda tmp: torch.save(dataclasses.asdict(cnn), tmp))
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
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    folds_per_worker = res.folds_per_worker or spec.folds
    trainer = TorchTrainer(
        fold_worker,
        train_loop_config={"train": config.model_dump(), "dataset": dataset, "split_seed": spec.seed,
                           "folds": spec.folds, "folds_per_worker": folds_per_worker,
                           "cnns": cnns, "cam_kinds": list(spec.cam_kinds), "eval": eval_sets, "source": source,
                           "threads": max(1, int(res.cpus_per_worker)), "launched_at": time.time()},
        # gloo even on GPUs: workers only exchange small result objects, and NCCL refuses
        # several workers on one GPU, which fractional GPUs per worker need.
        torch_config=GlooConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=math.ceil(spec.folds / folds_per_worker),
                                               use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker),
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
    fn = tune.with_resources(fn, {"memory": 256 * 1024 ** 2})
    fn._progress_metrics = PROGRESS_METRICS  # what Tune's console tables show of a trial's results
    return fn


class TrackingCallback(tune.Callback):
    """Mirrors Tune's trial events into MLflow from the sweep's driver process.

    The MLflow calls run in order on one background thread, so a slow or restarting tracking
    server (MLflow retries with backoff) never stalls Tune's event loop; the end of the
    experiment waits for them."""

    def __init__(self, tracker: SweepTracker, spec: SweepSpec):
        self.tracker, self.spec = tracker, spec
        self._calls: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def __getstate__(self) -> dict:  # a thread pool does not pickle, should Tune pickle its callbacks
        return {**self.__dict__, "_calls": None, "_pending": []}

    def submit(self, fn, *args) -> None:
        if self._calls is None:
            self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._pending.append(self._calls.submit(fn, *args))

    def on_experiment_end(self, trials, **info):
        failed = [exc for exc in (f.exception() for f in self._pending) if exc is not None]
        for exc in failed:
            log.error("an MLflow call failed after its retries: %s: %s", type(exc).__name__, exc)
        self._pending = []

    def on_trial_start(self, iteration, trials, trial, **info):
        config = self.spec.train_config(trial.config)
        self.submit(self.tracker.start_trial, trial.trial_id, {**config.model_dump(), "searched": sorted(trial.config)})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get(FOLDS_DONE):
            metrics = {k: result[k] for k in (METRIC, "train_loss_mean", "train_accuracy_mean") if k in result}
            self.submit(self.log_result, trial.trial_id, metrics, int(result["epoch"]))

    def log_result(self, trial_id: str, metrics: dict, step: int) -> None:
        self.tracker.log_metrics(self.tracker.trial_run_id(trial_id), metrics, step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        for line in fold_lines(trial.trial_id, result):
            progress.info(line)
        if not result.get(FOLDS_DONE):
            progress.info(f"trial {trial.trial_id}: {stopped_status(result)} (ASHA: below the rung's cut-off)")
        self.submit(self.complete, trial.trial_id, result)

    def complete(self, trial_id: str, result: dict) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        metrics = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING}
        for name in [k for k, v in result.items() if k.startswith("fold_") and isinstance(v, list)]:
            metrics.pop(name, None)
            metrics.update({f"{name.replace('fold_', f'fold{i}_')}": v for i, v in enumerate(result[name])})
        self.tracker.log_metrics(run_id, metrics, step=int(result.get("epoch", 0)))
        if result.get(FOLDS_DONE) and result.get("checkpoint_path"):
            self.log_fold_files(run_id, result["checkpoint_path"])
        if not result.get(FOLDS_DONE):
            status = stopped_status(result)
            self.tracker.note_trial(run_id, status, {"ncawss.status": status,
                                                     "ncawss.stopped_at_epoch": str(result.get("epoch", ""))})
        self.tracker.finish_trial(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.submit(self.fail, trial.trial_id)

    def fail(self, trial_id: str) -> None:
        run_id = self.tracker.trial_run_id(trial_id)
        if run_id:
            self.tracker.finish_trial(run_id, "FAILED")

    def log_fold_files(self, run_id: str, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy_checkpoint(checkpoint_path, Path(tmp))
            for fold_json in sorted(Path(tmp).glob("fold*.json")):
                fold = int(fold_json.stem.removeprefix("fold"))
                log_history(self.tracker, run_id, fold, json.loads(fold_json.read_text())["history"])
            self.tracker.log_directory(run_id, tmp, "folds")


def fold_lines(trial_id: str, result: dict) -> list[str]:
    """trial, fold, epoch, IoU beside the best baseline, for each fold of a finished trial."""
    fold_iou = result.get("fold_iou") or []
    baselines = [k.removeprefix("fold_").removesuffix("_iou") for k in result
                 if k.startswith("fold_") and k.endswith("_iou") and k != "fold_iou"]
    lines = []
    for i, value in enumerate(fold_iou):
        best = max(baselines, key=lambda b: result[f"fold_{b}_iou"][i], default=None)
        against = f" vs {best} {100 * result[f'fold_{best}_iou'][i]:.1f}" if best else ""
        lines.append(f"trial {trial_id} fold {i + 1}/{len(fold_iou)}: epoch {result.get('epoch')}, "
                     f"IoU {100 * value:.1f}{against}")
    return lines


def max_epochs(spec: SweepSpec) -> int:
    if "epochs" in spec.search:
        return int(max(spec.search["epochs"].candidates()))
    return spec.train_config({}).epochs


def build_tuner(spec: SweepSpec, refs: dict, storage: str, tracker: SweepTracker, verbose: bool = False) -> tune.Tuner:
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
        run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=3 if verbose else 1,
                                  callbacks=[TrackingCallback(tracker, spec)]),
    )


def run_sweep(spec: SweepSpec, dataset: Dataset, storage: str, tracker: SweepTracker, output: Path,
              eval_sets: list[Dataset] = (), source: dict | None = None, resume: bool = False,
              verbose: bool = False) -> tune.ResultGrid:
    """Run (or, with resume, continue) the sweep on `dataset` (the holdout already removed);
    MLflow runs end FAILED if it crashes. `source` (name, fingerprint of the file the data came
    from) is stored with every fold's weights for later evaluation. Workers' output goes to Ray's
    log files unless `verbose`."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Save Tune's experiment state at every step, so a finished trial is known as finished
    # to a resumed sweep even when the driver dies right after it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    if not ray.is_initialized():
        ray.init(log_to_driver=verbose)  # joins the cluster this runs in (ray job submit), else starts a local one
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    try:
        refs = {"dataset": ray.put(dataset), "eval": [ray.put(d) for d in eval_sets],
                "source": source or {"name": dataset.name, "fingerprint": dataset.fingerprint}}
        cnns = baseline_cnns(spec, dataset, refs["dataset"], output / "baselines")
        refs["cnns"] = ray.put(cnns) if cnns is not None else None
        if resume:
            tuner = tune.Tuner.restore(experiment, trainable=trainable(spec, refs, storage), resume_errored=True)
        else:
            tuner = build_tuner(spec, refs, storage, tracker, verbose)
        return tuner.fit()
    except BaseException:
        tracker.fail_sweep()
        raise


