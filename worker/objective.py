"""One trial: train the sampled configuration on its fold and record the results."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import optuna

from shared.splits import FoldSplit
from shared.training import EncodedData, HyperParams, Trainer, TrainSettings

logger = logging.getLogger(__name__)


class TensorBoardLog:
    """Per-trial TensorBoard writer under <logdir>/<study>/trial-<n>; does nothing without a logdir."""

    def __init__(self, logdir: Path | None, study_name: str, trial_number: int):
        self.writer = None
        if logdir is not None:
            # Imported here: the TensorBoard writer pulls in the tensorboard package.
            from torch.utils.tensorboard import SummaryWriter

            self.path = logdir / study_name / f"trial-{trial_number}"
            self.writer = SummaryWriter(log_dir=str(self.path))

    def epoch(self, epoch: int, train_loss: float, dev_loss: float, dev_auc: float) -> None:
        if self.writer:
            self.writer.add_scalar("loss/train", train_loss, epoch)
            self.writer.add_scalar("loss/dev", dev_loss, epoch)
            self.writer.add_scalar("auc/dev", dev_auc, epoch)

    def hparams(self, params: HyperParams, metrics: dict[str, float]) -> None:
        """Write the hyperparameters with the final metrics for TensorBoard's HParams view."""
        if self.writer:
            self.writer.add_hparams(
                dict(vars(params)),
                {f"hparam/{k}": v for k, v in metrics.items()},
                run_name=".",
            )

    def close(self) -> None:
        if self.writer:
            self.writer.close()
            self.writer = None


def train_trial(
    trial: optuna.Trial,
    params: HyperParams,
    data: EncodedData,
    split: FoldSplit,
    settings: TrainSettings,
    seed: int,
    tensorboard: TensorBoardLog,
    should_stop: Callable[[], bool],
    label: str,
) -> float:
    """Train, report dev AUC per epoch and return the best dev AUC.

    The held-out part of the fold is evaluated once, with the best-dev-epoch
    weights, and stored as the user attribute ``held_out_auc``; it never reaches
    the sampler. Pruned trials store it too before raising TrialPruned.
    """
    trainer = Trainer(data, split, params, settings, seed, should_stop)
    trial.set_user_attr("n_parameters", trainer.n_parameters())
    pruned = False
    for metrics in trainer.epochs():
        tensorboard.epoch(metrics.epoch, metrics.train_loss, metrics.dev_loss, metrics.dev_auc)
        logger.debug("%s epoch %d: train loss %.4f, dev AUC %.4f (%.1f s)", label, metrics.epoch,
                     metrics.train_loss, metrics.dev_auc, metrics.seconds)
        trial.report(metrics.dev_auc, metrics.epoch)
        if trial.should_prune():
            pruned = True
            break

    trainer.restore_best()
    held_out_loss, held_out_auc = trainer.evaluate(split.held_out)
    trial.set_user_attr("held_out_auc", held_out_auc)
    trial.set_user_attr("held_out_loss", held_out_loss)
    trial.set_user_attr("best_epoch", trainer.best_epoch)
    trial.set_user_attr("dev_auc", trainer.best_dev_auc)
    tensorboard.hparams(params, {"dev_auc": trainer.best_dev_auc, "held_out_auc": held_out_auc})
    if pruned:
        raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} with dev AUC {metrics.dev_auc:.4f}")
    return trainer.best_dev_auc
