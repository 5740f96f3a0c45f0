"""The end of a sweep: the trial table, best_config.yaml, best_model/, the holdout score of the
best configuration, Optuna's figures, and the MLflow parent run's closing metrics and files."""
from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import optuna
import pyarrow.fs as pafs
from ray import tune

from ..data import Dataset
from ..method.scoring.ensemble import Ensemble, score_dataset
from ..method.scoring.scores import HINDSIGHT, Scores
from ..tracking.tracker import SweepTracker
from .metrics import (
    ACCURACY,
    BF16_FOLDS,
    COMPILED_FOLDS,
    IOU_STD,
    LAUNCH_OVERHEAD,
    LIFT,
    MAJORITY,
    METRIC,
    mean_key,
)
from .space import Param, SweepSpec
from .status import trial_status
from .tables import aligned, csv_rows, domain_lines, front_lines, launch_phases, table_lines

log = logging.getLogger(__name__)

PARETO_TAG = "ncawss.pareto"  # on a trial run: "true" / "false"; on the parent run: the front's trial ids


def trial_rows(results: tune.ResultGrid) -> list[dict]:
    """One row per trial, finished ones first by fold-mean IoU."""
    rows = []
    for result in results:
        # NaN: placeholders of objectives a trial reports once its folds are done, or a failed trial's
        metrics = {k: v for k, v in (result.metrics or {}).items() if not (isinstance(v, float) and math.isnan(v))}
        rows.append({**metrics, "trial": metrics.get("trial_id", "?"), "params": dict(result.config or {}),
                     "status": trial_status(metrics, result.error)})
    return sorted(rows, key=lambda r: (r["status"] != "done", -r.get(METRIC, -1.0)))


def was_interrupted(results: tune.ResultGrid) -> bool:
    """Whether the sweep was stopped (Ctrl-C) while trials ran: `--resume` continues them."""
    return any(trial_status(r.metrics or {}, r.error).startswith("interrupted") for r in results)


def optuna_figures(spec: SweepSpec, rows: list[dict]) -> dict[str, bytes]:
    """Optuna's parameter-importance and parallel-coordinate plots of the finished trials (of the
    IoU), and the Pareto front's plot where the sweep has several objectives."""
    import matplotlib
    matplotlib.use("Agg")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def distribution(p: Param):
        if p.type == "choice":
            return CategoricalDistribution(p.values)
        cls = IntDistribution if p.type == "int" else FloatDistribution
        return cls(int(p.low) if p.type == "int" else p.low, int(p.high) if p.type == "int" else p.high, log=p.log)

    def study(objectives: list[str]) -> optuna.Study:
        made = optuna.create_study(directions=["maximize"] * len(objectives))
        for row in done:
            made.add_trial(optuna.trial.create_trial(params={k: row["params"][k] for k in dists}, distributions=dists,
                                                     values=[row[o] for o in objectives]))
        return made

    done = [r for r in rows if r["status"] == "done"]
    if not spec.search or len(done) < 2:
        return {}
    dists = {k: distribution(p) for k, p in spec.search.items()}
    iou = study([METRIC])
    plots = {"param_importances.png": lambda: optuna.visualization.matplotlib.plot_param_importances(iou),
             "parallel_coordinate.png": lambda: optuna.visualization.matplotlib.plot_parallel_coordinate(iou)}
    if spec.multi_objective:
        plots["pareto_front.png"] = lambda: optuna.visualization.matplotlib.plot_pareto_front(
            study(spec.objectives), target_names=spec.objectives)
    figures = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # "experimental" notices and degenerate-axis remarks
                warnings.simplefilter("ignore")
                axes = plot()
            buffer = io.BytesIO()
            axes.figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
            figures[name] = buffer.getvalue()
        except Exception as exc:  # e.g. importances of parameters that never varied
            log.warning("optuna figure %s not made: %s", name, exc)
    return figures


def pareto_front(rows: list[dict], objectives: list[str]) -> list[dict]:
    """The finished trials that no other finished trial matches or beats on every objective
    while beating them on one (all maximised), in the rows' order."""
    done = [r for r in rows if r["status"] == "done"]

    def dominates(a: dict, b: dict) -> bool:
        return all(a[o] >= b[o] for o in objectives) and any(a[o] > b[o] for o in objectives)

    return [r for r in done if not any(dominates(other, r) for other in done)]


def select_best(spec: SweepSpec, done: list[dict]) -> tuple[dict, str]:
    """The trial a sweep registers and scores on the holdout, and why. One objective: the highest.
    Several: among Pareto trials whose accuracy beats the majority rate by the margin, the highest
    first objective; where none does, the highest first objective on the front."""
    first = spec.objectives[0]
    if not spec.multi_objective:
        return max(done, key=lambda r: r[first]), f"highest {first}"
    front = pareto_front(done, spec.objectives)
    margin = spec.select.accuracy_margin
    useful = [r for r in front if r[ACCURACY] >= r[MAJORITY] + margin]
    if useful:
        return max(useful, key=lambda r: r[first]), \
            f"highest {first} on the Pareto front among trials whose accuracy beats the majority rate by {margin:g}"
    return max(front, key=lambda r: r[first]), \
        f"highest {first} on the Pareto front: no trial on it beats the majority rate by {margin:g} in accuracy"


def copy_checkpoint(checkpoint_path: str, destination: Path) -> Path:
    """A trial's last checkpoint (fold weights, results, galleries) copied to a local folder."""
    filesystem, path = pafs.FileSystem.from_uri(checkpoint_path) if "://" in checkpoint_path \
        else (pafs.LocalFileSystem(), checkpoint_path)
    destination.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(destination), source_filesystem=filesystem,
                    destination_filesystem=pafs.LocalFileSystem())
    return destination


def score_holdout(spec: SweepSpec, model_dir: Path, holdout: Dataset) -> Scores:
    """The best configuration's k fold models on the held-out images, beside every baseline."""
    return score_dataset(Ensemble.load(model_dir), holdout, cam_kinds=spec.cam_kinds).configured


def summarise(spec: SweepSpec, results: tune.ResultGrid, tracker: SweepTracker, output: Path,
              holdout: Dataset | None = None, example: bytes | None = None, domains: list[str] = ()) -> str:
    """Write best_config.yaml, trials.csv and best_model/, score the best configuration on the
    holdout, log and register its fold ensemble as an MLflow model (`example`: an encoded input
    image), close the MLflow parent run; return the summary text. `domains`: the names of the
    --eval-data sets the trials were scored on (the per-domain table)."""
    import yaml

    rows = trial_rows(results)
    done = [r for r in rows if r["status"] == "done"]
    baselines = [b for b in spec.baseline_names if any(mean_key(b) in r for r in rows)]
    front = pareto_front(rows, spec.objectives) if spec.multi_objective else None
    table = aligned(table_lines(rows, sorted(spec.search), baselines, front))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(  # quoted: a failure's cause may hold commas
        csv_rows(rows, sorted(spec.search), baselines, front, domains))
    (output / "trials.csv").write_text(buffer.getvalue())
    files: dict[str, str | bytes] = {"trials.csv": buffer.getvalue(), **optuna_figures(spec, rows)}
    metrics = {"trials_done": len(done), "trials_total": len(rows)}
    tags: dict[str, str] = {"ncawss.status": "finished"}
    model_id = None
    text = (f"\n{len(done)} of {len(rows)} trials finished (IoU in %, at the ground truth's resolution, "
            f"every baseline on the same test images; {HINDSIGHT})\n{table}")
    if domains and done:
        text += ("\n\nIoU per domain (%, NCA-WSS / that domain's best baseline; each fold's model alone, fold "
                 "mean; quality: the label-free estimate where a set has no masks):\n"
                 + aligned(domain_lines(done, domains)))
    stopped = [r for r in rows if r["status"].startswith("stopped early")]
    if stopped:
        text += ("\nstopped early by the scheduler (ASHA): "
                 + ", ".join(f"trial {r['trial']} at epoch {r.get('epoch', '?')}" for r in stopped))
    metrics["trials_stopped_early"] = len(stopped)
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        text += ("\nfailed (a recurring error at once, a lost worker, actor or node once out of retries): "
                 + "; ".join(f"trial {r['trial']}: {r['status']}" for r in failed))
    metrics["trials_failed"] = len(failed)
    interrupted = [r for r in rows if r["status"].startswith("interrupted")]
    if interrupted:
        text += ("\ninterrupted (the sweep was stopped): "
                 + ", ".join(f"trial {r['trial']} {r['status'].removeprefix('interrupted ')}" for r in interrupted)
                 + f"; continue them with: python jobs/cv_sweep.py --resume --output {output}")
        tags["ncawss.status"] = "interrupted"
    metrics["trials_interrupted"] = len(interrupted)
    if front is not None:
        text += front_lines(spec, front)
        metrics["pareto_size"] = len(front)
        on_front = {r["trial"] for r in front}
        tracker.tag_trials({r["trial"]: {PARETO_TAG: str(r["trial"] in on_front).lower()} for r in done})
        tags[PARETO_TAG] = ",".join(r["trial"] for r in front)
    if done:
        best, rule = select_best(spec, done)
        config = spec.train_config(best["params"])
        best_yaml = yaml.safe_dump({**config.model_dump(), "betas": list(config.betas)}, sort_keys=False)
        (output / "best_config.yaml").write_text(best_yaml)
        files["best_config.yaml"] = best_yaml
        overheads = [r[LAUNCH_OVERHEAD] for r in done]
        best_keys = (METRIC, IOU_STD, LIFT, ACCURACY, MAJORITY)
        metrics.update({f"best_{k}": best[k] for k in best_keys})
        metrics.update({f"best_{mean_key(b)}": best[mean_key(b)] for b in baselines})
        metrics["launch_overhead_mean_s"] = float(np.mean(overheads))
        against = ", ".join(f"{b} {100 * best[mean_key(b)]:.1f}" for b in baselines)
        optimistic = "optimistic" if holdout is not None and len(holdout) else \
            "optimistic, and with no holdout it is also the only number"
        tags["ncawss.best_trial"] = best["trial"]
        heading = f"best ({rule})" if spec.multi_objective else "best"
        text += (f"\n\n{heading}: trial {best['trial']} {best['params']}: cross-validation IoU "
                 f"{100 * best[METRIC]:.1f} ± {100 * best[IOU_STD]:.1f} vs {against} "
                 f"(lift {100 * best[LIFT]:+.1f}); "
                 f"chosen on the same folds it is scored on, so {optimistic}")
        if interrupted:
            text += "\n(registered and scored on the holdout when the sweep, resumed, ends)"
        elif best.get("checkpoint_path"):
            model_dir = copy_checkpoint(best["checkpoint_path"], output / "best_model")
            if example is not None:
                registered = tracker.register_model(model_dir, example, config.model_dump())
                model_id = registered.model_id
                text += (f"\nregistered model: {registered.uri} (jobs/predict.py --model {registered.uri}), "
                         f"logged model models:/{model_id}")
            if holdout is not None and len(holdout):
                scores = score_holdout(spec, model_dir, holdout)
                metrics.update({**scores.metrics("holdout_"), **scores.fold_metrics("holdout_")})
                text += (f"\nheld-out test ({len(holdout)} images never seen by the search), majority vote of the "
                         f"{spec.folds} fold models: IoU {100 * scores.iou:.1f} vs "
                         + ", ".join(f"{b} {100 * scores.baselines[b]:.1f}" for b in baselines)
                         + f" (lift {100 * scores.lift:+.1f}); folds alone: "
                         + ", ".join(f"{100 * v:.1f}" for v in scores.fold_iou))
        text += (f"\nthe best trial's folds trained in {precision_line(best, spec.folds)} (precision: "
                 f"{config.precision}, compile: {config.compile})")
        text += (f"\nRay Train launch overhead per trial (paid once for all {spec.folds} folds): "
                 f"mean {np.mean(overheads):.1f} s, max {np.max(overheads):.1f} s{launch_phases(done)}")
    tracker.finish_sweep(metrics, files, tags, model_id, "KILLED" if interrupted else "FINISHED")
    return text


def precision_line(result: dict, folds: int) -> str:
    """How a trial's folds trained, e.g. 'bf16, not compiled' or 'bf16 in 2 of 5 folds, fp32, compiled in 5
    of 5 folds' (the workers of one trial may run on different machines)."""
    bf16, compiled = int(result.get(BF16_FOLDS, 0)), int(result.get(COMPILED_FOLDS, 0))
    precision = "fp32" if not bf16 else "bf16" if bf16 == folds else f"bf16 in {bf16} of {folds} folds, fp32"
    return precision + (", not compiled" if not compiled else f", compiled in {compiled} of {folds} folds")
