"""A dataset scored a chunk at a time (what evaluate.py does with a file) has the scores of the
whole set at once: the folds' majority vote on another domain, and each fold on its own test
samples."""
from dataclasses import replace

import numpy as np
import pytest

from ncawss import make_synthetic
from ncawss.data import iter_dataset, read_dataset, write_dataset
from ncawss.method.inference.domain import fold_on_dataset
from ncawss.method.inference.predict import predict
from ncawss.method.scoring import evaluation
from ncawss.method.scoring.ensemble import fold_scores, own_fold_scores, score_chunks, score_dataset, scored_chunks
from ncawss.method.scoring.scores import Scores
from test_predict import random_ensemble


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    """90 samples of 24 px, every seventh without a mask, in row groups of 13 samples."""
    data = make_synthetic(n=90, size=24, seed=6)
    data = replace(data, masks=[None if i % 7 == 3 else m for i, m in enumerate(data.masks)])
    return write_dataset(data, tmp_path_factory.mktemp("chunks") / "data.parquet")


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(evaluation, "CHUNK", 8)  # chunks of 32 samples: lcm(batch size 8, the authors' 32)
    assert evaluation.chunk_size(8) == 32


def test_the_folds_vote_read_a_chunk_at_a_time_scores_as_the_whole_set(dataset_file, small_chunks):
    ensemble = random_ensemble(fire_rate=0.5, k=3, size=16)  # stochastic read-out: its noise must carry on
    whole = score_dataset(ensemble, read_dataset(dataset_file))
    chunks = list(scored_chunks(iter_dataset(dataset_file, rows=13), evaluation.chunk_size(8)))
    assert [len(c) for c in chunks] == [32, 32, 13]  # the 77 samples with masks
    chunked = score_chunks(ensemble, chunks)
    np.testing.assert_equal(chunked.configured.as_dict(), whole.configured.as_dict())
    assert chunked.variants.keys() == whole.variants.keys() and whole.variants
    for name in whole.variants:
        np.testing.assert_equal(chunked.variants[name].as_dict(), whole.variants[name].as_dict())
    assert len(set(whole.configured.fold_iou)) == 3  # the folds differ
    as_read = score_chunks(ensemble, iter_dataset(dataset_file, rows=13))  # regrouped inside: the same values
    np.testing.assert_equal(as_read.configured.as_dict(), whole.configured.as_dict())


def test_each_folds_own_test_samples_read_a_chunk_at_a_time_score_as_the_whole_set(dataset_file, small_chunks):
    ensemble = random_ensemble(fire_rate=0.5, k=2, size=16)
    data = read_dataset(dataset_file)
    test_ids = [data.ids[0::2], data.ids[1::2]]  # in file order, as a sweep's folds are
    whole = Scores.mean([fold_scores(ensemble.config, fold, data.subset(range(f, len(data), 2)))
                         for f, fold in enumerate(ensemble.folds)])
    chunked = own_fold_scores(ensemble, test_ids, iter_dataset(dataset_file, rows=13))
    np.testing.assert_equal(chunked.as_dict(), whole.as_dict())
    assert chunked.accuracy == whole.accuracy and not np.isnan(chunked.iou64_pooled)


def test_a_fold_on_another_dataset_read_a_chunk_at_a_time_has_the_whole_sets_quality_and_scores(dataset_file,
                                                                                                 small_chunks):
    ensemble = random_ensemble(fire_rate=0.5, k=1, size=16)
    config, fold = ensemble.config, ensemble.folds[0]
    data = read_dataset(dataset_file)
    quality, scores = fold_on_dataset(config, fold, ensemble.classes, iter_dataset(dataset_file, rows=13))
    assert quality == float(np.mean([p.quality for p in predict(ensemble, data.images, runs=0)]))
    np.testing.assert_equal(scores.as_dict(), fold_scores(config, fold, data).as_dict())
    unmasked = write_dataset(replace(data, masks=None, nucleus=None), dataset_file.parent / "unmasked.parquet")
    assert fold_on_dataset(config, fold, ensemble.classes, iter_dataset(unmasked, rows=13)) == (quality, None)
