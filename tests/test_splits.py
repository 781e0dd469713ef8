import numpy as np
import pytest

from shared.cleaning import load_dataset
from shared.datasets import make_spec
from shared.errors import ConfigError
from shared.splits import FoldSplit, make_splits, murcko_scaffold


@pytest.fixture(scope="module")
def bbbp(bbbp_path):
    return load_dataset(make_spec("bbbp", bbbp_path=str(bbbp_path)))


@pytest.mark.parametrize("kind", ["stratified", "scaffold"])
def test_folds_partition_the_molecules(bbbp, kind):
    folds = make_splits(bbbp.smiles, bbbp.labels, n_folds=5, kind=kind, dev_fraction=0.2, seed=0)
    n = len(bbbp.smiles)
    held_out = np.concatenate([f.held_out for f in folds])
    assert sorted(held_out.tolist()) == list(range(n)), "every molecule is held out exactly once"
    for fold in folds:
        parts = np.concatenate([fold.train, fold.dev, fold.held_out])
        assert sorted(parts.tolist()) == list(range(n)), "train, dev and held-out cover the data once"
        visible = fold.train.size + fold.dev.size
        assert fold.dev.size == pytest.approx(0.2 * visible, abs=1)


def test_stratified_folds_keep_the_class_ratio(bbbp):
    folds = make_splits(bbbp.smiles, bbbp.labels, n_folds=5, kind="stratified", dev_fraction=0.2, seed=0)
    overall = bbbp.labels.mean()
    for fold in folds:
        for part in (fold.train, fold.dev, fold.held_out):
            assert bbbp.labels[part].mean() == pytest.approx(overall, abs=0.02)


def test_scaffold_folds_never_share_a_scaffold(bbbp):
    folds = make_splits(bbbp.smiles, bbbp.labels, n_folds=5, kind="scaffold", dev_fraction=0.2, seed=0)
    scaffolds = np.array([murcko_scaffold(s) for s in bbbp.smiles])
    for fold in folds:
        visible = set(scaffolds[np.concatenate([fold.train, fold.dev])])
        assert visible.isdisjoint(scaffolds[fold.held_out])


def test_splits_are_deterministic_and_seeded(bbbp):
    first = make_splits(bbbp.smiles, bbbp.labels, n_folds=3, kind="stratified", dev_fraction=0.2, seed=1)
    again = make_splits(bbbp.smiles, bbbp.labels, n_folds=3, kind="stratified", dev_fraction=0.2, seed=1)
    other = make_splits(bbbp.smiles, bbbp.labels, n_folds=3, kind="stratified", dev_fraction=0.2, seed=2)
    assert all(np.array_equal(a.held_out, b.held_out) for a, b in zip(first, again))
    assert not np.array_equal(first[0].held_out, other[0].held_out)


def test_encoding_round_trip(bbbp):
    fold = make_splits(bbbp.smiles, bbbp.labels, n_folds=5, kind="stratified", dev_fraction=0.2, seed=0)[2]
    text = fold.encode(len(bbbp.smiles))
    decoded = FoldSplit.decode(text, len(bbbp.smiles))
    for name in ("train", "dev", "held_out"):
        assert np.array_equal(getattr(decoded, name), getattr(fold, name)), name
    assert len(text) < 2000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_folds": 1}, "folds=1"),
        ({"dev_fraction": 1.0}, "dev fraction"),
        ({"kind": "random"}, "split kind 'random'"),
    ],
)
def test_invalid_split_settings(bbbp, kwargs, message):
    settings = {"n_folds": 5, "kind": "stratified", "dev_fraction": 0.2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_splits(bbbp.smiles, bbbp.labels, **settings)
