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

import psutil
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ..method.config import TrainConfig
from ..method.images import TrainingImages
from ..method.inference.domain import fold_on_dataset
from ..method.inference.gallery import mask_gallery
from ..method.prepared import PreparedSet, TestFold
from ..method.scoring.folds import FoldRecord
from ..method.scoring.scores import majority_accuracy
from ..method.train import FoldResult, TrainingHooks, train_folds
from .metrics import (
    EARLIER,
    TRAIN_LAUNCHES,
    DomainScores,
    FoldSummary,
    LaunchTimes,
    earlier_reports,
    epoch_metrics,
    trial_metrics,
)
from .plan import GALLERY_ROWS, TrialPlan

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state_worker{}.pt"


def gather(value: Any) -> list:
    """Every worker's value, in rank order (gloo process group set up by TorchTrainer)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def gather_folds(values: list) -> list:
    """Every fold's value, in fold order, from each worker's list for its share."""
    return [v for share in gather(values) for v in share]


class RayFoldHooks(TrainingHooks):
    """Reports the fold-mean IoU at evaluation epochs, with a checkpoint of this worker's folds.

    `earlier`: the reports made before the checkpoint this run resumed from; the first report
    carries them (metrics.EARLIER), so that the driver can log those that never reached it."""

    def __init__(self, rank: int, config: TrainConfig, restored: list[dict] | None, earlier: list[dict],
                 objectives: tuple[str, ...] = ()):
        self.rank, self.config, self.restored, self.earlier = rank, config, restored, earlier
        self.objectives = objectives
        self.metrics: list[dict] = []

    def carry_earlier(self, report: dict) -> dict:
        """The report, with the earlier reports if it is this run's first."""
        earlier, self.earlier = self.earlier, []
        return {**report, EARLIER: earlier} if earlier else report

    def load_checkpoint(self) -> list[dict] | None:
        return self.restored

    def on_epoch(self, epoch: int, metrics: list[dict]) -> None:
        self.metrics = metrics

    def save_checkpoint(self, checkpoints: list[dict]) -> None:
        epoch = checkpoints[0]["epoch"]
        if epoch % self.config.eval_every or epoch >= self.config.epochs:
            return  # the last epoch is reported with the folds' results
        report = self.carry_earlier(epoch_metrics(epoch, gather_folds(self.metrics), self.objectives))
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


def fold_worker(plan: TrialPlan) -> None:
    """Train this worker's share of the trial's k-fold split, then report all folds' results."""
    started = time.time()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(plan.threads)
    config = plan.config
    gpu_ids = [int(i) for i in ray.get_gpu_ids()]  # what Ray assigned this worker, whatever trains where
    device = torch.device(plan.device) if plan.device else ray.train.torch.get_device()
    dataset: PreparedSet = ray.get(plan.data.dataset)  # object store: shared by the node's workers, not copied
    mine = plan.share(rank)
    all_cnns = ray.get(plan.data.cnns) if plan.data.cnns is not None else None
    cnns = [all_cnns[i] for i in mine] if all_cnns else None
    splits = [(dataset.training(plan.data.splits[i][0], config.image_size),
               dataset.test_fold(plan.data.splits[i][1]).scored()) for i in mine]
    restored = restored_state(rank, world)
    histories = gather_folds([checkpoint["history"] for checkpoint in restored or []])
    earlier = earlier_reports(histories, config.eval_every, config.epochs, plan.objectives)
    hooks = RayFoldHooks(rank, config, restored, earlier, plan.objectives)
    launch = LaunchTimes(actor_process=plan.actor_started_at, trial=plan.launched_at,
                         worker_process=psutil.Process().create_time(), worker=started, data=time.time())
    if restored is not None:
        log.warning("folds %s resume from their checkpoint at epoch %d", mine, restored[0]["epoch"])
    results = train_folds(config, splits, hooks, device=device, cnns=cnns, cam_kinds=plan.cam_kinds)
    execution = results[0].execution
    placement = {"device": str(device), "gpu_ids": gpu_ids, "precision": execution.precision,
                 "compiled": execution.compiled}
    summaries = [FoldSummary(scores=result.evaluations.map(lambda e: e.scores),
                             majority_accuracy=majority_accuracy(train.labels, test.labels), seconds=result.seconds,
                             launch=launch, resumed_from_epoch=restored[0]["epoch"] if restored else 0,
                             eval=eval_scores(plan, result, train.classes, device), gpu_ids=tuple(gpu_ids),
                             precision=execution.precision, compiled=execution.compiled)
                 for result, (train, test) in zip(results, splits)]
    folds = gather_folds(summaries)
    with tempfile.TemporaryDirectory() as tmp:
        for fold, result, (train, test) in zip(mine, results, splits):
            write_fold_files(Path(tmp), fold, result, train, test, plan, placement)
        metrics = hooks.carry_earlier({**trial_metrics(folds, config.epochs), TRAIN_LAUNCHES: plan.launch}) \
            if rank == 0 else {}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def eval_scores(plan: TrialPlan, result: FoldResult, classes: list[str], device) -> dict[str, DomainScores]:
    """The fold's model on each --eval-data dataset, by name: the mean quality of its masks (no
    stochastic runs), and where the set has masks, its IoU beside the baselines'. Each set is
    fetched and decoded a chunk at a time."""
    scores = {}
    for shared in plan.data.eval_sets:
        chunks = (ray.get(ref).decode() for ref in shared.chunks)
        scores[shared.name] = DomainScores(*fold_on_dataset(plan.config, result.model, classes, chunks, device,
                                                            plan.cam_kinds))
    return scores


def write_fold_files(folder: Path, fold: int, result: FoldResult, train: TrainingImages, test: TestFold,
                     plan: TrialPlan, placement: dict) -> None:
    """Gallery, weights (NCA and baseline CNNs, with what evaluation needs), per-image results and
    where the fold trained (`placement`: the torch device and the GPU ids Ray assigned)."""
    ev = result.evaluation
    images, masks = test.shown(GALLERY_ROWS)
    (folder / f"gallery_fold{fold}.png").write_bytes(mask_gallery(images, masks, ev.responses, ev.masks))
    FoldRecord(model=result.model, config=plan.config, classes=train.classes, fold=fold, test_ids=result.test_ids,
               source=plan.data.source, cam_kinds=plan.cam_kinds).save(folder)
    (folder / f"fold{fold}.json").write_text(json.dumps({
        "train_ids": list(train.ids), "test_ids": result.test_ids, "iou": ev.image_iou.tolist(),
        "baseline_iou": {name: v.tolist() for name, v in ev.baseline_image_iou.items()},
        "history": result.history, **placement}))
