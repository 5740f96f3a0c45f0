"""Masks for new images: the k fold models' majority vote at each image's own resolution, the
class with its probability, and a label-free quality score with the signals it is drawn from.

Quality score of an image: a fixed function of its signals (quality.py, `combined_quality`).
One of them, stability, comes from the NCA's own randomness: each of the k fold models segments
the image R more times, each run with its own random fire masks (stochastic inference; the
configuration's read-out otherwise: channels, smoothing, orientation, post-processing; masks at
the image's resolution), and stability is the mean IoU over every pair of those k x R masks that
come from two different folds (C(k, 2) x R^2 pairs; both empty counts as 1). Pairs within one
fold are left out, so with fire rate 1, where every run of a fold is the same, it equals the
fold agreement: the mean pairwise IoU of the k masks the folds vote with. A single model: the
mean over pairs of its runs.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ...data import DataError
from ..images import resize_images
from ..readout.pca_otsu import PCAOtsu, masks_at
from ..readout.states import read_chunk, segment_state, stochastic_generators
from ..readout.thresholds import threshold_masks
from ..scoring.ensemble import Ensemble
from ..scoring.metrics import majority_vote
from .quality import (
    QualitySignals,
    colour_agreement,
    combined_quality,
    cross_fold_agreement,
    mask_shape,
    solidity,
)

IMAGE_FORMATS = {"PNG", "BMP", "TIFF", "JPEG", "MPO"}  # MPO: JPEG with extra frames, as cameras write
QUALITY_RUNS = 4  # stochastic runs per fold model for the quality score, by default
QUALITY_SEED = 7919  # offset of the quality runs' generators from the read-out's (seed + 2 + r)


@dataclass(kw_only=True)
class Prediction:
    mask: np.ndarray        # bool, at the image's resolution: the folds' majority vote
    label: int              # argmax of the folds' mean softmax
    probability: float      # that class's mean softmax over the folds
    quality: float          # label-free quality score: the signals' fixed combination (quality.py)
    agreement: float        # mean pairwise IoU of the folds' masks
    signals: QualitySignals | None = None

    @property
    def area(self) -> float:
        return float(self.mask.mean())


def decode_image(data: bytes, name: str, min_side: int) -> tuple[np.ndarray, str | None]:
    """An encoded PNG, BMP, TIFF or JPEG as (H, W, 3) uint8, and a note where it was converted.
    Raises DataError naming `name` and the fault."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt not in IMAGE_FORMATS:
                raise DataError(f"{name}: a {fmt} image, not PNG, BMP, TIFF or JPEG")
            img.load()
            mode = img.mode
            rgb = np.asarray(img.convert("RGB"))
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        kind = "not an image" if isinstance(exc, UnidentifiedImageError) else "corrupt or truncated"
        raise DataError(f"{name}: {kind} ({type(exc).__name__}: {str(exc)[:120]})") from None
    height, width = rgb.shape[:2]
    if min(height, width) < min_side:
        raise DataError(f"{name}: too small ({width}x{height}); the model needs at least {min_side} pixels a side")
    return rgb, conversion_note(name, mode)


def conversion_note(name: str, mode: str) -> str | None:
    if mode == "RGB":
        return None
    gray = mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;")
    what = f"grayscale ({mode})" if gray else mode
    how = "alpha channel dropped" if "A" in mode else "channel repeated" if gray else "converted"
    return f"{name}: {what} image converted to RGB ({how})"


@dataclass(kw_only=True)
class FoldOutputs:
    """What the k fold models give for a chunk of B images: per fold, each image's mask (to vote
    with) and, per image, its R stochastic runs' masks; over the folds, the mean softmax (B, C),
    its top two classes' margin, PC1's variance share, Otsu's separability (B,) and the raw
    masks' solidity (B,)."""
    votes: list[list[np.ndarray]]
    runs: list[list[np.ndarray]]
    probability: torch.Tensor
    margin: torch.Tensor
    pc1_share: torch.Tensor
    separability: torch.Tensor
    raw_solidity: np.ndarray


class Predictor:
    """The k fold models on one device, reading images chunk after chunk. Each fold's generators
    carry on from chunk to chunk, so a run over a dataset in chunks of config.batch_size draws the
    same read-out noise that evaluation draws, and the folds vote with the same masks."""

    def __init__(self, ensemble: Ensemble, device: str | torch.device = "cpu", runs: int = QUALITY_RUNS):
        if runs < 0:
            raise ValueError(f"runs must be >= 0, got {runs}")
        self.ensemble, self.device, self.runs = ensemble, torch.device(device), runs
        config = ensemble.config
        self.models = [fold.nca(config).to(self.device).eval() for fold in ensemble.folds]
        self.generators = [stochastic_generators([config.readout], config, self.device) for _ in self.models]
        self.quality_generators = [torch.Generator(self.device).manual_seed(config.seed + QUALITY_SEED + i)
                                   for i in range(len(self.models))]

    @property
    def batch_size(self) -> int:
        return self.ensemble.config.batch_size

    @torch.inference_mode()
    def chunk(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predictions for up to batch_size (H, W, 3) uint8 images of any sizes."""
        # Two threads beside this one: the threshold masks of the quality score need no NCA and are
        # computed while the folds run, then each image's signals (numpy, which releases the GIL).
        # The pool takes tasks in order, so each threshold task has started before a prediction waits on it.
        with ThreadPoolExecutor(2) as pool:
            thresholds = [pool.submit(threshold_masks, image) for image in images]
            folds = self.fold_outputs(images)
            return list(pool.map(lambda i: self.prediction(i, images[i], folds, thresholds[i].result()),
                                 range(len(images))))

    def fold_outputs(self, images: list[np.ndarray]) -> FoldOutputs:
        """What the k fold models give for a chunk of images."""
        config, readout = self.ensemble.config, self.ensemble.config.readout
        raw = resize_images(images, config.image_size)
        shapes = [image.shape[:2] for image in images]
        votes, probabilities, runs, shares, separabilities, solidities = [], [], [], [], [], []
        for fold, model, generators, quality in zip(self.ensemble.folds, self.models, self.generators,
                                                    self.quality_generators):
            x = fold.normalisation(raw).to(self.device)
            (segment,), (logits,) = read_chunk(model, x, [readout], generators)
            votes.append(masks_at(segment, shapes, readout.post, readout.upsample))
            probabilities.append(logits.float().softmax(1).cpu())
            shares.append(segment.pc1_share.float().cpu())
            separabilities.append(segment.separability.float().cpu())
            solidities.append(raw_solidity(segment))
            if self.runs:
                runs.append(self.quality_masks(model, x, shapes, quality))
        probability = torch.stack(probabilities).mean(0)
        top = probability.topk(min(2, probability.shape[1]), dim=1).values
        return FoldOutputs(votes=votes, runs=runs, probability=probability,
                           margin=top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0],
                           pc1_share=torch.stack(shares).mean(0), separability=torch.stack(separabilities).mean(0),
                           raw_solidity=np.mean(solidities, axis=0))

    def prediction(self, i: int, image: np.ndarray, folds: FoldOutputs,
                   thresholds: dict[str, np.ndarray]) -> Prediction:
        """Image i of the chunk: the folds' vote, class, and quality signals."""
        mask = majority_vote([[v[i]] for v in folds.votes])[0]
        agreement = cross_fold_agreement(np.stack([v[i] for v in folds.votes])[:, None])
        stability = cross_fold_agreement(np.stack([r[i] for r in folds.runs])) if folds.runs else float("nan")
        signals = QualitySignals(stability=stability, fold_agreement=agreement,
                                 colour_agreement=colour_agreement(image, mask, self.ensemble.config.readout.post,
                                                                   thresholds),
                                 pc1_share=float(folds.pc1_share[i]), separability=float(folds.separability[i]),
                                 margin=float(folds.margin[i]), shape=mask_shape(mask),
                                 raw_solidity=float(folds.raw_solidity[i]))
        label = int(folds.probability[i].argmax())
        return Prediction(mask=mask, label=label, probability=float(folds.probability[i, label]),
                          quality=combined_quality(signals), agreement=agreement, signals=signals)

    def quality_masks(self, model, x: torch.Tensor, shapes: list, generator: torch.Generator) -> list[np.ndarray]:
        """Per image, its R stochastic runs' masks as one (R, H, W) array: the R runs of every
        image in one forward pass over the chunk repeated R times."""
        readout = self.ensemble.config.readout
        _, state = model(x.repeat(self.runs, 1, 1, 1), generator=generator)
        # run-major: run r of image i at r * B + i
        masks = masks_at(segment_state(state, readout), shapes * self.runs, readout.post, readout.upsample)
        return [np.stack(masks[i::len(shapes)]) for i in range(len(shapes))]


def raw_solidity(result: PCAOtsu) -> np.ndarray:
    """Per image, the solidity of the read-out's mask before post-processing (at the training
    resolution): the response's high side, which the component choice would hide."""
    raw = (result.response > result.threshold[:, None, None]) & ~result.degenerate[:, None, None]
    return np.array([solidity(m) for m in raw.cpu().numpy()])


def predict(ensemble: Ensemble, images: list[np.ndarray], device: str | torch.device = "cpu",
            runs: int = QUALITY_RUNS) -> list[Prediction]:
    """Masks, classes and quality scores of (H, W, 3) uint8 images (see the module doc)."""
    predictor = Predictor(ensemble, device, runs)
    return [p for start in range(0, len(images), predictor.batch_size)
            for p in predictor.chunk(images[start:start + predictor.batch_size])]
