"""One Tune trial: one configuration, its k folds run as one Ray Train run (TorchTrainer), so
Train's launch cost is paid once per trial. By default one worker holds all k folds as one
batched model (resources.folds_per_worker splits them over several workers)."""
from __future__ import annotations

import functools
import logging
import time

import psutil
import ray.train
from pydantic import ValidationError
from ray import tune
from ray.train import TrainingFailedError
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from ..method.config import ConfigError, TrainConfig, describe_validation_error
from .metrics import ACCURACY, LIFT, METRIC, TRAIN_LAUNCHES, TRIAL_FAILED
from .plan import SharedData, TrialPlan
from .process_group import GlooConfig
from .space import Param, SweepSpec
from .status import failure_cause, recurring_error
from .worker import fold_worker

log = logging.getLogger(__name__)

PROGRESS_METRICS = ["epoch", METRIC, LIFT, ACCURACY]  # what Tune's console tables show of a trial


def run_trial(params: dict, *, spec: SweepSpec, data: SharedData, storage: str) -> None:
    """The trial's k folds as one Ray Train run. A run that loses a worker (or its node) is launched
    again, up to spec.max_failures times, and resumes from the folds' last checkpoint; an error that
    would recur (status.TRIAL_ERRORS) ends the trial at once with one report naming its cause."""
    trial_id = tune.get_context().get_trial_id()
    try:
        config = spec.train_config(params)
    except ValidationError as exc:
        report_failure(spec, ConfigError(describe_validation_error("", exc)), launches=0)
        return
    for launch in range(1, spec.max_failures + 2):
        try:
            fold_trainer(spec, config, data, storage, trial_id, launch).fit()
            return
        except TrainingFailedError as exc:
            recurring = recurring_error(exc)
            if recurring is not None:
                log.error("trial %s: %s (not retried: it would fail again)", trial_id, failure_cause(recurring))
                report_failure(spec, recurring, launch)
                return
            if launch > spec.max_failures:
                raise
            log.warning("trial %s: Ray Train run %d failed (%s); resuming from the folds' last checkpoint",
                        trial_id, launch, failure_cause(exc))


def report_failure(spec: SweepSpec, error: BaseException, launches: int) -> None:
    """The trial's one and last report: the cause, how many Ray Train runs it took, and NaN for
    each objective (Tune requires them in every report; the searcher records a failed trial)."""
    tune.report({**{name: float("nan") for name in spec.objectives}, TRIAL_FAILED: failure_cause(error),
                 TRAIN_LAUNCHES: launches})


def fold_trainer(spec: SweepSpec, config: TrainConfig, data: SharedData, storage: str, trial_id: str,
                 launch: int) -> TorchTrainer:
    """The trial's Ray Train run; its name is the trial's, so that a relaunch (here, or by Tune in a
    new actor after a lost node) resumes from the same checkpoints."""
    res = spec.resources
    plan = TrialPlan(config=config, data=data, folds=spec.folds, folds_per_worker=res.folds_per_worker or spec.folds,
                     threads=max(1, int(res.cpus_per_worker)), cam_kinds=spec.cam_kinds, launched_at=time.time(),
                     actor_started_at=psutil.Process().create_time(), device=res.device, launch=launch,
                     objectives=tuple(spec.objectives))
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    return TorchTrainer(
        functools.partial(fold_worker, plan),
        # gloo even on GPUs: workers only exchange small result objects, and NCCL refuses
        # several workers on one GPU, which fractional GPUs per worker need.
        torch_config=GlooConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.workers, use_gpu=res.gpus_per_worker > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"folds-{trial_id}", storage_path=storage,
            # Ray Train retries any worker error; run_trial retries only those worth it
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3),
            callbacks=[TuneReportCallback()]),
    )


def tune_domain(param: Param):
    if param.type == "choice":
        return tune.choice(param.values)
    if param.type == "int":
        return tune.lograndint(int(param.low), int(param.high) + 1) if param.log else \
            tune.randint(int(param.low), int(param.high) + 1)
    return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)


def trainable(spec: SweepSpec, data: SharedData, storage: str):
    fn = tune.with_parameters(run_trial, spec=spec, data=data, storage=storage)
    # The trial's actor only waits on its folds, which hold the real resources.
    fn = tune.with_resources(fn, {"memory": 256 * 1024 ** 2, **spec.resources.trial_resources})
    fn._progress_metrics = PROGRESS_METRICS
    return fn
