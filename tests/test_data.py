import os
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT
from ncawss import DataError, convert, holdout_split, make_synthetic, read_dataset, stratified_folds, write_dataset
from ncawss.data import Dataset, DatasetWriter, dataset_metadata, iter_dataset, layouts
from ncawss.data.synthetic import synthetic_chunks


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(root, n=4, labels=True, masks=True, size=(12, 10)):
    rng = np.random.default_rng(0)
    rows = ["id,label"]
    for i in range(n):
        save(root / "images" / f"cell{i}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        if masks:
            save(root / "masks" / f"cell{i}.png", (rng.random(size) > 0.5).astype(np.uint8) * 255)
        rows.append(f"cell{i},{'ab'[i % 2]}")
    if labels:
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def make_zheng(root, n=4):
    rng = np.random.default_rng(1)
    folder = root / "Dataset 1"
    rows = ["image ID,class label"]
    for i in range(1, n + 1):
        h = 120 if i % 2 else 115
        save(folder / f"{i:03d}.bmp", rng.integers(0, 255, (h, 118, 3), dtype=np.uint8))
        save(folder / f"{i:03d}.png", rng.choice([0, 128, 255], (h, 118)).astype(np.uint8))
        rows.append(f"{i},{(i % 5) + 1}")
    (root / "Class Labels of Dataset 1.csv").write_text("\n".join(rows) + "\n")
    return root


def assert_same(a, b):
    assert a.ids == b.ids and a.classes == b.classes and a.name == b.name and a.sources == b.sources
    assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a.images, b.images))
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert (a.nucleus is None) == (b.nucleus is None)
    if a.nucleus is not None:
        assert all(np.array_equal(x, y) for x, y in zip(a.nucleus, b.nucleus))
    assert np.array_equal(a.labels, b.labels)


def test_parquet_round_trip_is_lossless(tmp_path, small_synthetic):
    dataset = small_synthetic.subset(range(10))
    dataset.images[3] = dataset.images[3][:20, :17]  # sizes may differ per sample
    dataset.masks[3] = dataset.masks[3][:20, :17]
    dataset.nucleus[3] = dataset.nucleus[3][:20, :17]
    path = write_dataset(dataset, tmp_path / "d.parquet")
    back = read_dataset(path)
    assert_same(dataset, back)
    assert back.fingerprint == dataset.fingerprint
    assert_same(dataset, read_dataset(path.resolve().as_uri()))  # file:// URI through pyarrow's filesystems


def test_parquet_file_holds_one_row_per_sample_and_its_metadata(tmp_path, small_synthetic):
    path = write_dataset(small_synthetic, tmp_path / "d.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["id", "image", "mask", "label", "source"]
    assert table.num_rows == len(small_synthetic)
    meta = dataset_metadata(path)
    assert meta["name"] == "synthetic-a" and meta["classes"][0] == "neutrophil"
    assert meta["fingerprint"] == small_synthetic.fingerprint and meta["provenance"]["seed"] == 3
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


def test_a_file_written_chunk_by_chunk_equals_one_written_at_once_and_reads_back_in_chunks(tmp_path):
    whole = make_synthetic(n=30, size=20, seed=5)
    chunks = list(synthetic_chunks(n=30, size=20, seed=5, rows=7))  # drawn 7 at a time: the same crops
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2]
    assert_same(whole, Dataset.join(chunks))
    with DatasetWriter(tmp_path / "chunked.parquet", name=whole.name, classes=whole.classes, mask_levels=2,
                       provenance=whole.provenance) as writer:
        for chunk in chunks:
            writer.write(chunk)
    assert pq.ParquetFile(tmp_path / "chunked.parquet").metadata.num_row_groups == 5
    assert dataset_metadata(tmp_path / "chunked.parquet")["fingerprint"] == whole.fingerprint
    back = list(iter_dataset(tmp_path / "chunked.parquet", rows=4))
    assert [len(c) for c in back] == [4] * 7 + [2]
    assert_same(whole, Dataset.join(back))
    assert_same(whole, read_dataset(write_dataset(whole, tmp_path / "whole.parquet")))


def test_a_writer_that_fails_midway_leaves_no_file_and_keeps_the_earlier_one(tmp_path):
    chunks = synthetic_chunks(n=20, size=20, rows=8)
    target = tmp_path / "d.parquet"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError, match="conversion failed"):
        with DatasetWriter(target, name="x", classes=["a"], mask_levels=2) as writer:
            writer.write(next(chunks))
            raise RuntimeError("conversion failed")
    assert target.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["d.parquet"]
    with pytest.raises(DataError, match="a chunk without masks in a dataset with them"):
        with DatasetWriter(target, name="x", classes=["a"], mask_levels=2) as writer:
            writer.write(replace(next(chunks), masks=None, nucleus=None))
    assert target.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["d.parquet"]
    with pytest.raises(DataError, match="the dataset is empty, nothing to write"):
        with DatasetWriter(target, name="x", classes=["a"], mask_levels=2):
            pass
    assert target.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


@pytest.mark.parametrize("layout", ["folder", "zheng2018"])
def test_a_layout_is_decoded_a_chunk_at_a_time_into_the_file_one_piece_gives(tmp_path, monkeypatch, layout):
    root = make_folder(tmp_path / "raw", n=5) if layout == "folder" else make_zheng(tmp_path / "raw", n=5)
    whole = convert(layout, root, tmp_path / "whole.parquet")
    events = []
    decode, write = layouts.Listing.decode, DatasetWriter.write
    monkeypatch.setattr(layouts, "ROWS_PER_GROUP", 2)
    monkeypatch.setattr(layouts.Listing, "decode", lambda self, samples: events.append(len(samples))
                        or decode(self, samples))
    monkeypatch.setattr(DatasetWriter, "write", lambda self, chunk: events.append("write") or write(self, chunk))
    chunked = convert(layout, root, tmp_path / "chunked.parquet")
    assert events == [2, "write", 2, "write", 1, "write"]  # never more than a chunk decoded ahead of the file
    assert pq.ParquetFile(chunked).metadata.num_row_groups == 3
    assert pq.read_table(chunked).equals(pq.read_table(whole))
    assert dataset_metadata(chunked) == dataset_metadata(whole)
    (root / ("images/cell4.png" if layout == "folder" else "Dataset 1/005.bmp")).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"(cell4\.png|005\.bmp): cannot read image"):
        convert(layout, root, chunked)  # the last chunk fails: the earlier file stays, whole
    assert pq.read_table(chunked).equals(pq.read_table(whole)) and len(os.listdir(tmp_path)) == 3


def test_dataset_without_masks_or_labels_round_trips_as_none(tmp_path):
    path = convert("folder", make_folder(tmp_path / "raw", labels=False, masks=False), tmp_path / "d.parquet")
    back = read_dataset(path)
    assert back.masks is None and back.labels is None and len(back) == 4


def test_folder_layout_reads_labels_masks_and_class_names(tmp_path):
    back = read_dataset(convert("folder", make_folder(tmp_path / "raw"), tmp_path / "d.parquet"))
    assert back.classes == ["a", "b"] and back.labels.tolist() == [0, 1, 0, 1]
    raw_mask = np.asarray(Image.open(tmp_path / "raw" / "masks" / "cell2.png")) > 0
    assert np.array_equal(back.masks[2], raw_mask)


def test_zheng2018_layout_keeps_sizes_and_maps_labels(tmp_path):
    back = read_dataset(convert("zheng2018", make_zheng(tmp_path / "z"), tmp_path / "d.parquet"))
    assert back.ids == ["001", "002", "003", "004"]
    assert [im.shape[0] for im in back.images] == [120, 115, 120, 115]
    assert back.labels.tolist() == [1, 2, 3, 4]  # files' labels 2..5 -> indices 1..4
    raw = np.asarray(Image.open(tmp_path / "z" / "Dataset 1" / "002.png"))
    assert np.array_equal(back.masks[1], raw > 0)


def test_zheng2018_nucleus_target_is_exactly_the_pixels_equal_to_255(tmp_path):
    back = read_dataset(convert("zheng2018", make_zheng(tmp_path / "z"), tmp_path / "d.parquet"))
    for i, image_id in enumerate(back.ids):
        raw = np.asarray(Image.open(tmp_path / "z" / "Dataset 1" / f"{image_id}.png"))
        assert np.array_equal(back.target_masks("nucleus")[i], raw == 255)
        assert np.array_equal(back.target_masks("cell")[i], raw > 0)
    assert dataset_metadata(tmp_path / "d.parquet")["mask_levels"] == 2


def test_single_level_masks_refuse_the_nucleus_target(tmp_path):
    back = read_dataset(convert("folder", make_folder(tmp_path / "raw"), tmp_path / "d.parquet"))
    assert back.nucleus is None
    with pytest.raises(DataError, match=r"target 'nucleus' .* single-level masks"):
        back.target_masks("nucleus")


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_folder_layout_reads_common_image_formats_and_any_nonzero_mask(tmp_path, suffix):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)
    save(tmp_path / "raw" / "images" / f"a{suffix}", image)
    save(tmp_path / "raw" / "images" / f"b{suffix}", image)
    save(tmp_path / "raw" / "masks" / "a.png", (rng.random((9, 11)) > 0.5).astype(np.uint8))   # 0/1
    save(tmp_path / "raw" / "masks" / f"b{suffix if suffix != '.jpg' else '.png'}",
         rng.choice([0, 7, 200], (9, 11)).astype(np.uint8))                                        # any nonzero
    back = read_dataset(convert("folder", tmp_path / "raw", tmp_path / "d.parquet"))
    assert back.ids == ["a", "b"] and back.images[0].shape == (9, 11, 3)
    if suffix != ".jpg":  # lossy
        assert np.array_equal(back.images[0], image)
    for i, name in enumerate("ab"):
        raw = np.asarray(Image.open(next((tmp_path / "raw" / "masks").glob(f"{name}.*"))))
        assert np.array_equal(back.masks[i], raw > 0)


def test_zheng2018_subset_two_is_read_from_its_own_folder(tmp_path):
    root = make_zheng(tmp_path / "z")
    os.rename(root / "Dataset 1", root / "Dataset 2")
    os.rename(root / "Class Labels of Dataset 1.csv", root / "Class Labels of Dataset 2.csv")
    back = read_dataset(convert("zheng2018", root, tmp_path / "d.parquet", subset=2))
    assert back.name == "zheng2018-dataset2" and len(back) == 4


def expect_error(tmp_path, layout, root, pattern, **options):
    destination = tmp_path / "out" / "d.parquet"
    with pytest.raises(DataError, match=pattern):
        convert(layout, root, destination, **options)
    assert not destination.parent.exists() or os.listdir(destination.parent) == []


def test_corrupt_image_is_named(tmp_path):
    root = make_folder(tmp_path / "raw")
    (root / "images" / "cell1.png").write_bytes(b"not a png")
    expect_error(tmp_path, "folder", root, r"cell1\.png: cannot read image")


def test_mask_of_another_size_is_named(tmp_path):
    root = make_folder(tmp_path / "raw")
    save(root / "masks" / "cell3.png", np.zeros((5, 5), np.uint8))
    expect_error(tmp_path, "folder", root, r"cell3\.png: mask is 5x5")


def stray_pixels(path, values_at):
    """Put stray values at the given pixels of a saved mask (anti-aliasing as real masks have it)."""
    mask = np.asarray(Image.open(path)).copy()
    for (row, col), value in values_at.items():
        mask[row, col] = value
    save(path, mask)
    return mask


def test_a_few_stray_mask_values_are_snapped_to_the_nearest_level_with_a_warning(tmp_path, caplog):
    root = make_zheng(tmp_path / "z")
    path = root / "Dataset 1" / "003.png"
    raw = stray_pixels(path, {(0, 0): 7, (0, 1): 120, (5, 5): 250, (6, 6): 64})  # 4 of 14,160 pixels
    with caplog.at_level("WARNING"):
        dataset = read_dataset(convert("zheng2018", root, tmp_path / "d.parquet"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "003.png: 4 pixels" in warnings[0] and "[7, 64, 120, 250]" in warnings[0]
    index = dataset.ids.index("003")
    assert not dataset.masks[index][0, 0] and dataset.masks[index][0, 1] and not dataset.nucleus[index][0, 1]
    assert dataset.nucleus[index][5, 5] and not dataset.masks[index][6, 6]  # 64: nearer 0 than 128 (a tie)
    untouched = (raw == 0) | (raw == 128) | (raw == 255)
    assert np.array_equal(dataset.masks[index][untouched], raw[untouched] > 0)
    assert dataset.provenance["snapped_pixels"] == 4 and dataset.provenance["snapped_masks"] == 1


def test_stray_mask_values_above_the_share_or_strict_stop_the_conversion(tmp_path):
    root = make_zheng(tmp_path / "z")
    stray_pixels(root / "Dataset 1" / "003.png", {(r, c): 77 for r in range(10) for c in range(10)})  # 0.7%
    expect_error(tmp_path, "zheng2018", root, r"003\.png: mask has values \[77\] .* on 100 pixels \(0\.71%\)")
    converted = convert("zheng2018", root, tmp_path / "loose.parquet", max_stray=0.01)
    assert read_dataset(converted).provenance["snapped_pixels"] == 100
    root = make_zheng(tmp_path / "z2")
    stray_pixels(root / "Dataset 1" / "002.png", {(0, 0): 77})
    expect_error(tmp_path, "zheng2018", root, r"002\.png: mask has values \[77\].*--strict", max_stray=0.0)


def test_folder_masks_snap_antialiased_edges_but_keep_label_images(tmp_path):
    root = make_folder(tmp_path / "raw", n=3, size=(40, 30))
    stray_pixels(root / "masks" / "cell0.png", {(0, 0): 100, (0, 1): 200})  # 2 of 1,200 pixels
    labelled = np.zeros((40, 30), np.uint8)  # a label image: several values, nonzero = cell
    labelled[1:5, 1:5], labelled[6:10, 5:9] = 1, 2
    save(root / "masks" / "cell1.png", labelled)
    dataset = read_dataset(convert("folder", root, tmp_path / "d.parquet"))
    assert not dataset.masks[0][0, 0] and dataset.masks[0][0, 1]
    assert np.array_equal(dataset.masks[1], labelled > 0)
    assert dataset.provenance["snapped_pixels"] == 2 and dataset.provenance["snapped_masks"] == 1


def test_prepare_data_reports_snapped_pixels_and_strict_refuses_them(tmp_path):
    root = make_zheng(tmp_path / "z")
    stray_pixels(root / "Dataset 1" / "001.png", {(1, 1): 3, (1, 2): 3})
    command = [sys.executable, "jobs/prepare_data.py", "zheng2018", "--source", str(root)]
    run = subprocess.run([*command, "--output", str(tmp_path / "a.parquet")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "001.png: 2 pixels (0.01%) with values [3] snapped" in run.stdout + run.stderr
    assert "2 mask pixels in 1 masks were snapped" in run.stdout
    run = subprocess.run([*command, "--output", str(tmp_path / "b.parquet"), "--strict"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "001.png: mask has values [3]" in run.stderr
    assert not (tmp_path / "b.parquet").exists()


def test_unknown_label_is_named(tmp_path):
    root = make_zheng(tmp_path / "z")
    csv = root / "Class Labels of Dataset 1.csv"
    csv.write_text(csv.read_text().replace("2,3", "2,9"))
    expect_error(tmp_path, "zheng2018", root, r"line 3: unknown label '9'")
    folder = make_folder(tmp_path / "raw")
    expect_error(tmp_path, "folder", folder, r"unknown label 'b'", classes=["a"])


def test_label_row_for_missing_image_is_named(tmp_path):
    root = make_zheng(tmp_path / "z")
    csv = root / "Class Labels of Dataset 1.csv"
    csv.write_text(csv.read_text() + "17,1\n")
    expect_error(tmp_path, "zheng2018", root, r"label row for image 017")
    folder = make_folder(tmp_path / "raw")
    (folder / "labels.csv").write_text((folder / "labels.csv").read_text() + "ghost,a\n")
    expect_error(tmp_path, "folder", folder, r"label row for 'ghost'")


def test_duplicate_ids_are_named(tmp_path):
    root = make_folder(tmp_path / "raw")
    save(root / "images" / "cell1.jpg", np.zeros((12, 10, 3), np.uint8))
    expect_error(tmp_path, "folder", root, r"duplicate image id \(file stem\) 'cell1'")
    zheng = make_zheng(tmp_path / "z")
    csv = zheng / "Class Labels of Dataset 1.csv"
    csv.write_text(csv.read_text() + "2,1\n")
    expect_error(tmp_path, "zheng2018", zheng, r"duplicate image id '2'")


def test_empty_dataset_is_refused(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    expect_error(tmp_path, "folder", tmp_path / "raw", r"no images found")


def test_failed_conversion_keeps_an_existing_file(tmp_path):
    destination = tmp_path / "d.parquet"
    convert("synthetic", None, destination, n=5, size=16)
    before = destination.read_bytes()
    root = make_folder(tmp_path / "raw")
    (root / "images" / "cell0.png").write_bytes(b"broken")
    with pytest.raises(DataError):
        convert("folder", root, destination)
    assert destination.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["d.parquet", "raw"]


def test_synthetic_data_is_deterministic_given_its_seed():
    a, b, c = make_synthetic(10, 32, seed=7), make_synthetic(10, 32, seed=7), make_synthetic(10, 32, seed=8)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_synthetic_domains_differ_in_stain():
    a, b = make_synthetic(50, 32, seed=0, domain="a"), make_synthetic(50, 32, seed=0, domain="b")
    def background(d):
        return np.mean([im[~m].mean(axis=0) for im, m in zip(d.images, d.masks)], axis=0)

    assert np.abs(background(a) - background(b)).max() > 8  # mean plasma colour, 0..255


def test_synthetic_masks_are_one_central_cell_and_classes_balanced():
    from scipy import ndimage
    d = make_synthetic(25, 32, seed=1)
    assert np.bincount(d.labels).tolist() == [5] * 5
    for m in d.masks:
        _, count = ndimage.label(m)
        assert count == 1 and m[16, 16] and 0.1 < m.mean() < 0.5


def test_folds_are_stratified_disjoint_and_cover_every_sample_once():
    labels = np.repeat(np.arange(4), [20, 12, 8, 10])
    folds = stratified_folds(labels, 4, seed=0)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests.tolist()) == list(range(len(labels)))
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == len(labels)
        np.testing.assert_allclose(np.bincount(labels[test], minlength=4), [5, 3, 2, 2.5], atol=1)


def test_folds_are_stable_for_a_seed_and_change_with_it():
    labels = np.arange(30) % 3
    a, b, c = (stratified_folds(labels, 3, s) for s in (1, 1, 2))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_class_rarer_than_k_warns_and_stays_in_training():
    labels = np.array([0] * 10 + [1] * 10 + [2])
    with pytest.warns(UserWarning, match=r"classes \[2\] have fewer than k=5"):
        folds = stratified_folds(labels, 5, seed=0)
    for train, test in folds:
        assert 20 in train and 20 not in test
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(20))


def test_folds_without_rare_classes_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_folds(np.arange(20) % 2, 2, seed=0)


def test_holdout_is_stratified_disjoint_and_fixed_by_the_seed():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 19 + [3])
    kept, held = holdout_split(labels, 0.2, seed=4)
    assert len(held) == 20 and not set(kept) & set(held) and len(kept) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [10, 6, 4]  # stratified; the single class 3 stays kept
    assert 99 in kept
    assert np.array_equal(holdout_split(labels, 0.2, seed=4)[1], held)
    assert not np.array_equal(holdout_split(labels, 0.2, seed=5)[1], held)
    kept, held = holdout_split(labels, 0.0, seed=4)
    assert len(kept) == 100 and len(held) == 0
