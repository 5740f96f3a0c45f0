"""The text of a sweep's end: the trial table, its CSV, the per-domain table, the Pareto front,
where the launch went. Rows are trial_rows' dicts of metric names (metrics.py's keys)."""
from __future__ import annotations

import numpy as np

from .metrics import (
    ACCURACY,
    AUTHORS,
    BEST_BASELINE,
    IOU_STD,
    LAUNCH_OVERHEAD,
    LAUNCH_PHASES,
    LIFT,
    MAJORITY,
    METRIC,
    QUALITY,
    WORST_DOMAIN,
    eval_key,
    mean_key,
)
from .space import SweepSpec


def front_lines(spec: SweepSpec, front: list[dict]) -> str:
    """The Pareto front, a line per trial with every objective and the majority rate."""
    def value(row: dict, name: str) -> str:
        fraction = name == ACCURACY or name.endswith(QUALITY)  # scores in 0..1, not IoU in %
        return f"{row[name]:.3f}" if fraction else f"{100 * row[name]:.1f}"

    lines = [f"  trial {r['trial']}: " + ", ".join(f"{o} {value(r, o)}" for o in spec.objectives)
             + f" (majority rate {r[MAJORITY]:.3f})" for r in front]
    return f"\nPareto front of {', '.join(spec.objectives)} ({len(front)} trials, 'pareto' above):\n" + "\n".join(lines)


def table_lines(rows: list[dict], names: list[str], baselines: list[str],
                front: list[dict] | None = None) -> list[list[str]]:
    """Header and one line per trial: searched parameters, IoU in %, each baseline, lift, accuracy,
    overhead, and whether it is on the Pareto `front` (where a sweep has several objectives)."""
    def cell(row: dict, key: str, pattern: str, scale: float = 1.0) -> str:
        return pattern.format(scale * row[key]) if key in row else "-"

    def param(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    on_front = None if front is None else {r["trial"] for r in front}
    lines = [["trial", *names, "IoU", "± std", *baselines, "lift", "accuracy", "launch s", "status",
              *(["pareto"] if on_front is not None else [])]]
    for r in rows:
        pareto = [] if on_front is None else \
            ["-" if r["status"] != "done" else "yes" if r["trial"] in on_front else "no"]
        lines.append([r["trial"], *(param(r["params"].get(n)) for n in names),
                      cell(r, METRIC, "{:.1f}", 100), cell(r, IOU_STD, "{:.1f}", 100),
                      *(cell(r, mean_key(b), "{:.1f}", 100) for b in baselines), cell(r, LIFT, "{:+.1f}", 100),
                      cell(r, ACCURACY, "{:.3f}"), cell(r, LAUNCH_OVERHEAD, "{:.0f}"), r["status"],
                      *pareto])
    return lines


def csv_rows(rows: list[dict], names: list[str], baselines: list[str], front: list[dict] | None = None,
             domains: list[str] = ()) -> list[list]:
    """trials.csv: the table's trials at full precision (parameters as sampled, metrics as
    reported: IoU and accuracy as fractions), for pandas or a spreadsheet, with the per-domain
    table's columns where there are --eval-data `domains`; status last."""
    on_front = None if front is None else {r["trial"] for r in front}
    keys = [METRIC, IOU_STD, *(mean_key(b) for b in baselines), LIFT, ACCURACY, MAJORITY, AUTHORS, LAUNCH_OVERHEAD,
            *domain_columns(domains)]
    lines: list[list] = [["trial", *names, *keys, *(["pareto"] if on_front is not None else []), "status"]]
    for r in rows:
        pareto = [] if on_front is None else [r["status"] == "done" and r["trial"] in on_front]
        lines.append([r["trial"], *(r["params"].get(n, "") for n in names), *(r.get(k, "") for k in keys), *pareto,
                      r["status"]])
    return lines


def domain_columns(names: list[str]) -> list[str]:
    """trials.csv's per-domain keys of the --eval-data sets `names`: the cross-validation's best
    baseline, then per set its IoU, its best baseline's and its quality, and the worst domain's IoU."""
    if not names:
        return []
    return [BEST_BASELINE, *(eval_key(n, k) for n in names for k in (METRIC, BEST_BASELINE, QUALITY)), WORST_DOMAIN]


def domain_lines(rows: list[dict], names: list[str]) -> list[list[str]]:
    """Header and one line per finished trial of `rows`: IoU in % beside that domain's best baseline,
    for the cross-validation and each --eval-data set (`names`) with masks; the quality estimate for
    a set without; the worst domain's IoU."""

    def pair(row: dict, iou: str, best: str) -> str:
        return f"{100 * row[iou]:.1f} / {100 * row[best]:.1f}"

    lines = [["trial", "cross-validation", *names, "worst"]]
    for r in rows:
        cells = [pair(r, eval_key(n, METRIC), eval_key(n, BEST_BASELINE)) if eval_key(n, METRIC) in r
                 else f"quality {r[eval_key(n, QUALITY)]:.3f}" for n in names]
        lines.append([r["trial"], pair(r, METRIC, BEST_BASELINE), *cells, f"{100 * r[WORST_DOMAIN]:.1f}"])
    return lines


def aligned(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def launch_phases(done: list[dict]) -> str:
    """Where the launch went, in means over the finished trials (metrics.LaunchTimes)."""
    parts = [f"{label} {np.mean([r[key] for r in done]):.1f} s" for key, label in LAUNCH_PHASES.items()
             if all(key in r for r in done)]
    return f" ({', '.join(parts)})" if parts else ""
