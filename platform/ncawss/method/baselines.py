"""The baselines every NCA-WSS IoU stands beside, named once: what configurations accept, what
evaluation computes and what reports print all derive from these tables.

- threshold baselines, always on, no training (readout/thresholds.py): `intensity` (Otsu on the
  grayscale image, dark side = cell) and one Otsu threshold per colour channel below;
- CAM baselines, asked for by kind (training/cnn.py): a small plain CNN trained per fold at each
  of CNN_WIDTHS' sizes, read out by Grad-CAM or EigenCAM.
"""
from __future__ import annotations

from typing import Literal

# colour threshold -> (colour space, channel) it thresholds
COLOUR_CHANNELS: dict[str, tuple[str, int]] = {
    "otsu_r": ("rgb", 0), "otsu_g": ("rgb", 1), "otsu_b": ("rgb", 2),
    "otsu_s": ("hsv", 1), "otsu_a": ("lab", 1), "otsu_bstar": ("lab", 2),
}
THRESHOLD_BASELINES: tuple[str, ...] = ("intensity", *COLOUR_CHANNELS)
CAM_KINDS = ("gradcam", "eigencam")
CamKind = Literal[CAM_KINDS]  # type: ignore[valid-type]  # the configurations' choices, from the table above
CNN_WIDTHS = {"small": 6, "large": 16}  # CNN size -> its first block's width


def cam_baseline(kind: str, size: str) -> str:
    """A CAM baseline's name: its kind, with the CNN's size unless small ('gradcam', 'eigencam_large')."""
    return kind if size == "small" else f"{kind}_{size}"


def baseline_names(cam_kinds: tuple[str, ...] = ()) -> list[str]:
    """Every baseline a result holds: the thresholds, then each CAM kind at each CNN size."""
    return [*THRESHOLD_BASELINES, *(cam_baseline(kind, size) for kind in cam_kinds for size in CNN_WIDTHS)]


def check_cam_kinds(kinds) -> tuple[str, ...]:
    """`kinds` as a tuple in the registry's order; ValueError names a kind that is not a CAM baseline."""
    unknown = [k for k in kinds if k not in CAM_KINDS]
    if unknown:
        always = " (threshold baselines are always on)" if set(unknown) <= set(THRESHOLD_BASELINES) else ""
        raise ValueError(f"unknown CAM baseline(s) {unknown}{always}; choose from {list(CAM_KINDS)}")
    return tuple(k for k in CAM_KINDS if k in kinds)
