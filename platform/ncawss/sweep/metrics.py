"""What a trial reports, as typed records, and their one flattening to Tune and MLflow metric names.

A fold worker hands each fold's FoldSummary to rank 0, which reports `trial_metrics` once all
folds are done (and `epoch_metrics` at evaluation epochs). The driver reads results back by
the same key functions, never by parsing names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..method.scores import Scores

METRIC = "iou_mean"          # the objective: fold-mean NCA-WSS IoU
FOLDS_DONE = "folds_done"    # in a trial's last report only (Tune marks any trial's last result "done")
TRIAL_FAILED = "trial_failed"  # the cause, in the one report of a trial that failed with a recurring error
TRAIN_LAUNCHES = "train_launches"  # Ray Train runs the trial's actor launched (1 + retries of lost workers)
# In the first report after a resume: the evaluation epochs' reports made before the checkpoint it
# resumed from, rebuilt from the folds' histories, since those results may have died in flight.
EARLIER = "earlier_reports"
EPOCH_CURVES = (METRIC, "train_loss_mean", "train_accuracy_mean")  # what MLflow logs of each evaluation epoch


def mean_key(name: str) -> str:
    """Fold-mean IoU of NCA-WSS ("iou"), a baseline or a read-out variant."""
    return f"{name}_iou_mean"


def authors_key(name: str = "") -> str:
    """Fold-mean of the authors' metric (64x64, pooled over batches of 32) of the configured
    read-out (no name) or a variant."""
    return f"{name}_iou64_pooled_mean" if name else "iou64_pooled_mean"


def fold_key(fold: int, name: str) -> str:
    """One fold's value: fold_key(0, "iou"), fold_key(1, "intensity_iou"), fold_key(0, "accuracy")."""
    return f"fold{fold}_{name}"


@dataclass(frozen=True)
class LaunchTimes:
    """When (time.time()) each step of a fold worker's launch happened: where a trial's launch
    overhead goes. A process Ray started ahead and handed over shows as created before its use."""
    actor_process: float                 # the trial's actor process was created
    trial: float                         # the trial called TorchTrainer.fit
    worker_process: float                # the fold worker's process was created
    worker: float                        # the train function began (process group set up)
    data: float                          # its folds' data and any checkpoint were in memory

    def phases(self) -> dict[str, float]:
        return {"launch_trial_actor_s": self.trial - self.actor_process,
                "launch_worker_process_s": self.worker_process - self.trial,
                "launch_worker_setup_s": self.worker - self.worker_process,
                "launch_data_s": self.data - self.worker}


@dataclass(frozen=True)
class FoldSummary:
    """One fold's results, as its worker hands them to rank 0."""
    scores: Scores                       # the configured read-out on the fold's test images
    accuracy: float
    majority_accuracy: float             # of always answering the training folds' most common class
    readout_iou: dict[str, float]        # every read-out variant
    readout_iou64: dict[str, float]      # every read-out variant, by the authors' metric
    seconds: float                       # wall time of the batch of folds it trained in
    launch: LaunchTimes
    resumed_from_epoch: int = 0
    eval: dict[str, Scores] = field(default_factory=dict)  # other datasets, by name
    gpu_ids: tuple[int, ...] = ()        # the GPUs Ray assigned its worker


def trial_metrics(folds: list[FoldSummary], epochs: int) -> dict[str, float | bool]:
    """Fold means and per-fold values: NCA-WSS IoU (the objective), each baseline's IoU on the
    same images, the lift over the best baseline, every read-out variant and evaluation dataset."""
    mean = Scores.mean([f.scores for f in folds])
    metrics: dict[str, float | bool] = {
        "epoch": epochs, FOLDS_DONE: True, METRIC: mean.iou, "iou_std": float(np.std(mean.fold_iou)),
        "accuracy_mean": float(np.mean([f.accuracy for f in folds])), authors_key(): mean.iou64_pooled,
        "majority_accuracy_mean": float(np.mean([f.majority_accuracy for f in folds])),
        "launch_overhead_s": max(f.launch.worker - f.launch.trial for f in folds),
        **{k: max(f.launch.phases()[k] for f in folds) for k in folds[0].launch.phases()},
        "resumed_folds": sum(f.resumed_from_epoch > 0 for f in folds),
    }
    for i, f in enumerate(folds):
        metrics.update({fold_key(i, "iou"): f.scores.iou, fold_key(i, "iou64_pooled"): f.scores.iou64_pooled,
                        fold_key(i, "accuracy"): f.accuracy,
                        fold_key(i, "seconds"): f.seconds, fold_key(i, "gpu_id"): f.gpu_ids[0] if f.gpu_ids else -1})
        metrics.update({fold_key(i, f"{b}_iou"): v for b, v in f.scores.baselines.items()})
    for b, value in mean.baselines.items():
        metrics.update({mean_key(b): value, f"{b}_iou_std": float(np.std([f.scores.baselines[b] for f in folds]))})
    metrics["best_baseline_iou_mean"] = mean.baselines[mean.best_baseline]
    metrics["lift"] = mean.lift
    for readout in folds[0].readout_iou:
        metrics[mean_key(readout)] = float(np.mean([f.readout_iou[readout] for f in folds]))
        metrics[authors_key(readout)] = float(np.mean([f.readout_iou64[readout] for f in folds]))
    for name in folds[0].eval:
        metrics.update(Scores.mean([f.eval[name] for f in folds]).metrics(f"eval.{name}."))
    return metrics


def epoch_metrics(epoch: int, folds: list[dict]) -> dict[str, float]:
    """An evaluation epoch's report: the fold-mean test IoU (what ASHA compares) and training curves."""
    # Key order matters: Tune's console table takes its columns from a result's first four metrics.
    return {"epoch": epoch, METRIC: float(np.mean([f["test_iou"] for f in folds])),
            "train_loss_mean": float(np.mean([f["train_loss"] for f in folds])),
            "train_accuracy_mean": float(np.mean([f["train_accuracy"] for f in folds])),
            # every objective a sweep may have, since Tune checks each report for them
            "accuracy_mean": float(np.mean([f["test_accuracy"] for f in folds])),
            authors_key(): float(np.mean([f["test_iou64_pooled"] for f in folds])),
            **{fold_key(i, "iou"): f["test_iou"] for i, f in enumerate(folds)}}


def earlier_reports(histories: list[list[dict]], eval_every: int, epochs: int) -> list[dict]:
    """The evaluation epochs' reports (as `epoch_metrics` made them) up to the last epoch every
    fold's history holds: what a trial resumed from a checkpoint reported before it."""
    if not histories or not eval_every:
        return []
    by_epoch = [{row["epoch"]: row for row in history} for history in histories]
    upto = min(max(rows, default=0) for rows in by_epoch)
    return [epoch_metrics(epoch, [rows[epoch] for rows in by_epoch])
            for epoch in range(eval_every, min(upto, epochs - 1) + 1, eval_every)]


def fold_lines(trial_id: str, result: dict, folds: int, baselines: list[str]) -> list[str]:
    """trial, fold, epoch, IoU beside the best baseline, for each fold of a finished trial."""
    lines = []
    for i in range(folds):
        if fold_key(i, "iou") not in result:
            break
        values = {b: result[fold_key(i, f"{b}_iou")] for b in baselines if fold_key(i, f"{b}_iou") in result}
        best = max(values, key=values.__getitem__, default=None)
        against = f" vs {best} {100 * values[best]:.1f}" if best else ""
        lines.append(f"trial {trial_id} fold {i + 1}/{folds}: epoch {result.get('epoch')}, "
                     f"IoU {100 * result[fold_key(i, 'iou')]:.1f}{against}")
    return lines
