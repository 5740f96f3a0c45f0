"""The read-out engine: a trained NCA's states for every read-out asked, in chunks, and their
PCA-Otsu results. Read-outs that share a forward pass share its states. Read-outs are handed in
and their results handed back as lists, in the same order."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from ..config import Readout, TrainConfig
from ..nca.model import NCAClassifier
from .pca_otsu import PCAOtsu, pca_otsu


def run_means(model: NCAClassifier, x: torch.Tensor, generators: list,
              wanted: set[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Stochastic runs one after another, run r drawing from generators[r]: for each R in
    `wanted`, the (logits, state) averaged over runs 0..R-1 (running sums: one run in memory)."""
    out, total = {}, None
    for run, generator in enumerate(generators, start=1):
        logits, state = model(x, generator=generator)
        total = (logits, state) if total is None else (total[0] + logits, total[1] + state)
        if run in wanted:
            out[run] = (total[0] / run, total[1] / run)
    return out


def concat(results: list[PCAOtsu]) -> PCAOtsu:
    parts = {f.name: [getattr(r, f.name) for r in results] for f in fields(PCAOtsu)}
    return PCAOtsu(**{name: None if any(t is None for t in ts) else torch.cat(ts) for name, ts in parts.items()})


def read_out(model: NCAClassifier, x: torch.Tensor, readouts: list[Readout], config: TrainConfig,
             device, generators: list[torch.Generator] | None = None) -> tuple[list[PCAOtsu], list[np.ndarray]]:
    """Per read-out, the PCA-Otsu result (on the device) and the class predictions of normalised images x,
    read in fixed chunks of config.batch_size images (the noise does not depend on `runs`). Pass
    `generators` (stochastic_generators) to read a set in several calls: their noise carries on."""
    if generators is None:
        generators = stochastic_generators(readouts, config, device)
    parts = [read_chunk(model, x[start:start + config.batch_size].to(device), readouts, generators)
             for start in range(0, len(x), config.batch_size)]
    return ([concat([p[0][i] for p in parts]) for i in range(len(readouts))],
            [torch.cat([p[1][i].argmax(1).cpu() for p in parts]).numpy() for i in range(len(readouts))])


def stochastic_generators(readouts: list[Readout], config: TrainConfig, device) -> list[torch.Generator]:
    """Run r of every image draws from its own generator (seed + 2 + r), so a read-out of R runs
    averages runs 0..R-1 and gets the same noise whatever else is asked."""
    runs = max((r.runs for r in readouts if r.inference == "stochastic"), default=0)
    return [torch.Generator(device).manual_seed(config.seed + 2 + r) for r in range(runs)]


def read_chunk(model: NCAClassifier, chunk: torch.Tensor, readouts: list[Readout],
               generators: list[torch.Generator]) -> tuple[list[PCAOtsu], list[torch.Tensor]]:
    """Per read-out, the PCA-Otsu result and the logits of one chunk of normalised images. One
    forward pass serves every mean-field read-out, one set of stochastic runs every stochastic one;
    the generators carry on from chunk to chunk."""
    wanted = {r.runs for r in readouts if r.inference == "stochastic"}
    states = {("stochastic", runs): v for runs, v in run_means(model, chunk, generators, wanted).items()}
    if any(r.inference == "mean_field" for r in readouts):
        states["mean_field", 1] = model(chunk, mean_field=True)
    segments, logits = [], []
    for r in readouts:
        chunk_logits, state = states[r.inference, r.runs if r.inference == "stochastic" else 1]
        segments.append(segment_state(state, r))
        logits.append(chunk_logits)
    return segments, logits


def segment_state(state: torch.Tensor, readout: Readout) -> PCAOtsu:
    """PCA-Otsu of NCA states (B, channels, H, W) under a read-out's channels, binarisation,
    standardisation, smoothing and orientation."""
    features = state if readout.channels == "all" else state[:, 3:]
    return pca_otsu(features, binarise=readout.binarise, standardise=readout.standardise, smooth=readout.smooth,
                    orient=readout.orient)
