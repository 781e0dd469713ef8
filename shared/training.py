"""Training and evaluation of one configuration on one fold's split."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from shared.model import SmilesLSTM
from shared.splits import FoldSplit
from shared.tokenizer import Vocabulary, encode_all

# Batches are drawn from pools of this many batches sorted by length, so that a
# batch holds molecules of similar length and little padding is packed.
_LENGTH_POOL_BATCHES = 50


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Training stopped because the worker was asked to stop."""


@dataclass(frozen=True)
class HyperParams:
    embedding_dim: int
    d_model: int
    num_layers: int
    bidirectional: bool
    dropout: float
    learning_rate: float
    weight_decay: float


@dataclass(frozen=True)
class TrainSettings:
    max_epochs: int
    patience: int
    batch_size: int


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    dev_loss: float
    dev_auc: float
    seconds: float


class EncodedData:
    """All molecules tokenized once, kept on the training device."""

    def __init__(self, smiles: list[str], labels: np.ndarray, device: torch.device):
        self.vocab = Vocabulary.from_smiles(smiles)
        tokens, lengths = encode_all(self.vocab, smiles)
        self.device = device
        self.tokens = torch.from_numpy(tokens).to(device)
        self.lengths = torch.from_numpy(lengths)  # stays on the CPU for packing
        self.labels = torch.from_numpy(labels.astype(np.float32)).to(device)
        self.labels_numpy = labels

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(indices)
        lengths = self.lengths[index]
        width = int(lengths.max())
        device_index = index.to(self.device)
        return self.tokens[device_index, :width], lengths, self.labels[device_index]


def training_batches(indices: np.ndarray, lengths: torch.Tensor, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length inside pools of batches, cut into batches and shuffle their order."""
    shuffled = rng.permutation(indices)
    pool = batch_size * _LENGTH_POOL_BATCHES
    batches = []
    for start in range(0, shuffled.size, pool):
        chunk = shuffled[start : start + pool]
        chunk = chunk[np.argsort(lengths[torch.from_numpy(chunk)].numpy(), kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, chunk.size, batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def evaluation_batches(indices: np.ndarray, lengths: torch.Tensor, batch_size: int) -> list[np.ndarray]:
    ordered = indices[np.argsort(lengths[torch.from_numpy(indices)].numpy(), kind="stable")]
    return [ordered[i : i + batch_size] for i in range(0, ordered.size, batch_size)]


class Trainer:
    """Train one model on a fold, keeping the weights of the best dev epoch."""

    def __init__(
        self,
        data: EncodedData,
        split: FoldSplit,
        params: HyperParams,
        settings: TrainSettings,
        seed: int,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.data, self.split, self.settings = data, split, settings
        self.should_stop = should_stop
        self.model = SmilesLSTM(
            len(data.vocab), params.embedding_dim, params.d_model, params.num_layers,
            params.bidirectional, params.dropout,
        ).to(data.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay,
        )
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.best_dev_auc = -math.inf
        self.best_epoch = 0
        self._best_state: dict[str, torch.Tensor] | None = None

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def epochs(self) -> Iterator[EpochMetrics]:
        """Train epoch by epoch, yielding dev metrics; stops after `patience` epochs without a better dev AUC."""
        epochs_without_gain = 0
        for epoch in range(1, self.settings.max_epochs + 1):
            started = time.monotonic()
            train_loss = self._train_epoch()
            dev_loss, dev_auc = self.evaluate(self.split.dev)
            if dev_auc > self.best_dev_auc:
                self.best_dev_auc, self.best_epoch = dev_auc, epoch
                self._best_state = copy.deepcopy(self.model.state_dict())
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
            yield EpochMetrics(epoch, train_loss, dev_loss, dev_auc, time.monotonic() - started)
            if epochs_without_gain >= self.settings.patience:
                return

    def _train_epoch(self) -> float:
        self.model.train()
        total, count = 0.0, 0
        for indices in training_batches(self.split.train, self.data.lengths, self.settings.batch_size, self.rng):
            if self.should_stop():
                raise TrainingInterrupted("stop requested")
            tokens, lengths, targets = self.data.batch(indices)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(tokens, lengths), targets)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"training loss became {loss.item()} after {count} molecules")
            loss.backward()
            self.optimizer.step()
            total += loss.item() * indices.size
            count += indices.size
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self, indices: np.ndarray) -> np.ndarray:
        """Return probabilities for the given molecules, in the order of `indices`."""
        self.model.eval()
        scores = np.empty(indices.size, dtype=np.float64)
        position = {int(index): i for i, index in enumerate(indices)}
        for batch in evaluation_batches(indices, self.data.lengths, max(self.settings.batch_size, 256)):
            tokens, lengths, _ = self.data.batch(batch)
            probabilities = torch.sigmoid(self.model(tokens, lengths)).cpu().numpy()
            scores[[position[int(i)] for i in batch]] = probabilities
        return scores

    def evaluate(self, indices: np.ndarray) -> tuple[float, float]:
        """Return (BCE loss, ROC-AUC) on the given molecules."""
        scores = self.predict(indices)
        targets = self.data.labels_numpy[indices]
        clipped = np.clip(scores, 1e-7, 1 - 1e-7)
        loss = float(-np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)))
        return loss, float(roc_auc_score(targets, scores))

    def restore_best(self) -> None:
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
