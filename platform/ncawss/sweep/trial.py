"""One Tune trial: one configuration, its k folds run as one Ray Train run (TorchTrainer), so
Train's launch cost is paid once per trial. By default one worker holds all k folds as one
batched model (resources.folds_per_worker splits them over several workers)."""
from __future__ import annotations

import functools
import time

import psutil
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from .metrics import METRIC
from .plan import SharedData, TrialPlan
from .process_group import GlooConfig
from .space import Param, SweepSpec
from .worker import fold_worker

PROGRESS_METRICS = ["epoch", METRIC, "lift", "accuracy_mean"]  # what Tune's console tables show of a trial


def run_trial(params: dict, *, spec: SweepSpec, data: SharedData, storage: str) -> None:
    config = spec.train_config(params)
    trial_id = tune.get_context().get_trial_id()
    res = spec.resources
    plan = TrialPlan(config, data, spec.folds, res.folds_per_worker or spec.folds,
                     max(1, int(res.cpus_per_worker)), spec.cam_kinds, time.time(), psutil.Process().create_time(),
                     res.device)
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    trainer = TorchTrainer(
        functools.partial(fold_worker, plan),
        # gloo even on GPUs: workers only exchange small result objects, and NCCL refuses
        # several workers on one GPU, which fractional GPUs per worker need.
        torch_config=GlooConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.workers, use_gpu=res.gpus_per_worker > 0,
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


def trainable(spec: SweepSpec, data: SharedData, storage: str):
    fn = tune.with_parameters(run_trial, spec=spec, data=data, storage=storage)
    # The trial's actor only waits on its folds, which hold the real resources.
    fn = tune.with_resources(fn, {"memory": 256 * 1024 ** 2, **spec.resources.trial_resources})
    fn._progress_metrics = PROGRESS_METRICS
    return fn
