"""The imagefolder and prefix layouts on real PNG and JPEG files written here, and datasets where
some samples have no mask (they train, they are not scored)."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from ncawss import DataError, TrainConfig, convert, cross_validate, make_synthetic, read_dataset, write_dataset
from ncawss.data.class_folders import MASK_THRESHOLD


def image(seed, size=(14, 12)):
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def disc(size=(14, 12), centre=(7, 6), radius=4):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.uint8) * 255


def save(path, array, quality=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": quality} if quality else {}))


def decoded(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def jpeg_values(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def make_imagefolder(root, images="images", masks="GT_masks"):
    """Two classes; a JPEG image with a JPEG mask, PNG images with PNG masks, one image without a mask."""
    save(root / images / "neutrophil" / "n1.jpg", image(1), quality=95)
    save(root / masks / "neutrophil" / "n1.jpg", disc(), quality=75)
    save(root / images / "neutrophil" / "n2.png", image(2))
    save(root / masks / "neutrophil" / "n2.png", disc(radius=3))
    save(root / images / "basophil" / "b1.png", image(3))
    save(root / masks / "basophil" / "b1.png", disc(centre=(6, 5)))
    save(root / images / "basophil" / "b2.png", image(4))  # no mask
    return root


def test_imagefolder_reads_classes_from_folders_masks_mirrored_and_a_missing_mask_as_null(tmp_path):
    root = make_imagefolder(tmp_path / "raabin")
    data = read_dataset(convert("imagefolder", root, tmp_path / "r.parquet"))
    assert data.classes == ["basophil", "neutrophil"]
    assert data.ids == ["basophil/b1", "basophil/b2", "neutrophil/n1", "neutrophil/n2"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.sources == ["images/basophil/b1.png", "images/basophil/b2.png", "images/neutrophil/n1.jpg",
                            "images/neutrophil/n2.png"]
    assert np.array_equal(data.images[0], image(3)) and np.array_equal(data.images[3], image(2))
    assert np.array_equal(data.images[2], decoded(root / "images/neutrophil/n1.jpg"))  # as the JPEG decodes
    assert data.masks[1] is None and data.unmasked == 1
    assert np.array_equal(data.masks[0], disc(centre=(6, 5)) > 0) and np.array_equal(data.masks[3], disc(radius=3) > 0)
    noisy = jpeg_values(root / "GT_masks/neutrophil/n1.jpg")
    off = int((~np.isin(noisy, (0, 255))).sum())
    assert off > 0  # the JPEG really is noisy: the cut at 128 matters
    assert np.array_equal(data.masks[2], noisy >= MASK_THRESHOLD) and np.array_equal(data.masks[2], disc() > 0)
    record = data.provenance
    assert record["layout"] == "imagefolder" and record["missing_masks"] == 1
    assert record["binarised_pixels"] == off and record["binarised_masks"] == 1 and record["mask_threshold"] == 128


def test_imagefolder_takes_other_folder_names_and_classes_in_label_order(tmp_path):
    root = make_imagefolder(tmp_path / "r", images="img", masks="gt")
    data = convert("imagefolder", root, tmp_path / "r.parquet", images="img", masks="gt",
                   classes=["neutrophil", "basophil"], name="raabin-test")
    data = read_dataset(data)
    assert data.name == "raabin-test" and data.labels.tolist() == [1, 1, 0, 0]


def make_prefix(root):
    save(root / "image" / "neutrophil_1.jpg", image(5), quality=95)
    save(root / "masks" / "neutrophil_1.jpg", disc(), quality=75)
    save(root / "image" / "eosinophil_1.png", image(6))
    save(root / "masks" / "eosinophil_1.png", disc(radius=2))
    save(root / "image" / "eosinophil_2.png", image(7))  # no mask
    return root


def test_prefix_reads_the_class_before_the_separator_and_masks_of_the_same_name(tmp_path):
    root = make_prefix(tmp_path / "matek")
    data = read_dataset(convert("prefix", root, tmp_path / "m.parquet"))
    assert data.classes == ["eosinophil", "neutrophil"]
    assert data.ids == ["eosinophil_1", "eosinophil_2", "neutrophil_1"] and data.labels.tolist() == [0, 0, 1]
    assert np.array_equal(data.images[0], image(6))
    assert np.array_equal(data.images[2], decoded(root / "image/neutrophil_1.jpg"))
    assert np.array_equal(data.masks[0], disc(radius=2) > 0) and data.masks[1] is None
    assert np.array_equal(data.masks[2], jpeg_values(root / "masks/neutrophil_1.jpg") >= 128)
    assert data.provenance["missing_masks"] == 1 and data.provenance["separator"] == "_"


def test_prefix_takes_another_separator(tmp_path):
    save(tmp_path / "m" / "image" / "mono-7.png", image(8))
    data = read_dataset(convert("prefix", tmp_path / "m", tmp_path / "m.parquet", separator="-"))
    assert data.classes == ["mono"] and data.masks is None  # no mask at all: a dataset without masks


@pytest.mark.parametrize("layout, make, mask, message", [
    ("imagefolder", make_imagefolder, "GT_masks/basophil/b1.png", r"b1\.png: mask is 9x9 \(WxH\) but its image is 12"),
    ("prefix", make_prefix, "masks/eosinophil_1.png", r"eosinophil_1\.png: mask is 9x9 \(WxH\) but its image is 12"),
])
def test_a_mask_of_the_wrong_size_stops_the_conversion_naming_the_file(tmp_path, layout, make, mask, message):
    root = make(tmp_path / "src")
    save(root / mask, np.zeros((9, 9), np.uint8))
    with pytest.raises(DataError, match=message):
        convert(layout, root, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("layout, plant, message", [
    ("prefix", "image/nolabel.png", r"image/nolabel\.png: no class prefix \(layout prefix expects <class>_<name>\)"),
    ("imagefolder", "images/loose.png", r"images/loose\.png: an image outside a class folder"),
    ("imagefolder", "GT_masks/basophil/b1.jpg", r"b1\.png: a second mask for 'b1' beside b1\.jpg"),
])
def test_bad_files_stop_the_conversion_naming_the_file(tmp_path, layout, plant, message):
    root = (make_prefix if layout == "prefix" else make_imagefolder)(tmp_path / "src")
    save(root / plant, image(9) if plant.startswith("image") else disc())
    with pytest.raises(DataError, match=message):
        convert(layout, root, tmp_path / "x.parquet")


def test_a_corrupt_jpeg_and_a_missing_folder_are_named(tmp_path):
    root = make_prefix(tmp_path / "src")
    (root / "image" / "eosinophil_3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"eosinophil_3\.jpg: cannot read image"):
        convert("prefix", root, tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"images: folder not found \(layout imagefolder\)"):
        convert("imagefolder", root, tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"classes \['basophil', 'neutrophil'\] found but not in the given"):
        convert("imagefolder", make_imagefolder(tmp_path / "r"), tmp_path / "x.parquet", classes=["monocyte"])


def test_prepare_data_reports_missing_and_binarised_masks(tmp_path):
    root = make_imagefolder(tmp_path / "r")
    run = subprocess.run([sys.executable, "jobs/prepare_data.py", "imagefolder", "--source", str(root), "--output",
                          str(tmp_path / "r.parquet")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "1 images have no mask: they train, they are not scored" in run.stdout
    assert "lossy (JPEG) masks were off 0 and 255 and cut at 128" in run.stdout


def without_masks(dataset, positions):
    return dataclasses.replace(dataset, masks=[None if i in positions else m for i, m in enumerate(dataset.masks)],
                               nucleus=[None if i in positions else m for i, m in enumerate(dataset.nucleus)])


def test_a_sample_without_a_mask_trains_as_before_and_only_masked_test_images_are_scored(tmp_path):
    full = make_synthetic(n=24, size=16, seed=4)
    gone = {1, 6, 11, 20}
    partial = read_dataset(write_dataset(without_masks(full, gone), tmp_path / "p.parquet"))  # nulls in Parquet
    assert [m is None for m in partial.masks] == [i in gone for i in range(len(full))]
    assert partial.fingerprint != full.fingerprint
    config = TrainConfig(channels=6, hidden=8, steps=3, image_size=16, epochs=1, batch_size=8, seed=2)
    a, b = cross_validate(config, full, k=2), cross_validate(config, partial, k=2)
    masked_ids = [full.ids[i] for i in range(len(full)) if i not in gone]
    assert sorted(sum((f.test_ids for f in b.folds), [])) == sorted(masked_ids)
    for fa, fb in zip(a.folds, b.folds):  # training never reads a mask: the same weights
        assert all(torch.equal(fa.model.state_dict[k], fb.model.state_dict[k]) for k in fa.model.state_dict)
        keep = [i for i, t in enumerate(fa.test_ids) if t in set(masked_ids)]
        assert fb.scores.iou == pytest.approx(float(fa.evaluation.image_iou[keep].mean()))
    with pytest.raises(DataError, match=r"4 of 24 samples have no mask"):
        partial.target_masks()


def test_two_images_of_one_stem_are_named(tmp_path):
    root = make_prefix(tmp_path / "src")
    save(root / "image" / "eosinophil_1.jpg", image(9))  # beside eosinophil_1.png
    with pytest.raises(DataError, match=r"image: duplicate image stem 'eosinophil_1'"):
        convert("prefix", root, tmp_path / "x.parquet")
