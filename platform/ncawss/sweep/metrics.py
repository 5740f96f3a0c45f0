"""What a trial reports, as typed records, and their one flattening to Tune and MLflow metric names.

A fold worker hands each fold's FoldSummary to rank 0, which reports `trial_metrics` once all
folds are done (and `epoch_metrics` at evaluation epochs). The driver reads results back by
the same key functions, never by parsing names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..method.scoring.scores import PerReadout, Scores, fold_key

METRIC = "iou_mean"          # the objective: fold-mean NCA-WSS IoU
IOU_STD = "iou_std"          # its spread over folds
ACCURACY = "accuracy_mean"   # the classifier's fold-mean test accuracy
MAJORITY = "majority_accuracy_mean"  # of always answering the training folds' most common class
AUTHORS = "iou64_pooled_mean"  # the authors' metric (64x64, pooled over batches of 32), configured read-out
BEST_BASELINE = "best_baseline_iou_mean"  # the best baseline's fold-mean IoU
LIFT = "lift"                # METRIC minus BEST_BASELINE
LAUNCH_OVERHEAD = "launch_overhead_s"  # from the trial's TorchTrainer.fit to its slowest worker's start
QUALITY = "quality_mean"     # an --eval-data set's mean label-free quality (inference/quality.py), fold mean
WORST_DOMAIN = "worst_domain_iou"  # the lowest of METRIC and each masked --eval-data set's fold-mean IoU
FOLDS_DONE = "folds_done"    # in a trial's last report only (Tune marks any trial's last result "done")
TRIAL_FAILED = "trial_failed"  # the cause, in the one report of a trial that failed with a recurring error
BF16_FOLDS = "bf16_folds"    # how many of a trial's folds trained under bf16 (precision: auto decides per worker)
COMPILED_FOLDS = "compiled_folds"  # how many trained torch.compile'd (compile: auto decides per worker)
TRAIN_LAUNCHES = "train_launches"  # Ray Train runs the trial's actor launched (1 + retries of lost workers)
# In the first report after a resume: the evaluation epochs' reports made before the checkpoint it
# resumed from, rebuilt from the folds' histories, since those results may have died in flight.
EARLIER = "earlier_reports"
TRAIN_LOSS, TRAIN_ACCURACY = "train_loss_mean", "train_accuracy_mean"  # fold means at an evaluation epoch
EPOCH_CURVES = (METRIC, TRAIN_LOSS, TRAIN_ACCURACY)  # what MLflow logs of each evaluation epoch


def mean_key(name: str) -> str:
    """Fold-mean IoU of NCA-WSS ("iou"), a baseline or a read-out variant."""
    return f"{name}_iou_mean"


def authors_key(variant: str) -> str:
    """Fold-mean of the authors' metric of a read-out variant (AUTHORS: the configured read-out's)."""
    return f"{variant}_{AUTHORS}"


def eval_key(dataset: str, key: str) -> str:
    """A trial metric of an --eval-data set: eval_key("b", METRIC) is "eval.b.iou_mean"."""
    return f"eval.{dataset}.{key}"


@dataclass(frozen=True, kw_only=True)
class LaunchTimes:
    """When (time.time()) each step of a fold worker's launch happened: where a trial's launch
    overhead goes. A process Ray started ahead and handed over shows as created before its use."""
    actor_process: float                 # the trial's actor process was created
    trial: float                         # the trial called TorchTrainer.fit
    worker_process: float                # the fold worker's process was created
    worker: float                        # the train function began (process group set up)
    data: float                          # its folds' data and any checkpoint were in memory

    def phases(self) -> dict[str, float]:
        """Seconds of each phase, by its metric name (LAUNCH_PHASES)."""
        return dict(zip(LAUNCH_PHASES, (self.worker_process - self.trial, self.worker - self.worker_process,
                                        self.data - self.worker, self.trial - self.actor_process)))


LAUNCH_PHASES = {  # a launch phase's metric name -> how the summary names it, in the summary's order
    "launch_worker_process_s": "worker process",
    "launch_worker_setup_s": "worker setup",
    "launch_data_s": "data",
    "launch_trial_actor_s": "and before it, the trial's actor",
}


@dataclass(frozen=True)
class DomainScores:
    """One fold's model on an --eval-data set: the mean label-free quality of its masks, and where
    the set has masks, its scores beside the baselines'."""
    quality: float
    scores: Scores | None = None


@dataclass(frozen=True, kw_only=True)
class FoldSummary:
    """One fold's results, as its worker hands them to rank 0."""
    scores: PerReadout[Scores]           # the configured read-out and each variant on the fold's test images
    majority_accuracy: float             # of always answering the training folds' most common class
    seconds: float                       # wall time of the batch of folds it trained in
    launch: LaunchTimes
    resumed_from_epoch: int = 0
    eval: dict[str, DomainScores] = field(default_factory=dict)  # the --eval-data sets, by name
    gpu_ids: tuple[int, ...] = ()        # the GPUs Ray assigned its worker
    precision: str = "fp32"              # what its training ran in (the configuration's precision, resolved)
    compiled: bool = False               # whether its training forward pass ran torch.compile'd


def trial_metrics(folds: list[FoldSummary], epochs: int) -> dict[str, float | bool]:
    """Fold means and per-fold values: NCA-WSS IoU (the objective), each baseline's IoU on the
    same images, the lift over the best baseline, every read-out variant and evaluation dataset."""
    mean = Scores.mean([f.scores.configured for f in folds])
    metrics: dict[str, float | bool] = {
        "epoch": epochs, FOLDS_DONE: True, METRIC: mean.iou, IOU_STD: float(np.std(mean.fold_iou)),
        ACCURACY: mean.accuracy, AUTHORS: mean.iou64_pooled,
        MAJORITY: float(np.mean([f.majority_accuracy for f in folds])),
        LAUNCH_OVERHEAD: max(f.launch.worker - f.launch.trial for f in folds),
        **{k: max(f.launch.phases()[k] for f in folds) for k in folds[0].launch.phases()},
        "resumed_folds": sum(f.resumed_from_epoch > 0 for f in folds),
        BF16_FOLDS: sum(f.precision == "bf16" for f in folds), COMPILED_FOLDS: sum(f.compiled for f in folds),
    }
    for i, f in enumerate(folds):
        own = f.scores.configured
        metrics.update({fold_key(i, "iou"): own.iou, fold_key(i, "iou64_pooled"): own.iou64_pooled,
                        fold_key(i, "accuracy"): own.accuracy,
                        fold_key(i, "seconds"): f.seconds, fold_key(i, "gpu_id"): f.gpu_ids[0] if f.gpu_ids else -1})
        metrics.update({fold_key(i, f"{b}_iou"): v for b, v in own.baselines.items()})
    for b, value in mean.baselines.items():
        metrics.update({mean_key(b): value,
                        f"{b}_iou_std": float(np.std([f.scores.configured.baselines[b] for f in folds]))})
    metrics[BEST_BASELINE] = mean.baselines[mean.best_baseline]
    metrics[LIFT] = mean.lift
    for variant in folds[0].scores.variants:
        scores = Scores.mean([f.scores.variants[variant] for f in folds])
        metrics[mean_key(variant)] = scores.iou
        metrics[authors_key(variant)] = scores.iou64_pooled
    metrics.update(domain_metrics(folds, mean.iou))
    return metrics


def domain_metrics(folds: list[FoldSummary], cv_iou: float) -> dict[str, float]:
    """Per --eval-data set, fold means: quality, and where it has masks IoU, each baseline's, the
    best baseline's, lift and the authors' metric; and the worst domain's IoU, the cross-validation's
    (`cv_iou`) included."""
    metrics, domains = {}, [cv_iou]
    for name in folds[0].eval:
        metrics[eval_key(name, QUALITY)] = float(np.mean([f.eval[name].quality for f in folds]))
        if folds[0].eval[name].scores is None:
            continue
        mean = Scores.mean([f.eval[name].scores for f in folds])
        metrics.update({eval_key(name, METRIC): mean.iou, eval_key(name, LIFT): mean.lift,
                        eval_key(name, BEST_BASELINE): mean.baselines[mean.best_baseline],
                        eval_key(name, AUTHORS): mean.iou64_pooled,
                        **{eval_key(name, mean_key(b)): v for b, v in mean.baselines.items()}})
        domains.append(mean.iou)
    if folds[0].eval:
        metrics[WORST_DOMAIN] = min(domains)
    return metrics


def epoch_metrics(epoch: int, folds: list[dict], objectives: tuple[str, ...] = ()) -> dict[str, float]:
    """An evaluation epoch's report: the fold-mean test IoU (what ASHA compares) and training curves;
    `objectives` known only when the folds are done (eval sets, worst domain) as NaN placeholders,
    since Tune checks every report for every objective (their searcher takes no intermediate result)."""
    # Key order matters: Tune's console table takes its columns from a result's first four metrics.
    report = {"epoch": epoch, METRIC: float(np.mean([f["test_iou"] for f in folds])),
            TRAIN_LOSS: float(np.mean([f["train_loss"] for f in folds])),
            TRAIN_ACCURACY: float(np.mean([f["train_accuracy"] for f in folds])),
            # every objective a sweep may have, since Tune checks each report for them
            ACCURACY: float(np.mean([f["test_accuracy"] for f in folds])),
            AUTHORS: float(np.mean([f["test_iou64_pooled"] for f in folds])),
            **{fold_key(i, "iou"): f["test_iou"] for i, f in enumerate(folds)}}
    return {**report, **{o: float("nan") for o in objectives if o not in report}}


def earlier_reports(histories: list[list[dict]], eval_every: int, epochs: int,
                    objectives: tuple[str, ...] = ()) -> list[dict]:
    """The evaluation epochs' reports (as `epoch_metrics` made them) up to the last epoch every
    fold's history holds: what a trial resumed from a checkpoint reported before it."""
    if not histories or not eval_every:
        return []
    by_epoch = [{row["epoch"]: row for row in history} for history in histories]
    upto = min(max(rows, default=0) for rows in by_epoch)
    return [epoch_metrics(epoch, [rows[epoch] for rows in by_epoch], objectives)
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
