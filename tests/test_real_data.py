"""Checks on the real zheng2018 Dataset 1; skipped where the folder is absent."""
import numpy as np
import pytest
from PIL import Image

from conftest import REAL_DATA
from ncawss import colour_baseline, convert, intensity_baseline, iou, read_dataset

pytestmark = pytest.mark.skipif(not (REAL_DATA / "Dataset 1").is_dir(),
                                reason=f"real data not present at {REAL_DATA.name}/ beside the project")


@pytest.fixture(scope="module")
def dataset1(tmp_path_factory):
    return read_dataset(convert("zheng2018", REAL_DATA, tmp_path_factory.mktemp("real") / "d1.parquet"))


def test_dataset1_has_300_samples_with_the_published_class_counts(dataset1):
    assert len(dataset1) == 300
    assert np.bincount(dataset1.labels).tolist() == [176, 53, 48, 22, 1]
    sizes = [im.shape[:2] for im in dataset1.images]
    assert sizes.count((120, 120)) == 224


def test_dataset1_cell_and_nucleus_targets_are_the_pngs_levels(dataset1):
    for i in range(len(dataset1)):
        raw = np.asarray(Image.open(REAL_DATA / "Dataset 1" / f"{dataset1.ids[i]}.png"))
        assert np.array_equal(dataset1.target_masks("cell")[i], raw > 0)
        assert np.array_equal(dataset1.target_masks("nucleus")[i], raw == 255)


def test_intensity_baseline_scores_81_on_dataset1(dataset1):
    scores = [iou(intensity_baseline(im), m) for im, m in zip(dataset1.images, dataset1.masks)]
    assert 100 * np.mean(scores) == pytest.approx(81.2, abs=0.5)


def test_blue_channel_otsu_beats_gray_on_dataset1(dataset1):
    """The strongest trivial baseline on this stain is the blue channel, not gray."""
    scores = {name: np.mean([iou(colour_baseline(im, name), m) for im, m in zip(dataset1.images, dataset1.masks)])
              for name in ("otsu_r", "otsu_g", "otsu_b", "otsu_s")}
    assert 100 * scores["otsu_b"] == pytest.approx(88.4, abs=0.5)
    assert max(scores, key=scores.__getitem__) == "otsu_b"
