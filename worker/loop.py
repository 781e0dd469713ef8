"""The worker loop: claim a trial in the fold with the most remaining budget, train it, repeat."""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from shared.cleaning import load_dataset
from shared.errors import ExperimentMismatchError, HpoError
from shared.experiment import ExperimentRecord, load_experiment
from shared.liveness import heartbeat_interval, keep_alive, sweep_stale_trials
from shared.optimization import build_pruner, build_sampler, trial_seed
from shared.recovery import enqueue_retry, fail_and_retry
from shared.resilience import retry_on_disconnect
from shared.search_space import suggest
from shared.splits import FoldSplit
from shared.storage import experiment_lock, is_journal, mask_url, open_storage
from shared.training import EncodedData, NonFiniteLossError, TrainingInterrupted, TrainSettings
from worker.objective import TensorBoardLog, train_trial

logger = logging.getLogger(__name__)

EXIT_DONE = 0
EXIT_TOO_MANY_FAILURES = 3


@dataclass(frozen=True)
class WorkerOptions:
    storage: str
    experiment: str
    worker_id: str
    device: torch.device
    logdir: Path | None
    data_path: str | None
    connect_timeout_s: float
    heartbeat_interval: int | None
    grace_period: int | None
    poll_interval_s: float = 5.0
    max_consecutive_failures: int = 3


@dataclass
class _Fold:
    study: optuna.Study
    split: FoldSplit


class Worker:
    def __init__(self, options: WorkerOptions, stop: threading.Event):
        self.options = options
        self.stop = stop
        self.hostname = socket.gethostname()
        # Study name -> {trial number: monotonic time first seen without a worker}.
        self._orphans_seen: dict[str, dict[int, float]] = {}
        # A journal's file lock cannot be lost, so a trial without a worker seen
        # under it is an orphan at once; PostgreSQL waits out a claim that
        # continued after its advisory lock was lost.
        self._orphan_grace_s = 0.0 if is_journal(options.storage) else float(options.grace_period or 300)
        # Whether the last claim found every fold with its budget of finished trials.
        self._folds_done = False

    def run(self) -> int:
        """Serve the experiment until every fold has its budget; return the exit status."""
        options = self.options
        self.storage = open_storage(
            options.storage,
            create_schema=False,
            connect_timeout_s=options.connect_timeout_s,
            heartbeat_interval=options.heartbeat_interval,
            grace_period=options.grace_period,
            stale_trial_callback=self._on_stale_trial,
            application_name=f"hpo-worker {options.worker_id}",
        )
        self.record = load_experiment(self.storage, options.experiment)
        self.data = self._load_data(self.record)
        self.folds = self._load_folds(self.record)
        logger.info("worker %s serves %s (%d folds, %d trials each) from %s on %s",
                    options.worker_id, options.experiment, len(self.folds),
                    self.record.settings.trials_per_fold, mask_url(options.storage), options.device)

        consecutive_failures = 0
        while not self.stop.is_set():
            claim = retry_on_disconnect(self._claim_trial, f"worker {options.worker_id} claim")
            if claim is None:
                if self._folds_done:
                    logger.info("worker %s: every fold has its budget; exiting", options.worker_id)
                    return EXIT_DONE
                self.stop.wait(options.poll_interval_s)
                continue
            outcome = self._run_trial(*claim)
            if outcome == "failed":
                consecutive_failures += 1
                if consecutive_failures >= options.max_consecutive_failures:
                    logger.error(
                        "worker %s: %d trials failed in a row; exiting instead of failing more "
                        "(see each trial's `error` user attribute)", options.worker_id, consecutive_failures,
                    )
                    return EXIT_TOO_MANY_FAILURES
            elif outcome in ("complete", "pruned"):
                consecutive_failures = 0
        logger.info("worker %s: stop requested; exiting", options.worker_id)
        return EXIT_DONE

    def _load_data(self, record: ExperimentRecord) -> EncodedData:
        path = self.options.data_path or record.dataset_path
        spec = record.settings.dataset_spec(path)
        dataset = load_dataset(spec)
        if dataset.fingerprint != record.fingerprint:
            raise ExperimentMismatchError(
                f"worker data {spec.describe()} has fingerprint {dataset.fingerprint[:12]} "
                f"({len(dataset.smiles)} molecules), but experiment {record.name} was created from data "
                f"with fingerprint {record.fingerprint[:12]} ({record.n_molecules} molecules): "
                "give the worker the coordinator's data file with --data / HPO_DATA"
            )
        return EncodedData(dataset.smiles, dataset.labels, self.options.device)

    def _load_folds(self, record: ExperimentRecord) -> dict[int, _Fold]:
        settings = record.settings
        # A different sampler seed per worker: with one fixed seed every worker
        # would propose the same first configurations.
        worker_seed = trial_seed(settings.seed, self.options.worker_id, 0)
        folds = {}
        for fold in record.folds:
            study = optuna.load_study(
                study_name=fold.study_name, storage=self.storage,
                sampler=build_sampler(settings.sampler, worker_seed + fold.fold),
                pruner=build_pruner(settings.pruner),
            )
            folds[fold.fold] = _Fold(study, FoldSplit.decode(fold.split, record.n_molecules))
        return folds

    def _counted_trials(self, study: optuna.Study) -> tuple[list[optuna.trial.FrozenTrial], int]:
        """Return the RUNNING trials and the number of finished (COMPLETE or PRUNED) ones."""
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        running = [t for t in trials if t.state == TrialState.RUNNING]
        return running, len(trials) - len(running)

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        enqueue_retry(study, trial, "heartbeat stale: its worker stopped responding", self.record.settings.max_retries)

    def _claim_trial(self) -> tuple[int, optuna.Trial] | None:
        """Start a trial in the fold with the most open budget, or return None if none has any.

        Counting and asking happen under the experiment lock, so concurrent
        workers never start more trials than a fold's budget. WAITING trials
        (the baseline, retries) are popped first by `ask`.
        """
        budget = self.record.settings.trials_per_fold
        with experiment_lock(self.options.storage, self.storage, self.options.experiment) as lock:
            candidates = []
            self._folds_done = True
            for index, fold in self.folds.items():
                sweep_stale_trials(fold.study)  # every fold, so no fold keeps stale RUNNING trials
                running_trials, finished = self._counted_trials(fold.study)
                running = len(running_trials) - self._sweep_orphans(fold.study, running_trials)
                self._folds_done &= finished >= budget
                open_slots = budget - finished - running
                if open_slots > 0:
                    candidates.append((open_slots, -running, -index))
            if not candidates:
                return None
            index = -max(candidates)[2]
            trial = self._start_trial(self.folds[index].study)
        if trial is not None and lock.lost:
            trial = self._confirm_claim(index, trial)
        return None if trial is None else (index, trial)

    def _start_trial(self, study: optuna.Study) -> optuna.Trial | None:
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize;
            # this loop runs its own heartbeat thread (shared.liveness).
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            trial = study.ask()
        try:
            if heartbeat_interval(self.storage) is not None:
                # Optuna treats a RUNNING trial without any heartbeat as alive
                # forever, so the first beat is recorded before the lock is freed.
                self.storage.record_heartbeat(trial._trial_id)
            trial.set_user_attr("worker_id", self.options.worker_id)
        except UpdateFinishedTrialError:
            # Another worker failed it as an orphan: this claim lost its lock
            # during a connection drop, and the other worker saw an unowned trial.
            logger.warning("%s trial %d was failed by another worker before it started; claiming again",
                           study.study_name, trial.number)
            return None
        return trial

    def _confirm_claim(self, index: int, trial: optuna.Trial) -> optuna.Trial | None:
        """Check a trial claimed while the lock was lost; fail it if the fold went over budget."""
        study = self.folds[index].study
        with experiment_lock(self.options.storage, self.storage, self.options.experiment):
            running_trials, finished = self._counted_trials(study)
            if finished + len(running_trials) <= self.record.settings.trials_per_fold:
                return trial
            logger.warning("%s trial %d was claimed while the experiment lock was lost and the fold is "
                           "over budget; failing it without retry", study.study_name, trial.number)
            try:
                trial.set_user_attr("fail_reason", "claimed without the experiment lock, over budget")
                study.tell(trial, state=TrialState.FAIL)
            except (UpdateFinishedTrialError, ValueError):
                pass  # already failed by another worker
        return None

    def _sweep_orphans(self, study: optuna.Study, running_trials: list[optuna.trial.FrozenTrial]) -> int:
        """Fail and retry the RUNNING trials that no worker owns; return how many were failed.

        Claims set `worker_id` before they release the experiment lock, so a
        RUNNING trial without it comes from a claim that a lost database
        connection cut short, or from one still running after its lock was
        lost. Such a trial has no heartbeat, and Optuna's stale check skips
        trials without one. It is failed once this worker has seen it unowned
        for a grace period, so a slow claim in progress keeps its trial.
        """
        now = time.monotonic()
        previously_seen = self._orphans_seen.get(study.study_name, {})
        seen: dict[int, float] = {}
        failed = 0
        for trial in running_trials:
            if "worker_id" in trial.user_attrs:
                continue
            first_seen = seen[trial.number] = previously_seen.get(trial.number, now)
            if now - first_seen < self._orphan_grace_s:
                continue
            logger.warning("%s trial %d has had no worker for %.0f s; failing it as orphaned",
                           study.study_name, trial.number, now - first_seen)
            failed += fail_and_retry(study, trial, "orphaned by an interrupted claim", self.record.settings.max_retries)
        self._orphans_seen[study.study_name] = seen
        return failed

    def _run_trial(self, index: int, trial: optuna.Trial) -> str:
        """Train one claimed trial and tell its result; returns complete, pruned, failed, interrupted or late."""
        study = self.folds[index].study
        settings = self.record.settings
        label = f"worker {self.options.worker_id} {study.study_name} trial {trial.number}"
        seed = trial_seed(settings.seed, study.study_name, trial.number)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("hostname", self.hostname)
        trial.set_user_attr("device", str(self.options.device))
        params = suggest(trial, settings.search_space)
        logger.info("%s started: %s", label, trial.params)
        tensorboard = TensorBoardLog(self.options.logdir, study.study_name, trial.number)
        train_settings = TrainSettings(settings.max_epochs, settings.patience, settings.batch_size)

        state, value = TrialState.COMPLETE, None
        with keep_alive(self.storage, trial._trial_id, label):
            try:
                value = train_trial(trial, params, self.data, self.folds[index].split, train_settings,
                                    seed, tensorboard, self.stop.is_set, label)
            except optuna.TrialPruned as pruned:
                state = TrialState.PRUNED
                logger.info("%s %s", label, pruned)
            except TrainingInterrupted:
                with experiment_lock(self.options.storage, self.storage, self.options.experiment):
                    frozen = study._storage.get_trial(trial._trial_id)
                    failed = fail_and_retry(study, frozen, f"worker {self.options.worker_id} was stopped",
                                            settings.max_retries)
                if failed:
                    logger.warning("%s interrupted by a stop request; failed it and enqueued a retry", label)
                else:
                    logger.warning("%s interrupted by a stop request; another worker had failed it already", label)
                return "interrupted"
            except UpdateFinishedTrialError:
                logger.warning("%s was already finished by another worker (stale heartbeat?); "
                               "discarding its late result", label)
                return "late"
            except Exception as error:  # noqa: BLE001 - any trial error fails only that trial
                return self._fail_trial(study, trial, label, error)
            finally:
                tensorboard.close()
        return self._tell(study, trial, state, value, label)

    def _fail_trial(self, study: optuna.Study, trial: optuna.Trial, label: str, error: Exception) -> str:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            kind = "CUDA out of memory"
        elif isinstance(error, NonFiniteLossError):
            kind = "non-finite loss"
        else:
            kind = type(error).__name__
        message = f"{kind}: {error}"[:1000]
        logger.warning("%s failed: %s", label, message, exc_info=not isinstance(error, (NonFiniteLossError, HpoError)))
        try:
            trial.set_user_attr("error", message)
            study.tell(trial, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            logger.warning("%s was already finished by another worker; nothing to record", label)
        return "failed"

    def _tell(self, study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None, label: str) -> str:
        try:
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        except (UpdateFinishedTrialError, ValueError):
            # Another worker failed this trial as stale (a network cut or a
            # stall past the grace period) and enqueued its retry; the retry's
            # result counts, this one is discarded.
            logger.warning("%s finished after it was failed as stale; discarding its late result", label)
            return "late"
        held_out = study._storage.get_trial(trial._trial_id).user_attrs.get("held_out_auc")
        logger.info("%s %s: dev AUC %s, held-out AUC %s", label, state.name.lower(),
                    f"{value:.4f}" if value is not None else "n/a", f"{held_out:.4f}" if held_out is not None else "n/a")
        return state.name.lower()
