"""Training configuration: one typed, validated object passed down explicitly."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class TrainConfig(BaseModel):
    """Everything one fold's training needs. Defaults are the paper's configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    image_size: int = Field(64, ge=8, description="training resolution (square)")
    augment: bool = Field(True, description="random rotation (0..360 degrees) and flips")
    seed: int = 0
    readout: Literal["stochastic", "mean_field"] = Field(
        "stochastic", description="evaluation forward pass: one run with random fire masks (paper) "
        "or mean-field (S <- S + fire_rate * dS, deterministic)")
    eval_every: int = Field(0, ge=0, description="evaluate the test fold every N epochs (0: at the end only)")


class ConfigError(ValueError):
    """A configuration that failed validation; the message names the source and the key."""


def describe_validation_error(source: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{source}: key {key!r}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(problems)


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
