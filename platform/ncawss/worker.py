"""A Ray Train worker of one trial: it trains its share of the trial's k folds as one batched
model, reports the fold-mean IoU at evaluation epochs with a checkpoint of its folds, and at the
end writes each fold's files (weights, gallery, per-image results).

A trial runs ceil(k / folds_per_worker) workers; worker r holds folds
r * folds_per_worker onwards. Workers only exchange small result objects (gloo).
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from .config import TrainConfig
from .data import Dataset, stratified_folds
from .evaluation import FOLD_WEIGHTS, FoldModel, TestSet, evaluate
from .gallery import mask_gallery
from .train import FoldResult, FoldsHooks, train_folds

log = logging.getLogger(__name__)

METRIC = "iou_mean"
FOLDS_DONE = "folds_done"  # in a trial's last report only (Tune marks any trial's last result "done")
TRAIN_STATE = "train_state_worker{}.pt"


def fold_share(rank: int, folds: int, per_worker: int) -> list[int]:
    """The folds worker `rank` trains: a contiguous share, so that rank order is fold order."""
    return list(range(rank * per_worker, min(folds, (rank + 1) * per_worker)))


def gather(value: Any) -> list:
    """Every worker's value, in rank order (gloo process group set up by TorchTrainer)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def gather_folds(values: list) -> list:
    """Every fold's value, in fold order, from each worker's list for its share."""
    return [v for share in gather(values) for v in share]


class RayFoldHooks(FoldsHooks):
    """Reports the fold-mean IoU at evaluation epochs, with a checkpoint of this worker's folds."""

    def __init__(self, rank: int, config: TrainConfig, restored: list[dict] | None):
        self.rank, self.config, self.restored = rank, config, restored
        self.metrics: list[dict] = []

    def load_checkpoint(self) -> list[dict] | None:
        return self.restored

    def on_epoch(self, epoch: int, metrics: list[dict]) -> None:
        self.metrics = metrics

    def save_checkpoint(self, checkpoints: list[dict]) -> None:
        epoch = checkpoints[0]["epoch"]
        if epoch % self.config.eval_every or epoch >= self.config.epochs:
            return  # the last epoch is reported with the folds' results
        folds = gather_folds(self.metrics)
        report = {"epoch": epoch, METRIC: float(np.mean([f["test_iou"] for f in folds])),
                  "fold_iou": [f["test_iou"] for f in folds],
                  "train_loss_mean": float(np.mean([f["train_loss"] for f in folds])),
                  "train_accuracy_mean": float(np.mean([f["train_accuracy"] for f in folds]))}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(checkpoints, Path(tmp) / TRAIN_STATE.format(self.rank))
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restored_state(rank: int, world: int) -> list[dict] | None:
    """This worker's fold states from the newest checkpoint that holds every worker's states.

    A worker that dies while the workers report leaves the newest checkpoint with
    some states missing; all workers then continue from the one before it.
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
    """Train this worker's share of the trial's k-fold split, then report all folds' results."""
    started = time.time()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop["threads"])
    config = TrainConfig.model_validate(loop["train"])
    device = ray.train.torch.get_device()
    dataset: Dataset = ray.get(loop["dataset"][0])  # object store: fetched once per node
    mine = fold_share(rank, loop["folds"], loop["folds_per_worker"])
    all_cnns = ray.get(loop["cnns"][0]) if loop["cnns"] else None
    cnns = [all_cnns[i] for i in mine] if all_cnns else None
    split = stratified_folds(dataset.labels, loop["folds"], loop["split_seed"])
    splits = [(dataset.subset(split[i][0]), dataset.subset(split[i][1])) for i in mine]
    restored = restored_state(rank, world)
    if restored is not None:
        log.warning("folds %s resume from their checkpoint at epoch %d", mine, restored[0]["epoch"])
    results = train_folds(config, splits, RayFoldHooks(rank, config, restored), device=device,
                          cnns=cnns, cam_kinds=tuple(loop["cam_kinds"]))
    summaries = []
    for i, result in enumerate(results):
        eval_scores = {}
        if loop["eval"]:
            model = FoldModel.of(result, len(dataset.classes)).nca(config).to(device)
            for ref in loop["eval"]:
                other: Dataset = ray.get(ref)
                prepared = TestSet.prepare(other, result.norm_mean, result.norm_std, config.image_size,
                                           cnns[i] if cnns else None, tuple(loop["cam_kinds"]), device)
                ev = evaluate(model, prepared, config, device, {"readout": config.readout})["readout"]
                eval_scores[other.name] = ev.summary()
        summaries.append({"iou": result.iou, "baseline_iou": result.baseline_iou, "accuracy": result.accuracy,
                          "readout_iou": result.readout_iou, "seconds": result.seconds, "eval": eval_scores,
                          "startup_s": started - loop["launched_at"],
                          "resumed_from_epoch": restored[0]["epoch"] if restored else 0})
    folds = gather_folds(summaries)
    with tempfile.TemporaryDirectory() as tmp:
        for fold, result, (train, test) in zip(mine, results, splits):
            write_fold_files(Path(tmp), fold, result, train, test, config, loop["source"], loop["cam_kinds"])
        ray.train.report(trial_metrics(folds, config) if rank == 0 else {},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def write_fold_files(folder: Path, fold: int, result: FoldResult, train: Dataset, test: Dataset,
                     config: TrainConfig, source: dict, cam_kinds: list[str]) -> None:
    """Gallery, weights (NCA and baseline CNNs, with what evaluation needs) and per-image results."""
    ev = result.evaluation
    (folder / f"gallery_fold{fold}.png").write_bytes(
        mask_gallery(test.images, test.masks, ev.responses, ev.masks))
    record = FoldModel.of(result, len(train.classes)).record(config, train.classes, fold, result.test_ids, source,
                                                             cam_kinds)
    torch.save(record, folder / FOLD_WEIGHTS.format(fold))
    (folder / f"fold{fold}.json").write_text(json.dumps({
        "train_ids": list(train.ids), "test_ids": result.test_ids, "iou": ev.iou.tolist(),
        "baseline_iou": {name: v.tolist() for name, v in ev.baseline_iou.items()},
        "history": result.history}))


def trial_metrics(folds: list[dict], config: TrainConfig) -> dict:
    """Fold means: NCA-WSS IoU (the objective), each baseline's IoU on the same images, the lift
    over the best baseline, every read-out variant, and every evaluation dataset."""
    iou = [f["iou"] for f in folds]
    metrics = {
        "epoch": config.epochs, FOLDS_DONE: True,
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
