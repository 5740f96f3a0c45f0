"""Sweep specification: what to search, how, and with which resources (search_spaces/*.yaml).

Pure data and validation (pydantic); the Ray layer turns it into Tune objects.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from ..method.baselines import CAM_KINDS, THRESHOLD_BASELINES, CamKind, baseline_names, check_cam_kinds
from ..method.config import (
    ConfigError,
    Options,
    Readout,
    TrainConfig,
    describe_validation_error,
    read_yaml_mapping,
)
from ..method.readout.components import POSTS
from .metrics import ACCURACY, AUTHORS, METRIC, QUALITY, WORST_DOMAIN

# What a sweep may maximise: fold means on the test folds, reported at every evaluation epoch (lift
# would rank trials as the IoU does: the baselines are the same for all); and once a trial's folds
# are done, robustness: eval.<dataset>.iou_mean on an --eval-data set with masks,
# eval.<dataset>.quality_mean (the label-free quality estimate) on any, and worst_domain_iou (the
# lowest of iou_mean and each masked eval set's). Several at once give a Pareto front (Optuna's TPE
# is multi-objective then).
Objective = Literal[METRIC, ACCURACY, AUTHORS]  # type: ignore[valid-type]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
EVAL_OBJECTIVE = re.compile(rf"^eval\.(?P<dataset>.+)\.(?P<kind>{METRIC}|{QUALITY})$")

# Read-out options are searched as "readout.<option>", e.g. readout.smooth. The split is fixed:
# trials compare on the same folds.
SEARCHABLE = (set(TrainConfig.model_fields) - {"seed", "eval_every", "betas", "variants", "cuda_graph", "kernel",
                                              "split"}) \
    | {f"readout.{name}" for name in Readout.model_fields}


class Param(Options):
    """One searched option: an int or float range (optionally log-scaled) or a choice."""

    type: Literal["int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: list[Any] | None = None

    @model_validator(mode="after")
    def check_shape(self) -> Param:
        if self.type == "choice":
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("a choice needs a non-empty 'values' list and no low/high")
        else:
            if self.low is None or self.high is None or self.values is not None:
                raise ValueError(f"an {self.type} range needs 'low' and 'high' (and no 'values')")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise ValueError("an int range needs whole-number bounds")
            if self.log and self.low <= 0:
                raise ValueError("a log-scaled range needs low > 0")
        return self

    def contains(self, value: Any) -> bool:
        """Whether the search can propose `value` (Optuna refuses a first point it could not)."""
        if self.type == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (self.type == "float" or value == int(value))

    def candidates(self) -> list[Any]:
        """Values that stand for the range in validation: its ends, or every choice."""
        if self.type == "choice":
            return list(self.values)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]


class Resources(Options):
    """What one Ray Train worker of a trial reserves, and how many of the trial's folds it holds."""

    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved by each worker (its torch threads)")
    gpus_per_worker: float = Field(0.0, ge=0, le=1, description="GPU fraction per worker, e.g. 0.25: "
                                   "four workers (trials) share one GPU")
    folds_per_worker: int | None = Field(None, ge=1, description="folds one worker trains as one batched "
                                         "model (default: all k, one worker per trial)")
    device: str | None = Field(None, description="torch device every fold worker trains on, whatever Ray "
                               "assigned it (e.g. cpu on a Ray that declares GPUs it lacks); default: "
                               "cuda where Ray gave the worker a GPU, else cpu")
    trial_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each trial's own actor reserves, to keep it "
        "on chosen nodes (e.g. {on_demand: 0.01}); default: none, any node (a lost one is retried)")

    @field_validator("device")
    @classmethod
    def known_device(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                torch.device(value)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"not a torch device ({exc})") from None
        return value


class Asha(Options):
    grace_period: int = Field(2, ge=1, description="epochs before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class Selection(Options):
    """Which Pareto trial a multi-objective sweep registers and scores on the holdout: the highest
    first objective among those whose accuracy beats the majority rate by `accuracy_margin`."""
    accuracy_margin: float = Field(0.02, ge=0.0, le=1.0, description="accuracy the chosen trial must have "
                                   "above predicting the training folds' most common class")


class SweepSpec(Options):
    name: str = Field("nca_wss", min_length=1)
    trials: int = Field(8, ge=1)
    folds: int = Field(5, ge=2)
    seed: int = Field(0, description="seeds the sampler (TPE), the fold split and training")
    max_concurrent: int = Field(1, ge=1)
    checkpoint_every: int = Field(2, ge=1, description="epochs between fold checkpoints and evaluations")
    max_failures: int = Field(2, ge=0, description="failures tolerated per trial, each resumed from its last "
                              "checkpoint: of its fold workers (Ray Train), and of its own actor (Ray Tune)")
    scheduler: Asha | None = None
    objectives: list[str] = Field(
        default_factory=lambda: [METRIC], min_length=1, description="trial metrics to maximise; two or more "
        "search for their Pareto front (no scheduler then)")
    select: Selection = Selection()
    resources: Resources = Resources()
    holdout: float = Field(0.2, ge=0.0, lt=1.0, description="stratified share set aside before the folds, "
                           "never seen by a trial; the best configuration is scored on it at the end (0: none)")
    baselines: list[CamKind] = Field(
        default_factory=list, description="CAM baselines (a CNN trained per fold) beside every number; the "
        "threshold baselines (intensity, otsu_*) are always on")
    train: dict[str, Any] = Field(default_factory=dict, description="fixed training options")
    search: dict[str, Param] = Field(default_factory=dict)
    first: list[dict[str, Any]] = Field(default_factory=list, description="configurations evaluated first")

    @field_validator("baselines", mode="before")
    @classmethod
    def only_cam_kinds(cls, value: Any) -> Any:
        always = [b for b in value if b in THRESHOLD_BASELINES] if isinstance(value, list) else []
        if always:
            raise ValueError(f"{always}: the threshold baselines are always on; list only CAM baselines "
                             f"({', '.join(CAM_KINDS)}), or none")
        return value

    @model_validator(mode="after")
    def check_objectives(self) -> SweepSpec:
        if len(set(self.objectives)) < len(self.objectives):
            raise ValueError(f"objectives: {self.objectives} names one metric twice")
        unknown = [o for o in self.objectives if o not in (*OBJECTIVES, WORST_DOMAIN) and not EVAL_OBJECTIVE.match(o)]
        if unknown:
            raise ValueError(f"objectives: {unknown} unknown; choose from {[*OBJECTIVES, WORST_DOMAIN]}, "
                             f"eval.<dataset>.{METRIC} or eval.<dataset>.{QUALITY}")
        if len(self.objectives) == 1 and self.objectives[0] in (ACCURACY, AUTHORS):
            raise ValueError(f"objectives: {self.objectives[0]} alone would pick a trial for a number other "
                             f"than its masks; add {METRIC} to search for the Pareto front of both")
        if self.searcher_objectives and self.scheduler is not None:
            raise ValueError(f"scheduler: ASHA stops trials on {METRIC} at evaluation epochs and cannot rank "
                             f"{self.objectives}; remove 'scheduler' or keep the objective {METRIC}")
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def searcher_objectives(self) -> bool:
        """Whether Optuna's searcher holds the objectives (anything but iou_mean alone): known only
        when a trial's folds are done, so Tune and its schedulers get none."""
        return self.objectives != [METRIC]

    def eval_objectives(self) -> list[tuple[str, str]]:
        """(dataset, kind) of every eval.<dataset>.<kind> objective."""
        return [(m["dataset"], m["kind"]) for m in map(EVAL_OBJECTIVE.match, self.objectives) if m]

    def check_eval_data(self, masked: dict[str, bool]) -> None:
        """The --eval-data sets (name -> has masks) every objective needs; ConfigError names the first missing."""
        for dataset, kind in self.eval_objectives():
            if dataset not in masked:
                raise ConfigError(f"objective eval.{dataset}.{kind}: no --eval-data dataset named {dataset!r} "
                                  f"(given: {sorted(masked) or 'none'})")
            if kind == METRIC and not masked[dataset]:
                raise ConfigError(f"objective eval.{dataset}.{kind}: dataset {dataset!r} has no masks; "
                                  f"eval.{dataset}.{QUALITY} estimates its IoU without them")
        if WORST_DOMAIN in self.objectives and not any(masked.values()):
            raise ConfigError(f"objective {WORST_DOMAIN}: needs --eval-data with masks beside the cross-validation")

    @model_validator(mode="after")
    def check_keys(self) -> SweepSpec:
        unknown = sorted(set(self.search) - SEARCHABLE)
        if unknown:
            raise ValueError(f"search: cannot search {unknown}; searchable: {sorted(SEARCHABLE)}")
        both = sorted(set(self.search) & set(self.train))
        if both:
            raise ValueError(f"{both} are both fixed under 'train' and searched under 'search'")
        for i, point in enumerate(self.first):
            extra = sorted(set(point) - set(self.search))
            if extra:
                raise ValueError(f"first[{i}]: {extra} are not searched parameters")
            outside = {k: v for k, v in point.items() if not self.search[k].contains(v)}
            if outside:
                raise ValueError(f"first[{i}]: {outside} lie outside the searched ranges or choices")
        return self

    @property
    def cam_kinds(self) -> tuple[str, ...]:
        """The CAM baselines asked for (each needs a CNN trained per fold)."""
        return check_cam_kinds(self.baselines)

    @property
    def baseline_names(self) -> list[str]:
        """Every baseline a trial reports: the thresholds, then each CAM kind at each CNN size."""
        return baseline_names(self.cam_kinds)

    @property
    def image_sizes(self) -> list[int]:
        """Every training resolution a trial may use (a sweep prepares its data at each)."""
        if "image_size" not in self.search:
            return [self.train_config({}).image_size]
        param = self.search["image_size"]
        return sorted(set(param.values)) if param.type == "choice" else list(range(int(param.low), int(param.high) + 1))

    @property
    def posts(self) -> tuple[str, ...]:
        """Every post-processing a trial's read-outs may use (a sweep prepares the thresholds' IoU under each)."""
        if {"readout", "readout.post", "variants"} & set(self.search):
            return POSTS
        return self.train_config({}).posts

    @property
    def max_epochs(self) -> int:
        """The longest trial's epochs."""
        if "epochs" in self.search:
            return int(max(self.search["epochs"].candidates()))
        return self.train_config({}).epochs

    def train_config(self, params: dict[str, Any]) -> TrainConfig:
        """The full training configuration of one trial: fixed options + sampled ones + seed."""
        values = {**self.train, "seed": self.seed, "eval_every": self.checkpoint_every}
        readout = values.get("readout", {})
        readout = {"inference": readout} if isinstance(readout, str) else dict(readout)
        for key, value in params.items():
            if key.startswith("readout."):
                readout[key.removeprefix("readout.")] = value
            else:
                values[key] = value
        if readout:
            values["readout"] = readout
        return TrainConfig.model_validate(values)


def validate_bounds(spec: SweepSpec, source: str) -> None:
    """Every fixed option, both ends of every range and every first point must be a valid TrainConfig."""
    def check(values: dict, where: str) -> None:
        try:
            spec.train_config(values)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(f"{source}: {where}", exc)) from None

    check({}, "train")
    for name, param in spec.search.items():
        for value in param.candidates():
            check({name: value}, f"search.{name}")
    for i, point in enumerate(spec.first):
        check(point, f"first[{i}]")


def load_space(path: str | Path) -> SweepSpec:
    """A SweepSpec from YAML; any fault raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        spec = SweepSpec.model_validate(read_yaml_mapping(path))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(path), exc)) from None
    validate_bounds(spec, str(path))
    return spec
