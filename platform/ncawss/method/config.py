"""Training configuration: one typed, validated object passed down explicitly."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration that failed validation; the message names the source and the key."""


def describe_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: the source (if any), the key, what is wrong and the value given."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{source + ': ' if source else ''}key {key!r}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(problems)


class Options(BaseModel):
    """A frozen, validated set of options; `replace` is the one way to derive a changed copy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes`, validated as the original was (pydantic's model_copy is not);
        ConfigError names the key and the value at fault."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error("", exc)) from None


AnyOptions = TypeVar("AnyOptions", bound=Options)


def override(options: AnyOptions, option: str, value: Any) -> AnyOptions:
    """`options` with one command-line option's value (`--cuda-graph` sets `cuda_graph`), validated;
    ConfigError names the option."""
    try:
        return options.replace(**{option.replace("-", "_"): value})
    except ConfigError as exc:
        raise ConfigError(f"--{option}: {exc}") from None


class Readout(Options):
    """How a trained model's final state becomes a mask; needs no retraining. Defaults: the paper's."""

    inference: Literal["stochastic", "mean_field"] = Field(
        "stochastic", description="random fire masks as in training (paper), or mean_field: every step adds "
        "fire_rate times the update to every cell, deterministically")
    runs: int = Field(1, ge=1, description="stochastic runs whose states are averaged before PCA")
    channels: Literal["all", "hidden"] = Field("all", description="hidden: PCA without the fixed RGB channels")
    binarise: bool = Field(False, description="state > 0 -> 1, else 0, before PCA (the authors' code)")
    standardise: bool = Field(False, description="per image, each channel to zero mean, unit variance before "
                              "PCA; constant channels 0 (the authors' code)")
    smooth: float = Field(0.0, ge=0.0, description="Gaussian sigma (pixels at training resolution) on the response")
    orient: Literal["signed", "deviation", "none"] = Field(
        "signed", description="Otsu on the response + sign rule, or on |response - border median|, or "
        "none: no sign rule, PC1's sign as scikit-learn's (the authors' code)")
    upsample: Literal["response", "mask"] = Field(
        "response", description="to the ground truth's size: the response bilinearly, cut at the threshold, or "
        "the mask bilinearly, cut at 1/2")
    post: Literal["none", "largest", "centre"] = Field(
        "none", description="keep the largest or the central component, holes filled")
    target: Literal["cell", "nucleus"] = Field("cell", description="ground truth: whole cell or nucleus")

    @field_validator("inference", mode="before")
    @classmethod
    def accept_hyphen(cls, value: Any) -> Any:
        return value.replace("-", "_") if isinstance(value, str) else value

    @property
    def name(self) -> str:
        """A short label of the non-default choices, e.g. 'mean_field+smooth1+largest'."""
        parts = [option_label(k, v) for k, v in self.model_dump().items() if v != Readout.model_fields[k].default]
        return "+".join(parts) or "paper"


def option_label(key: str, value: Any) -> str:
    """One read-out choice in a read-out's name: 'binarise', 'smooth1', 'runs8', 'mean_field', ..."""
    if isinstance(value, bool):
        return key
    if isinstance(value, float):
        return f"{key}{value:g}"
    if isinstance(value, int):
        return f"{key}{value}"
    special = {("orient", "none"): "unoriented", ("upsample", "mask"): "mask_up"}
    return special.get((key, value), str(value))


# Read-outs every fold reports beside its configured one (extra metrics, never the objective).
DEFAULT_VARIANTS = {
    "stochastic": {"inference": "stochastic"},
    "mean_field": {"inference": "mean_field"},
}


class TrainConfig(Options):
    """Everything one fold's training needs. Defaults are the paper's configuration."""

    channels: int = Field(32, ge=4, description="NCA state channels n (RGB included)")
    hidden: int = Field(32, ge=1, description="hidden units of the update MLP")
    steps: int = Field(32, ge=1, description="NCA steps per forward pass")
    fire_rate: float = Field(0.5, gt=0.0, le=1.0, description="per-pixel update probability")
    head_hidden: int = Field(128, ge=1, description="hidden units of the classifier head")
    epochs: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    lr_decay: float = Field(0.9999, gt=0.0, le=1.0, description="ExponentialLR gamma, stepped per batch")
    focal_gamma: float = Field(2.0, ge=0.0)
    pool: Literal["mean", "max"] = Field("mean", description="how the classifier head pools the state over "
                                         "pixels (the authors: max in their Matek19 run, mean in Raabin)")
    normalise: Literal["fold", "fixed", "image"] = Field(
        "fold", description="input normalisation: the training fold's channel mean and std, fixed "
        "mean = std = 0.5 (images in [-1, 1], the authors' code), or image: each image's channels by "
        "that image's own mean and std (the same at predict time: blind to a stain's overall shift)")
    split: Literal["stratified", "kfold"] = Field(
        "stratified", description="cross-validation folds: stratified k-fold, or plain shuffled KFold over "
        "all images (the authors' code); scikit-learn, seeded")
    image_size: int = Field(64, ge=8, description="training resolution (square)")
    augment: bool = Field(True, description="random rotation (0..360 degrees) and flips")
    stain_jitter: float = Field(0.0, ge=0.0, le=0.5, description="HED stain augmentation of training images: "
                                "each stain channel scaled by U(1-s, 1+s), shifted by U(-0.1 s, 0.1 s) (0: off)")
    colour_jitter: float = Field(0.0, ge=0.0, le=0.9, description="brightness, contrast and saturation of "
                                 "training images each scaled by U(1-c, 1+c) (0: off)")
    seed: int = 0
    readout: Readout = Field(Readout(), description="the read-out the fold's IoU (the objective) uses; "
                             "a string sets only its inference")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(DEFAULT_VARIANTS),
        description="extra read-outs reported per fold: name -> changes to `readout`")
    eval_every: int = Field(0, ge=0, description="evaluate the test fold every N epochs (0: at the end only)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16: training forward passes under bfloat16 autocast (weights and optimiser stay "
        "fp32); auto: bf16 on CPUs that compute bfloat16 natively (AVX-512 BF16 or AMX), fp32 elsewhere")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the training forward pass; auto: on a CPU where a fold's training "
        "is long enough to repay the compilation (about 20,000 images at the paper's shape), never on CUDA")
    cuda_graph: bool = Field(True, description="on CUDA, replay full batches' forward and backward as one CUDA graph")
    kernel: Literal["torch", "triton"] = Field(
        "torch", description="the NCA step: torch's convolutions, or one Triton kernel per step (CUDA; "
        "opt-in until a GPU measures it faster)")

    @field_validator("readout", mode="before")
    @classmethod
    def inference_shorthand(cls, value: Any) -> Any:
        return {"inference": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def check_variants(self) -> TrainConfig:
        for name, changes in self.variants.items():
            try:
                Readout.model_validate({**self.readout.model_dump(), **changes})
            except ValidationError as exc:
                raise ValueError(f"variants.{name}: {describe_validation_error('readout', exc)}") from None
        return self

    @property
    def augments_colour(self) -> bool:
        """Whether training batches get stain or colour jitter."""
        return self.stain_jitter > 0 or self.colour_jitter > 0

    @property
    def posts(self) -> tuple[str, ...]:
        """The post-processings of the read-out and its variants, in the order Readout.post lists them."""
        used = {self.readout.post, *(r.post for r in self.variant_readouts().values())}
        return tuple(p for p in get_args(Readout.model_fields["post"].annotation) if p in used)

    def variant_readouts(self) -> dict[str, Readout]:
        """Every variant, resolved against the configured read-out (which is `readout`, not one of them)."""
        return {name: Readout.model_validate({**self.readout.model_dump(), **changes})
                for name, changes in self.variants.items()}


def make_config(values: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc)) from None


def read_yaml_mapping(path: Path) -> dict:
    """The top-level mapping of a YAML file; ConfigError names the file otherwise."""
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def load_config(path: str | Path) -> TrainConfig:
    """TrainConfig from a YAML mapping; errors name the file and the key."""
    return make_config(read_yaml_mapping(Path(path)), str(path))
