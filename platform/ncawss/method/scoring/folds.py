"""A trained fold as a model (FoldModel) and as its weight file (FoldRecord): one writer, one reader.

The file is `weights_fold<i>.pt`, a torch.save of plain values (tensors, lists, strings), so
that it loads without this package's classes; FoldRecord is its one typed view.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ...data import DataError
from ..config import TrainConfig, describe_validation_error
from ..images import Normalisation
from ..nca.model import NCAClassifier
from ..training.cnn import CNNBaseline

FOLD_WEIGHTS = "weights_fold{}.pt"  # one file per fold model, holding FoldRecord.to_dict()


@dataclass(kw_only=True)
class FoldModel:
    """What segmenting new images needs from one trained fold: NCA weights, normalisation, CNNs."""
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    n_classes: int
    cnns: dict[str, CNNBaseline] | None = None
    norm_per_image: bool = False        # normalise: image (norm_mean and norm_std then unused)

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation(tuple(self.norm_mean), tuple(self.norm_std), self.norm_per_image)

    def nca(self, config: TrainConfig) -> NCAClassifier:
        """The fold's trained NCA classifier (on CPU)."""
        model = NCAClassifier.from_config(config, self.n_classes)
        model.load_state_dict(self.state_dict)
        return model


@dataclass(kw_only=True)
class FoldRecord:
    """A fold weight file: the fold's model and what it was trained with and on."""
    model: FoldModel
    config: TrainConfig
    classes: list[str]
    fold: int
    test_ids: list[str]
    source: dict[str, str]              # name and fingerprint of the dataset the folds came from
    cam_kinds: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {"state_dict": m.state_dict, "norm_mean": m.norm_mean, "norm_std": m.norm_std,
                "norm_per_image": m.norm_per_image,
                "n_classes": m.n_classes, "classes": list(self.classes), "config": self.config.model_dump(),
                "fold": self.fold, "test_ids": list(self.test_ids), "source": dict(self.source),
                "cam_kinds": list(self.cam_kinds),
                "cnns": {size: dataclasses.asdict(cnn) for size, cnn in (m.cnns or {}).items()}}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "fold record") -> FoldRecord:
        try:
            cnns = {size: CNNBaseline(**cnn) for size, cnn in values.get("cnns", {}).items()} or None
            model = FoldModel(state_dict=values["state_dict"], norm_mean=values["norm_mean"],
                              norm_std=values["norm_std"], n_classes=values["n_classes"], cnns=cnns,
                              norm_per_image=bool(values.get("norm_per_image", False)))
            config = TrainConfig.model_validate(values["config"])
            classes = values.get("classes") or [str(i) for i in range(model.n_classes)]
            return cls(model=model, config=config, classes=list(classes), fold=int(values["fold"]),
                       test_ids=list(values["test_ids"]), source=dict(values["source"]),
                       cam_kinds=tuple(values.get("cam_kinds", ())))
        except KeyError as exc:
            raise DataError(f"{where}: not a fold weight file (no {exc.args[0]!r})") from None
        except ValidationError as exc:
            raise DataError(describe_validation_error(f"{where}: config", exc)) from None

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FOLD_WEIGHTS.format(self.fold)
        torch.save(self.to_dict(), path)
        return path


def fold_weight_files(folder: str | Path) -> list[Path]:
    """The weights_fold<i>.pt files under `folder`, in fold order."""
    return sorted(Path(folder).rglob(FOLD_WEIGHTS.format("*")))


def read_fold_records(folder: str | Path) -> list[FoldRecord]:
    """The fold records under `folder` (a sweep's best_model/, a cross_validate.py --save folder,
    a downloaded MLflow model), in fold order, on CPU."""
    return [FoldRecord.from_dict(torch.load(path, map_location="cpu", weights_only=False), str(path))
            for path in fold_weight_files(folder)]
