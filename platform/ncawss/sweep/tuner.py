"""Ray orchestration of a sweep: Tune (Optuna TPE, optionally ASHA) proposes configurations,
each trial runs its k folds as one Ray Train run (trial.py, worker.py). Workers checkpoint every
`checkpoint_every` epochs; a failed worker group restarts from the last checkpoint
(FailureConfig). The end of a sweep is in summary.py.

Ray reads some settings from the environment when first imported (Train's v2 API, loopback,
Tune's checkpoint period): the jobs set them first (ncawss.environment).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .. import environment
from ..data import Dataset, dataset_metadata, iter_encoded
from ..method.prepared import PreparedSet, prepare_chunk
from ..tracking.tracker import SweepTracker
from .callback import TrackingCallback, progress
from .cnn_cache import baseline_cnns
from .metrics import METRIC, TRIAL_FAILED
from .plan import EvalSet, OptunaStudy, SharedData, gallery_rows, sweep_splits
from .space import SweepSpec
from .trial import trainable, tune_domain

log = logging.getLogger(__name__)


class Search(OptunaSearch):
    """Optuna's TPE, where a trial that failed with a recurring error (one report naming its cause,
    NaN objectives) counts as failed in the study, neither pruned nor valued."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get(TRIAL_FAILED):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        failed = bool(result and result.get(TRIAL_FAILED))
        super().on_trial_complete(trial_id, None if failed else result, error or failed)


def build_tuner(spec: SweepSpec, data: SharedData, storage: str, tracker: SweepTracker, study: OptunaStudy,
                verbose: bool = False) -> tune.Tuner:
    # Objectives other than iou_mean alone: the searcher holds them (Optuna's TPE is multi-objective
    # for several) and Tune gets none, since its metric, mode and schedulers take one reported at
    # every evaluation epoch, and these are known once a trial's folds are done.
    objectives = dict(metric=list(spec.objectives), mode=["max"] * len(spec.objectives)) \
        if spec.searcher_objectives else {}
    searcher = None
    if spec.search:
        # The study lives in a database (not the driver's memory), for optuna-dashboard and load_study;
        # made here first so that its objectives carry their names there (OptunaSearch loads it).
        database = optuna.storages.RDBStorage(study.storage)
        optuna.create_study(storage=database, study_name=study.name, directions=["maximize"] * len(spec.objectives),
                            load_if_exists=True).set_metric_names(list(spec.objectives))
        searcher = Search(points_to_evaluate=spec.first or None, study_name=study.name, storage=database,
                          sampler=optuna.samplers.TPESampler(seed=spec.seed), **objectives)
    scheduler = None
    if spec.scheduler:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.Tuner(
        trainable(spec, data, storage),
        param_space={name: tune_domain(p) for name, p in spec.search.items()},
        tune_config=tune.TuneConfig(metric=None if objectives else METRIC, mode=None if objectives else "max",
                                    search_alg=searcher, scheduler=scheduler,
                                    num_samples=spec.trials, max_concurrent_trials=spec.max_concurrent),
        run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=3 if verbose else 1,
                                  # a trial whose own actor dies (its node lost) runs again; its new
                                  # TorchTrainer, of the same name, resumes the folds' last checkpoint
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  callbacks=[TrackingCallback(tracker, spec)]),
    )


def prepare(spec: SweepSpec, chunks: Iterable[Dataset], labels: np.ndarray) -> PreparedSet:
    """The sweep's cross-validation data (chunks in order, and their labels) prepared once for every
    trial (method/prepared.py), a chunk per Ray task: at each image size the space may train at, the
    thresholds' IoU under each post-processing its read-outs may use, the full images of
    plan.gallery_rows. The chunks' pixels are in memory only while their tasks run."""
    prepared = PreparedSet.from_chunks(chunks, spec.image_sizes, gallery_rows(spec, labels), spec.posts,
                                       run=lambda jobs, sizes, posts: prepare_as_tasks(jobs, sizes, posts, len(labels)))
    progress.info(f"prepared {len(prepared)} images at {spec.image_sizes} px for every trial")
    return prepared


def prepare_as_tasks(jobs: Iterable[tuple[Dataset, dict[int, int]]], sizes: tuple[int, ...], posts: tuple[str, ...],
                     total: int) -> list[PreparedSet]:
    """prepare_chunk of each (chunk, kept images) as a Ray task, twice as many at once as the cluster
    has CPUs; their results in order."""
    task = ray.remote(num_cpus=1)(prepare_chunk)
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    parts, running, seen = {}, {}, 0

    def collect(wait_for: int) -> None:
        # Results are fetched as they come and their references dropped: Ray keeps a task's
        # arguments (a chunk of full images) while a reference to its result lives. They are
        # copied out of the object store, whose shared memory, once filled, stays taken for the
        # whole sweep: only the joined set need be there.
        done, _ = ray.wait(list(running), num_returns=wait_for)
        for ref in done:
            parts[running.pop(ref)] = copy.deepcopy(ray.get(ref))

    for index, (chunk, keep) in enumerate(jobs):
        running[task.remote(chunk, sizes, keep, posts)] = index
        seen += len(chunk)
        if len(running) >= window:
            collect(1)
        if index % 10 == 0:
            progress.info(f"preparing the data: {seen} of {total} images read")
    if running:
        collect(len(running))
    return [parts[i] for i in sorted(parts)]


def shared_eval_set(path: str) -> EvalSet:
    """An --eval-data file's rows put in the object store as stored, a row group at a time."""
    return EvalSet(dataset_metadata(path)["name"], [ray.put(c) for c in iter_encoded(path)])


def run_sweep(spec: SweepSpec, chunks: Iterable[Dataset], labels: np.ndarray, storage: str, tracker: SweepTracker,
              output: Path, study: OptunaStudy, eval_data: Iterable[str] = (), source: dict | None = None,
              resume: bool = False, verbose: bool = False) -> tune.ResultGrid:
    """Run (or, with resume, continue) the sweep on the dataset given as `chunks` in order, with
    its `labels` (the holdout already removed): prepared once (`prepare`), shared with every trial;
    MLflow runs end FAILED if it crashes. `source` (name, fingerprint of the file the data came
    from) is stored with every fold's weights for later evaluation. `eval_data`: the files (paths or
    URIs) of the --eval-data sets, put in the object store as stored. Workers' output goes to Ray's
    log files unless `verbose`. The Optuna study is written to `study` (a resumed sweep's searcher
    state, restored by Tune, names the same one)."""
    if not ray.is_initialized():
        ray.init(log_to_driver=verbose)  # joins the cluster this runs in (ray job submit), else starts a local one
    experiment = f"{storage.rstrip('/')}/{spec.name}"
    try:
        dataset = prepare(spec, chunks, labels)
        dataset_ref = ray.put(dataset)
        del dataset  # the object store's copy is the one left
        environment.return_freed_memory()
        dataset = ray.get(dataset_ref)
        cnns = baseline_cnns(spec, dataset, dataset_ref, output / "baselines")
        splits = sweep_splits(spec, dataset.labels)
        data = SharedData(dataset=dataset_ref,
                          source=source or {"name": dataset.name, "fingerprint": dataset.fingerprint},
                          splits=[(train.tolist(), test.tolist()) for train, test in splits],
                          cnns=ray.put(cnns) if cnns is not None else None,
                          eval_sets=[shared_eval_set(path) for path in eval_data])
        if resume:
            tuner = tune.Tuner.restore(experiment, trainable=trainable(spec, data, storage), resume_errored=True)
        else:
            tuner = build_tuner(spec, data, storage, tracker, study, verbose)
        return tuner.fit()
    except BaseException:
        tracker.fail_sweep()
        raise


