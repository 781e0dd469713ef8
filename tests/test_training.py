import numpy as np
import optuna
import pytest
import torch

from shared.cleaning import load_dataset
from shared.datasets import make_spec
from shared.splits import make_splits
from shared.training import EncodedData, HyperParams, NonFiniteLossError, Trainer, TrainSettings
from worker.objective import TensorBoardLog, train_trial

PARAMS = HyperParams(embedding_dim=8, d_model=8, num_layers=2, bidirectional=True, dropout=0.1,
                     learning_rate=3e-3, weight_decay=1e-4)
SETTINGS = TrainSettings(max_epochs=3, patience=5, batch_size=32)


@pytest.fixture
def fold(small_csv):
    dataset = load_dataset(make_spec(str(small_csv), smiles_column="smiles", label_column="p_np"))
    split = make_splits(dataset.smiles, dataset.labels, n_folds=3, kind="stratified", dev_fraction=0.2, seed=0)[0]
    return EncodedData(dataset.smiles, dataset.labels, torch.device("cpu")), split


def _run(data, split, seed):
    trainer = Trainer(data, split, PARAMS, SETTINGS, seed)
    metrics = list(trainer.epochs())
    trainer.restore_best()
    return trainer, metrics


def test_same_seed_same_numbers(fold):
    data, split = fold
    first, first_metrics = _run(data, split, seed=7)
    second, second_metrics = _run(data, split, seed=7)
    assert [(m.train_loss, m.dev_auc) for m in first_metrics] == [(m.train_loss, m.dev_auc) for m in second_metrics]
    assert first.evaluate(split.held_out) == second.evaluate(split.held_out)
    _, other_metrics = _run(data, split, seed=8)
    assert [m.train_loss for m in other_metrics] != [m.train_loss for m in first_metrics]


def test_best_dev_epoch_weights_are_kept(fold):
    data, split = fold
    trainer, metrics = _run(data, split, seed=3)
    best = max(metrics, key=lambda m: m.dev_auc)
    assert trainer.best_epoch == best.epoch
    assert trainer.evaluate(split.dev)[1] == pytest.approx(best.dev_auc)


def test_non_finite_loss_raises(fold):
    data, split = fold
    trainer = Trainer(data, split, PARAMS, SETTINGS, seed=0)
    with torch.no_grad():
        trainer.model.embedding.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="nan"):
        next(trainer.epochs())


def test_objective_is_dev_auc(fold):
    """The trial value, which the sampler reads, is the dev AUC; the held-out AUC is only a user attribute."""
    data, split = fold
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    value = train_trial(trial, PARAMS, data, split, SETTINGS, seed=11, tensorboard=TensorBoardLog(None, "s", 0),
                        should_stop=lambda: False, label="test")
    study.tell(trial, value)
    frozen = study.trials[0]

    reference, metrics = _run(data, split, seed=11)
    dev_auc = max(m.dev_auc for m in metrics)
    held_out_auc = reference.evaluate(split.held_out)[1]
    assert frozen.value == pytest.approx(dev_auc), "the objective must be the best dev AUC"
    assert frozen.user_attrs["held_out_auc"] == pytest.approx(held_out_auc)
    assert frozen.value != pytest.approx(frozen.user_attrs["held_out_auc"])
    assert max(frozen.intermediate_values.values()) == pytest.approx(frozen.value)
    assert set(np.intersect1d(split.held_out, np.concatenate([split.train, split.dev]))) == set()
