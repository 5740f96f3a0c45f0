"""The CAM baselines' CNNs: trained once per fold (as parallel Ray tasks), never per trial, and
cached on disk for every later sweep on the same data, folds and training settings."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import ray
import torch

from ..data import fold_splits, replace_atomically
from ..method.baselines import CNN_WIDTHS
from ..method.config import TrainConfig
from ..method.prepared import PreparedSet
from ..method.training.cnn import CNNBaseline, cnn_settings, train_cnns
from .space import SweepSpec

log = logging.getLogger(__name__)


def cnn_task(settings: dict, dataset: PreparedSet, folds: int, seed: int, todo: list[int], size: str,
             threads: int, device: str | None) -> list[CNNBaseline]:
    """One size's CNNs for the folds `todo`, trained as one batched model (on `device`, else on
    the GPU Ray gave the task, else on the CPU)."""
    torch.set_num_threads(threads)
    config = TrainConfig.model_validate(settings)
    split = fold_splits(dataset.labels, folds, seed, config.split)
    device = device or ("cuda" if ray.get_gpu_ids() else "cpu")
    return train_cnns(config, [dataset.training(split[f][0], config.image_size) for f in todo], size, device)


def baseline_cnns(spec: SweepSpec, dataset: PreparedSet, dataset_ref, cache: Path) -> list[dict] | None:
    """Per fold, the CAM baselines' CNNs (both sizes). Cached on disk under a key of the dataset's
    fingerprint, the folds, the seed and the CNN's training settings; missing ones are trained
    as parallel Ray tasks, and each training appends one line to trainings.jsonl."""
    if not spec.cam_kinds:
        return None
    config = spec.train_config({})
    if "epochs" in spec.search:  # the same epoch budget as the longest trial
        config = config.replace(epochs=spec.max_epochs)
    settings = cnn_settings(config)
    key = hashlib.sha256(json.dumps({"dataset": dataset.fingerprint, "folds": spec.folds, "seed": spec.seed,
                                     "settings": settings}, sort_keys=True, default=list).encode()).hexdigest()[:16]
    folder = cache / key
    folder.mkdir(parents=True, exist_ok=True)

    def path(fold: int, size: str) -> Path:
        return folder / f"fold{fold}_{size}.pt"

    todo = [(f, size) for f in range(spec.folds) for size in CNN_WIDTHS if not path(f, size).exists()]
    if todo:
        res = spec.resources
        task = ray.remote(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker)(cnn_task)
        by_size = {size: [f for f, s in todo if s == size] for size in CNN_WIDTHS}
        refs = {size: task.remote(config.model_dump(), dataset_ref, spec.folds, spec.seed, folds, size,
                                  max(1, int(res.cpus_per_worker)), res.device)
                for size, folds in by_size.items() if folds}
        log.info("training %d baseline CNNs (%d folds x %d sizes, each size's folds batched) once for all trials",
                 len(todo), spec.folds, len(CNN_WIDTHS))
        for size, ref in refs.items():
            for fold, cnn in zip(by_size[size], ray.get(ref)):
                replace_atomically(path(fold, size), lambda tmp: torch.save(dataclasses.asdict(cnn), tmp))
                with open(folder / "trainings.jsonl", "a") as f:
                    f.write(json.dumps({"fold": fold, "size": size, "seconds": cnn.seconds}) + "\n")
    return [{size: CNNBaseline(**torch.load(path(f, size), weights_only=False)) for size in CNN_WIDTHS}
            for f in range(spec.folds)]
