"""Predicting masks for new images: the quality score's definition and use, the predict job's
outputs and its handling of bad input (real files, real subprocesses; no Ray)."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

import ncawss
from conftest import ROOT
from ncawss import Ensemble, FoldModel, FoldRecord, NCAClassifier, Predictor, predict
from ncawss.method.inference.quality import cross_fold_agreement, pairwise_iou
from ncawss.method.scoring import evaluation
from ncawss.method.scoring.evaluation import evaluate
from ncawss.method.scoring.metrics import majority_vote
from quality_vs_iou import fade, synthetic_columns  # bench/quality_vs_iou.py


def random_ensemble(fire_rate: float, k: int = 3, size: int = 16) -> Ensemble:
    """k untrained fold models with random update weights, so their masks differ."""
    config = ncawss.TrainConfig(channels=8, hidden=8, head_hidden=8, steps=4, fire_rate=fire_rate, image_size=size,
                                batch_size=8)
    folds = []
    for i in range(k):
        torch.manual_seed(i)
        model = NCAClassifier.from_config(config, 5)
        torch.nn.init.normal_(model.nca.fc1.weight, std=0.3)
        folds.append(FoldModel(state_dict=model.state_dict(), norm_mean=[0.5] * 3, norm_std=[0.25] * 3, n_classes=5))
    return Ensemble(config=config, folds=folds, classes=[f"class{i}" for i in range(5)])


def test_pairwise_iou_matches_iou_and_counts_both_empty_as_one():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 9, 7)) > 0.5
    masks[3] = False
    table = pairwise_iou(np.concatenate([masks, masks[3:]]))
    for i in range(4):
        for j in range(4):
            assert table[i, j] == pytest.approx(ncawss.iou(masks[i], masks[j]))
    assert table[3, 4] == 1.0


def test_stability_is_the_mean_iou_over_pairs_from_different_folds():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 2, 6, 6)) > 0.4   # 3 folds x 2 runs
    pairs = [ncawss.iou(masks[i, r], masks[j, s]) for i in range(3) for j in range(3) if i < j
             for r in range(2) for s in range(2)]
    assert cross_fold_agreement(masks) == pytest.approx(np.mean(pairs))
    assert cross_fold_agreement(masks[:1]) == pytest.approx(ncawss.iou(masks[0, 0], masks[0, 1]))  # one model


def test_with_fire_rate_one_stability_equals_the_folds_agreement(small_synthetic):
    images = small_synthetic.images[:12]
    certain = predict(random_ensemble(fire_rate=1.0), images, runs=3)
    assert [p.signals.stability for p in certain] == pytest.approx([p.agreement for p in certain], abs=1e-12)
    assert min(p.agreement for p in certain) < 0.95  # the folds do disagree: the equality is not 1 == 1
    # With random fire masks the runs of one fold differ, and stability sees it.
    noisy = predict(random_ensemble(fire_rate=0.5), images, runs=3)
    assert any(abs(p.signals.stability - p.agreement) > 1e-3 for p in noisy)


def test_stability_runs_are_batched_and_reproducible(small_synthetic):
    ensemble = random_ensemble(fire_rate=0.5)
    predictor = Predictor(ensemble, runs=4)
    batches = [[] for _ in predictor.models]
    for model, sizes in zip(predictor.models, batches):
        model.register_forward_pre_hook(lambda module, args, sizes=sizes: sizes.append(args[0].shape[0]))
    predictor.chunk(small_synthetic.images[:6])
    # per fold: one pass for the read-out, one pass holding all 4 runs of the 6 images
    assert batches == [[6, 24]] * len(predictor.models)
    first = predict(ensemble, small_synthetic.images[:10], runs=4)
    again = predict(ensemble, small_synthetic.images[:10], runs=4)
    assert [p.signals for p in first] == [p.signals for p in again]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first, again))
    without_runs = predict(ensemble, small_synthetic.images[:10], runs=0)
    assert all(np.isnan(p.signals.stability) for p in without_runs)
    assert [p.quality for p in without_runs] == [p.quality for p in first]  # the score needs no runs


def test_an_image_s_quality_and_signals_do_not_depend_on_the_images_beside_it(small_synthetic):
    ensemble = random_ensemble(fire_rate=1.0)   # no fire noise, so a chunk's noise draws cannot differ
    together = predict(ensemble, small_synthetic.images[:8], runs=2)
    alone = predict(ensemble, small_synthetic.images[5:6], runs=2)[0]
    assert alone.quality == pytest.approx(together[5].quality, abs=1e-12)
    assert alone.signals.columns() == pytest.approx(together[5].signals.columns(), abs=1e-6)
    assert alone.quality == pytest.approx(max(alone.signals.colour_agreement.values()) * alone.signals.shape.solidity)


def test_planted_hard_images_get_lower_quality_scores():
    readout = ncawss.Readout(inference="mean_field", smooth=1.0, post="largest")
    config = ncawss.load_config(ROOT / "configs/quickstart.yaml").replace(epochs=20, variants={}, readout=readout)
    train = ncawss.make_synthetic(n=100, size=32, seed=1)
    result = ncawss.cross_validate(config, train, k=2, seed=0)
    ensemble = Ensemble(config=config, folds=[f.model for f in result.folds], classes=train.classes)
    held_out = ncawss.make_synthetic(n=40, size=32, seed=2)  # never seen in training
    truth = held_out.target_masks("cell")
    amounts = [0.0] * 20 + list(np.linspace(0.5, 0.95, 20))
    images = [fade(image, mask, a) for image, mask, a in zip(held_out.images, truth, amounts)]
    predictions = predict(ensemble, images, runs=4)
    quality = np.array([p.quality for p in predictions])
    iou = np.array([ncawss.iou(p.mask, t) for p, t in zip(predictions, truth)])
    assert iou[20:].mean() < iou[:20].mean() - 0.2          # the planted images are hard
    assert quality[20:].mean() < quality[:20].mean()        # and the score says so
    assert spearmanr(quality, iou).statistic > 0.5


def test_on_another_stain_the_quality_score_ranks_masks_better_than_stability():
    """bench/quality_vs_iou.py --synthetic, in one run: trained on synthetic domain a, scored on
    domain b with a third of the images faded. (With a smoothed, largest-component read-out
    stability ranks better on such images: docs/RESULTS.md section 11.)"""
    columns = synthetic_columns(epochs=20)
    iou = columns["iou"]
    assert iou[40:].mean() < iou[:40].mean() - 0.1                     # the faded images are harder
    quality, stability = (spearmanr(columns[name], iou).statistic for name in ("quality", "stability"))
    assert quality > stability + 0.1 and quality > 0.8


def test_predicted_masks_equal_the_majority_vote_evaluation_computes(small_synthetic):
    ensemble = random_ensemble(fire_rate=0.5)
    config = ensemble.config
    predictions = predict(ensemble, small_synthetic.images, runs=2)
    votes = []
    for fold in ensemble.folds:
        test = evaluation.TestSet.prepare(small_synthetic, fold.normalisation, config.image_size)
        votes.append(evaluate(fold.nca(config), test, config, variants=False).configured.masks)
    assert all(np.array_equal(p.mask, v) for p, v in zip(predictions, majority_vote(votes)))


# --- the job ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    ensemble = random_ensemble(fire_rate=0.5, k=2, size=24)
    for i, fold in enumerate(ensemble.folds):
        FoldRecord(model=fold, config=ensemble.config, classes=ensemble.classes, fold=i, test_ids=[],
                   source={"name": "x", "fingerprint": "0"}).save(folder)
    return folder


def run_predict(model_dir, output, *paths, extra=()):
    return subprocess.run([sys.executable, "jobs/predict.py", "--model", str(model_dir), "--images",
                           *map(str, paths), "--output", str(output), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def read_rows(output):
    with open(output / "predictions.csv") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def test_predict_writes_a_mask_and_overlay_per_image_at_its_own_size(model_dir, tmp_path, small_synthetic):
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(40, 40), (57, 33), (24, 90)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(small_synthetic.images[i]).resize((w, h)).save(folder / f"cell{i}.{['png', 'bmp', 'tif'][i]}")
    dataset = ncawss.write_dataset(small_synthetic.subset(range(6)), tmp_path / "six.parquet")
    run = run_predict(model_dir, tmp_path / "out", folder, dataset)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 9
    for i, (w, h) in enumerate(sizes):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"cell{i}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(tmp_path / "out" / "overlays" / f"cell{i}.png").size == (w, h)
        assert float(rows[f"cell{i}"]["area_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-4)
    # Inputs with masks get their true IoU, and the job reports how far the score can be trusted.
    assert all(rows[i]["iou"] != "" for i in small_synthetic.ids[:6]) and rows["cell0"]["iou"] == ""
    assert "Spearman(quality, IoU)" in run.stdout and "lowest-quality quarter" in run.stdout
    signals = {"stability", "fold_agreement", "agree_intensity", "agree_otsu_b", "pc1_share", "separability",
               "margin", "solidity", "eccentricity", "centre_offset"}
    assert signals <= set(rows["cell0"]) and all(rows["cell0"][name] != "" for name in signals)
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 0
    assert {r["label"] for r in rows.values()} <= {f"class{i}" for i in range(5)}
    assert all(0 <= float(r["quality"]) <= 1 and 0 < float(r["probability"]) <= 1 for r in rows.values())


def test_predict_reads_a_dataset_in_chunks_and_writes_what_predict_computes_in_one_piece(model_dir, tmp_path,
                                                                                        small_synthetic):
    """40 images, read chunk by chunk (8 at a time) beside an image file: the masks and rows equal
    predict() over all 40 at once, and the job reports its throughput."""
    dataset = ncawss.write_dataset(small_synthetic, tmp_path / "forty.parquet")
    Image.fromarray(small_synthetic.images[0]).save(tmp_path / "extra.png")
    run = run_predict(model_dir, tmp_path / "out", dataset, tmp_path / "extra.png")
    assert run.returncode == 0, run.stderr[-3000:]
    ensemble = Ensemble.load(model_dir)
    whole = predict(ensemble, small_synthetic.images + [small_synthetic.images[0]])
    rows = read_rows(tmp_path / "out")
    assert list(rows) == [*small_synthetic.ids, "extra"]
    for image_id, expected in zip([*small_synthetic.ids, "extra"], whole):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{image_id}.png")) > 0
        assert np.array_equal(mask, expected.mask), image_id
        assert rows[image_id]["label"] == ensemble.classes[expected.label]
        assert float(rows[image_id]["quality"]) == pytest.approx(expected.quality, abs=1e-4)
    assert "41 images written" in run.stdout and "images/s" in run.stdout


def test_bad_inputs_each_get_one_line_and_the_rest_is_written(model_dir, tmp_path, small_synthetic):
    folder, empty = tmp_path / "images", tmp_path / "empty"
    folder.mkdir()
    empty.mkdir()
    image = small_synthetic.images[0]
    Image.fromarray(image).save(folder / "good.png")
    Image.fromarray(image).convert("L").save(folder / "gray.png")
    Image.fromarray(image).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(image[:6, :6]).save(folder / "tiny.png")
    (folder / "corrupt.png").write_bytes((folder / "good.png").read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(image).save(folder / "disguised.png", format="GIF")
    run = run_predict(model_dir, tmp_path / "out", folder, empty, tmp_path / "missing.png")
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 6 == len(errors), run.stderr
    for name, fault in [("tiny.png", "too small (6x6)"), ("corrupt.png", "corrupt or truncated"),
                        ("notes.txt", "not an image file"), ("disguised.png", "a GIF image"),
                        (str(empty), "empty folder"), ("missing.png", "no such file or folder")]:
        assert any(name in line and fault in line for line in errors), (name, errors)
    assert f"{folder / 'gray.png'}: grayscale (L) image converted to RGB" in run.stderr
    assert f"{folder / 'rgba.png'}: RGBA image converted to RGB (alpha channel dropped)" in run.stderr
    written = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert written == ["good.png", "gray.png", "rgba.png"]
    rows = read_rows(tmp_path / "out")
    assert rows["tiny"]["error"].endswith("needs at least 12 pixels a side") and rows["good"]["error"] == ""
    leftovers = [p for p in (tmp_path / "out").rglob(".*")]
    assert leftovers == []  # nothing half-written


def test_an_unknown_model_or_read_out_stops_before_any_output(model_dir, tmp_path, small_synthetic):
    Image.fromarray(small_synthetic.images[0]).save(tmp_path / "a.png")
    run = run_predict(tmp_path / "nowhere", tmp_path / "out", tmp_path / "a.png")
    assert run.returncode == 255 and "needs --mlflow-uri" in run.stderr and not (tmp_path / "out").exists()
    run = run_predict(model_dir, tmp_path / "out", tmp_path / "a.png", extra=("--read-out", "nope"))
    assert run.returncode == 255 and "--read-out nope" in run.stderr and not (tmp_path / "out").exists()


def test_predict_takes_the_registered_model_and_its_run_uri(model_dir, tmp_path, small_synthetic):
    from mlflow.tracking import MlflowClient

    from ncawss.data import encode_png
    from ncawss.tracking.mlflow_model import log_registered_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("lab", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    example = encode_png(small_synthetic.images[0])
    assert log_registered_model(client, run_id, model_dir, example, "lab", {}).version == 1
    second = log_registered_model(client, run_id, model_dir, example, "lab", {"channels": "8"})
    assert second.version == 2 and second.uri == "models:/lab/2"
    data = ncawss.write_dataset(small_synthetic.subset(range(5)), tmp_path / "five.parquet")
    outputs = {}
    for model in (str(model_dir), "models:/lab/2", f"models:/{second.model_id}", f"runs:/{run_id}/model"):
        out = tmp_path / f"out{len(outputs)}"
        run = run_predict(model, out, data, extra=("--mlflow-uri", uri))
        assert run.returncode == 0, run.stderr[-3000:]
        outputs[model] = [np.asarray(Image.open(out / "masks" / f"{i}.png")) for i in small_synthetic.ids[:5]]
    first = outputs[str(model_dir)]
    assert all(all(np.array_equal(a, b) for a, b in zip(first, masks)) for masks in outputs.values())
    run = run_predict("models:/lab/9", tmp_path / "none", data, extra=("--mlflow-uri", uri))
    assert run.returncode == 255 and "models:/lab/9" in run.stderr and "cannot fetch the model" in run.stderr
