"""One fold of NCA-WSS start to end, its CAM baselines, and sequential k-fold cross-validation."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .baselines import CNN_WIDTHS, CNNClassifier, cam_maps
from .config import Readout, TrainConfig
from .data import Dataset, stratified_folds
from .nca import NCAClassifier, focal_loss
from .segment import PCAOtsu, iou, intensity_baseline, masks_at, pca_otsu, post_process, read_response

log = logging.getLogger(__name__)

# TrainConfig fields a CNN baseline's training uses: its cache key, never the NCA's settings.
CNN_SETTINGS = ("epochs", "batch_size", "lr", "betas", "lr_decay", "focal_gamma", "image_size", "augment", "seed")


class FoldHooks:
    """Callbacks of train_fold; subclass and override what you need."""

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        """Called after each epoch (1-based) with its training (and evaluation) metrics."""

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Called after each epoch with a self-contained checkpoint (a copy, safe to keep)."""

    def load_checkpoint(self) -> dict | None:
        """Called once at the start: a checkpoint to continue from, or None."""
        return None


@dataclass
class Evaluation:
    """One read-out of a fold's model on its test images, and the baselines' masks on the same images."""
    accuracy: float
    iou: np.ndarray                    # per test image, at the ground truth's resolution
    baseline_iou: dict[str, np.ndarray]  # per baseline (intensity, gradcam, ...), same images and target
    predictions: np.ndarray
    masks: list[np.ndarray]            # NCA-WSS masks at the ground truth's resolution
    baseline_masks: dict[str, list[np.ndarray]]
    responses: np.ndarray              # (N, S, S) oriented response at training resolution
    degenerate: int

    def summary(self) -> dict[str, float]:
        """Mean IoU of NCA-WSS and of each baseline, and the lift over the best baseline."""
        out = {"iou": float(self.iou.mean())}
        out.update({f"{name}_iou": float(v.mean()) for name, v in self.baseline_iou.items()})
        out["lift"] = out["iou"] - max(float(v.mean()) for v in self.baseline_iou.values())
        return out


@dataclass
class FoldResult:
    accuracy: float
    iou: float                          # configured read-out
    baseline_iou: dict[str, float]      # each baseline under the configured read-out's target and post
    readout_iou: dict[str, float]       # mean IoU of every read-out variant of the same weights
    evaluations: dict[str, Evaluation]  # "readout" (the configured one) and every variant
    test_ids: list[str]
    history: list[dict]
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    epochs: int
    seconds: float
    cnns: dict[str, CNNBaseline] | None = None  # the fold's CAM baseline CNNs, where trained

    @property
    def evaluation(self) -> Evaluation:
        return self.evaluations["readout"]

    @property
    def lift(self) -> float:
        """IoU minus the best baseline's IoU on the same images."""
        return self.iou - max(self.baseline_iou.values())


@dataclass
class CVResult:
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def fold_iou(self) -> list[float]:
        return [f.iou for f in self.folds]

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.fold_iou))

    @property
    def std_iou(self) -> float:
        return float(np.std(self.fold_iou))

    def baseline(self, name: str = "intensity") -> tuple[float, float]:
        """(mean, std) over folds of a baseline's IoU."""
        values = [f.baseline_iou[name] for f in self.folds]
        return float(np.mean(values)), float(np.std(values))

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean([f.accuracy for f in self.folds]))


def resize_images(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (H, W, 3) images of any size -> float (N, 3, size, size) in [0, 1], antialiased."""
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation in [0, 360) degrees and random horizontal/vertical flips, one resampling."""
    b = x.shape[0]
    angle = torch.rand(b, generator=generator) * 2 * math.pi
    flip = torch.randint(0, 2, (b, 2), generator=generator) * 2 - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip[:, 0], -sin * flip[:, 1]
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip[:, 0], cos * flip[:, 1]
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def build_model(config: TrainConfig, n_classes: int) -> NCAClassifier:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        return NCAClassifier(config.channels, config.hidden, config.steps, config.fire_rate,
                             n_classes, config.head_hidden)


def normalised_training_set(train: Dataset, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resized training images normalised by their own channel mean/std (the training fold's only)."""
    if train.labels is None or (train.labels < 0).any():
        raise ValueError(f"{train.name}: every training image needs a label")
    raw = resize_images(train.images, size)
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return normalise(raw, mean, std), mean, std


def normalise(raw: torch.Tensor, mean, std) -> torch.Tensor:
    mean, std = torch.as_tensor(mean, dtype=raw.dtype), torch.as_tensor(std, dtype=raw.dtype)
    return (raw - mean[:, None, None]) / std[:, None, None]


def make_optimiser(model: torch.nn.Module, config: TrainConfig):
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    return optimiser, torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)


def train_fold(config: TrainConfig, train: Dataset, test: Dataset, hooks: FoldHooks | None = None,
               device: str | torch.device = "cpu", cnns: dict[str, CNNBaseline] | None = None,
               cam_kinds: tuple[str, ...] = ()) -> FoldResult:
    """Train NCA-WSS on `train` (image labels only), evaluate every read-out on `test` beside the
    baselines (intensity, and `cam_kinds` of the fold's trained `cnns`). Deterministic given config.seed."""
    hooks = hooks or FoldHooks()
    started = time.perf_counter()
    x_train, mean, std = normalised_training_set(train, config.image_size)
    x_train = x_train.to(device)
    y_train = torch.as_tensor(train.labels, dtype=torch.long, device=device)
    test_set = TestSet.prepare(test, mean, std, config.image_size, cnns, cam_kinds, device)

    model = build_model(config, len(train.classes)).to(device)
    optimiser, scheduler = make_optimiser(model, config)
    sample_gen = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
    fire_gen = torch.Generator(device).manual_seed(config.seed + 1)  # fire masks
    history: list[dict] = []
    start_epoch = 0
    checkpoint = hooks.load_checkpoint()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        sample_gen.set_state(checkpoint["sample_rng"])
        fire_gen.set_state(checkpoint["fire_rng"])
        history, start_epoch = list(checkpoint["history"]), checkpoint["epoch"]
        log.info("resuming fold from epoch %d", start_epoch)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        metrics = train_epoch(model, optimiser, scheduler, x_train, y_train, config, sample_gen, fire_gen)
        metrics["epoch"] = epoch
        if config.eval_every and epoch % config.eval_every == 0 and epoch < config.epochs:
            ev = evaluate(model, test_set, config, device, {"readout": config.readout})["readout"]
            metrics.update(test_accuracy=ev.accuracy, test_iou=float(ev.iou.mean()))
        history.append(metrics)
        log.info("epoch %d/%d %s", epoch, config.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        hooks.on_epoch(epoch, metrics)
        hooks.save_checkpoint(copy.deepcopy({
            "epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "sample_rng": sample_gen.get_state(),
            "fire_rng": fire_gen.get_state(), "history": history}))

    evaluations = evaluate(model, test_set, config, device)
    ev = evaluations["readout"]
    return FoldResult(
        accuracy=ev.accuracy, iou=float(ev.iou.mean()),
        baseline_iou={name: float(v.mean()) for name, v in ev.baseline_iou.items()},
        readout_iou={name: float(e.iou.mean()) for name, e in evaluations.items() if name != "readout"},
        evaluations=evaluations, test_ids=list(test.ids), history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        norm_mean=mean.tolist(), norm_std=std.tolist(), epochs=config.epochs,
        seconds=time.perf_counter() - started, cnns=cnns)


def train_epoch(model, optimiser, scheduler, x, y, config: TrainConfig, sample_gen, fire_gen) -> dict:
    model.train()
    order = torch.randperm(len(x), generator=sample_gen).to(x.device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), config.batch_size):
        idx = order[start:start + config.batch_size]
        batch = augment(x[idx], sample_gen) if config.augment else x[idx]
        logits, _ = model(batch, generator=fire_gen)
        loss = focal_loss(logits, y[idx], config.focal_gamma)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y[idx]).sum())
    return {"train_loss": total_loss / len(x), "train_accuracy": correct / len(x),
            "lr": scheduler.get_last_lr()[0]}


# --- CAM baselines ------------------------------------------------------------

@dataclass
class CNNBaseline:
    """A CAM baseline's CNN trained on one fold: what evaluation on any images needs."""
    size: str                 # a key of CNN_WIDTHS
    n_classes: int
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    seconds: float = 0.0

    def model(self) -> CNNClassifier:
        model = CNNClassifier(CNN_WIDTHS[self.size], self.n_classes)
        model.load_state_dict(self.state_dict)
        return model


def cnn_settings(config: TrainConfig) -> dict:
    """The training options a CNN baseline depends on (never NCA hyperparameters)."""
    return {key: getattr(config, key) for key in CNN_SETTINGS}


def train_cnn(config: TrainConfig, train: Dataset, size: str = "small",
              device: str | torch.device = "cpu") -> CNNBaseline:
    """Train a CAM baseline CNN like the NCA: same labels, loss, augmentation, optimiser, epochs."""
    started = time.perf_counter()
    x, mean, std = normalised_training_set(train, config.image_size)
    x, y = x.to(device), torch.as_tensor(train.labels, dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = CNNClassifier(CNN_WIDTHS[size], len(train.classes)).to(device)
    optimiser, scheduler = make_optimiser(model, config)
    sample_gen = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        metrics = train_epoch(model, optimiser, scheduler, x, y, config, sample_gen, None)
        log.debug("cnn %s epoch %d/%d loss %.4f", size, epoch, config.epochs, metrics["train_loss"])
    log.info("cnn %s: %d epochs, train accuracy %.3f", size, config.epochs, metrics["train_accuracy"])
    return CNNBaseline(size, len(train.classes), {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                       mean.tolist(), std.tolist(), time.perf_counter() - started)


def baseline_name(kind: str, size: str) -> str:
    return kind if size == "small" else f"{kind}_{size}"


# --- evaluation ---------------------------------------------------------------

@dataclass
class TestSet:
    """Images prepared once for evaluation: normalised at the training resolution, baselines' inputs."""
    dataset: Dataset
    x: torch.Tensor                     # (N, 3, S, S), normalised with the training fold's statistics
    intensity: list[np.ndarray]         # intensity baseline masks at the images' resolution
    cams: dict[str, torch.Tensor]       # baseline name (gradcam, eigencam_large, ...) -> its maps
    # Baseline masks per (smooth, orient, post): they never change while the NCA trains.
    baseline_cache: dict[tuple, dict[str, list[np.ndarray]]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, dataset: Dataset, mean, std, size: int, cnns: dict[str, CNNBaseline] | None = None,
                cam_kinds: tuple[str, ...] = (), device: str | torch.device = "cpu") -> TestSet:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: evaluation needs ground-truth masks")
        raw = resize_images(dataset.images, size)
        cams = {}
        for cnn in (cnns or {}).values():
            maps = cam_maps(cnn.model().to(device), normalise(raw, cnn.norm_mean, cnn.norm_std).to(device))
            cams.update({baseline_name(kind, cnn.size): getattr(maps, kind) for kind in cam_kinds})
        return cls(dataset, normalise(raw, mean, std), [intensity_baseline(im) for im in dataset.images], cams)


def read_state(model: NCAClassifier, x: torch.Tensor, readout: Readout, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, state) of one read-out's forward pass; `runs` stochastic runs are batched and averaged."""
    mean_field = readout.inference == "mean_field"
    runs = 1 if mean_field else readout.runs
    logits, state = model(x.repeat(runs, 1, 1, 1), generator=generator, mean_field=mean_field)
    if runs > 1:
        logits = logits.view(runs, len(x), -1).mean(0)
        state = state.view(runs, len(x), *state.shape[1:]).mean(0)
    return logits, state


def concat(results: list[PCAOtsu]) -> PCAOtsu:
    return PCAOtsu(*(torch.cat([getattr(r, f).cpu() for r in results]) for f in PCAOtsu._fields))


def baseline_masks(test: TestSet, readout: Readout) -> dict[str, list[np.ndarray]]:
    """Every baseline's masks at the images' resolution under a read-out's smoothing, orientation, post."""
    shapes = [m.shape for m in test.dataset.masks]
    out = {"intensity": [post_process(m, readout.post) for m in test.intensity]}
    for name, maps in test.cams.items():
        if name.startswith("gradcam"):
            result = read_response(maps, smooth=readout.smooth, orient=readout.orient)
        else:
            result = pca_otsu(maps, smooth=readout.smooth, orient=readout.orient, details=True)
        out[name] = masks_at(result, shapes, readout.post)
    return out


@torch.inference_mode()
def evaluate(model: NCAClassifier, test: TestSet, config: TrainConfig, device: str | torch.device = "cpu",
             readouts: dict[str, Readout] | None = None) -> dict[str, Evaluation]:
    """Accuracy, NCA-WSS masks and IoU of each read-out (default: config.readouts()), with every
    baseline's IoU on the same images and target. Masks are compared at the ground truth's
    resolution (segment.masks_at). Read-outs sharing a forward pass share its states."""
    model.eval()
    readouts = readouts or config.readouts()
    segments, predictions = read_out(model, test.x, readouts, config, device)
    labels = test.dataset.labels if test.dataset.labels is not None else np.full(len(test.dataset), -1)
    known = labels >= 0
    out = {}
    for name, r in readouts.items():
        if r.target == "nucleus" and test.dataset.nucleus is None and name != "readout":
            log.warning("%s: read-out %r skipped: no nucleus masks", test.dataset.name, name)
            continue
        truth = test.dataset.target_masks(r.target)
        result = segments[name]
        masks = masks_at(result, [t.shape for t in truth], r.post)
        key = (r.smooth, r.orient, r.post)
        if key not in test.baseline_cache:
            test.baseline_cache[key] = baseline_masks(test, r)
        baselines = test.baseline_cache[key]
        pred = predictions[name]
        out[name] = Evaluation(
            accuracy=float((pred[known] == labels[known]).mean()) if known.any() else float("nan"),
            iou=iou_each(masks, truth),
            baseline_iou={b: iou_each(m, truth) for b, m in baselines.items()},
            predictions=pred, masks=masks, baseline_masks=baselines,
            responses=result.response.numpy(), degenerate=int(result.degenerate.sum()))
    return out


def read_out(model: NCAClassifier, x: torch.Tensor, readouts: dict[str, Readout], config: TrainConfig,
             device) -> tuple[dict[str, PCAOtsu], dict[str, np.ndarray]]:
    """Per read-out, the PCA-Otsu result (on CPU) and the class predictions of normalised images x.
    Read-outs with the same inference and runs share one forward pass."""
    groups: dict[tuple, list[str]] = {}
    for name, readout in readouts.items():
        runs = 1 if readout.inference == "mean_field" else readout.runs
        groups.setdefault((readout.inference, runs), []).append(name)
    segments: dict[str, list[PCAOtsu]] = {name: [] for name in readouts}
    predictions: dict[str, np.ndarray] = {}
    for (_, runs), names in groups.items():
        fire_gen = torch.Generator(device).manual_seed(config.seed + 2)  # same noise whatever else is asked
        step, preds = max(1, config.batch_size // runs), []
        for start in range(0, len(x), step):
            logits, state = read_state(model, x[start:start + step].to(device), readouts[names[0]], fire_gen)
            preds.append(logits.argmax(1).cpu())
            for name in names:
                r = readouts[name]
                features = state if r.channels == "all" else state[:, 3:]
                segments[name].append(pca_otsu(features, smooth=r.smooth, orient=r.orient, details=True))
        predictions.update({name: torch.cat(preds).numpy() for name in names})
    return {name: concat(parts) for name, parts in segments.items()}, predictions


def iou_each(masks: list[np.ndarray], truth: list[np.ndarray]) -> np.ndarray:
    return np.array([iou(m, t) for m, t in zip(masks, truth)])


def majority_vote(fold_masks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per image, the pixels that more than half of the folds' masks mark."""
    k = len(fold_masks)
    return [np.sum(stack, axis=0) * 2 > k for stack in zip(*fold_masks)]


def cross_validate(config: TrainConfig, dataset: Dataset, k: int = 5, seed: int = 0,
                   device: str | torch.device = "cpu", cam_kinds: tuple[str, ...] = ()) -> CVResult:
    """Stratified k-fold cross-validation, folds trained one after another; with `cam_kinds`
    (gradcam, eigencam) each fold also trains the two CNN baselines."""
    result = CVResult()
    for i, (train_idx, test_idx) in enumerate(stratified_folds(dataset.labels, k, seed)):
        log.info("fold %d/%d: %d train, %d test images", i + 1, k, len(train_idx), len(test_idx))
        train = dataset.subset(train_idx)
        cnns = {size: train_cnn(config, train, size, device) for size in CNN_WIDTHS} if cam_kinds else None
        fold = train_fold(config, train, dataset.subset(test_idx), device=device, cnns=cnns, cam_kinds=cam_kinds)
        log.info("fold %d/%d: IoU %.3f (best baseline %.3f), accuracy %.3f, %.0f s",
                 i + 1, k, fold.iou, max(fold.baseline_iou.values()), fold.accuracy, fold.seconds)
        result.folds.append(fold)
    return result


@dataclass
class FoldModel:
    """What segmenting new images needs from one trained fold: NCA weights, normalisation, CNNs."""
    state_dict: dict
    norm_mean: list[float]
    norm_std: list[float]
    n_classes: int
    cnns: dict[str, CNNBaseline] | None = None

    @classmethod
    def of(cls, fold: FoldResult, n_classes: int) -> FoldModel:
        return cls(fold.state_dict, fold.norm_mean, fold.norm_std, n_classes, fold.cnns)

    def nca(self, config: TrainConfig) -> NCAClassifier:
        """The fold's trained NCA classifier (on CPU)."""
        model = build_model(config, self.n_classes)
        model.load_state_dict(self.state_dict)
        return model

    @classmethod
    def from_record(cls, record: dict) -> FoldModel:
        """From the dict a sweep saves as weights_fold<r>.pt."""
        cnns = {size: CNNBaseline(**values) for size, values in record.get("cnns", {}).items()} or None
        return cls(record["state_dict"], record["norm_mean"], record["norm_std"], record["n_classes"], cnns)


def score_dataset(config: TrainConfig, folds: list[FoldModel], dataset: Dataset, device: str | torch.device = "cpu",
                  cam_kinds: tuple[str, ...] = ()) -> dict[str, dict]:
    """Every fold's model segments `dataset` (held-out or another domain's images; labels optional).

    Per read-out: "iou" of the folds' majority-vote masks, "fold_iou" of each fold alone,
    "<baseline>_iou" of each baseline's majority vote over the folds' CNNs (intensity needs
    no training), and "lift" over the best baseline, all on the same images and target.
    """
    per_fold = []
    for fold in folds:
        test = TestSet.prepare(dataset, fold.norm_mean, fold.norm_std, config.image_size, fold.cnns, cam_kinds, device)
        per_fold.append(evaluate(fold.nca(config).to(device), test, config, device))
    readouts = config.readouts()
    scores = {}
    for name, evaluations in ((n, [f[n] for f in per_fold]) for n in per_fold[0]):
        truth = dataset.target_masks(readouts[name].target)
        score = {"iou": float(iou_each(majority_vote([e.masks for e in evaluations]), truth).mean()),
                 "fold_iou": [float(e.iou.mean()) for e in evaluations]}
        for baseline in evaluations[0].baseline_masks:
            vote = majority_vote([e.baseline_masks[baseline] for e in evaluations])
            score[f"{baseline}_iou"] = float(iou_each(vote, truth).mean())
        score["lift"] = score["iou"] - max(v for k, v in score.items() if k.endswith("_iou") and k != "fold_iou")
        scores[name] = score
    return scores
