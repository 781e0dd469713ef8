"""Command-line options that define an experiment, shared by `hpo-coordinator create` and `hpo-run`."""

from __future__ import annotations

import argparse

from shared.cli_support import env_default, env_float, env_int
from shared.datasets import make_spec
from shared.errors import ConfigError
from shared.experiment import DEFAULT_PRUNER, DEFAULT_SAMPLER, ExperimentSettings, dataset_identity
from shared.optimization import PRUNERS, SAMPLERS
from shared.search_space import load_search_space
from shared.splits import SPLIT_KINDS
from shared.datasets import DatasetSpec


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("experiment (each flag also reads the HPO_… variable named in its help)")
    group.add_argument("--dataset", default=env_default("HPO_DATASET", "b3db"),
                       help="b3db (built in, default), bbbp (downloaded once), or a CSV/TSV file path [HPO_DATASET]")
    group.add_argument("--smiles-column", default=env_default("HPO_SMILES_COLUMN"),
                       help="SMILES column of a dataset file [HPO_SMILES_COLUMN]")
    group.add_argument("--label-column", default=env_default("HPO_LABEL_COLUMN"),
                       help="label column of a dataset file: 0/1, or two strings with --positive-label [HPO_LABEL_COLUMN]")
    group.add_argument("--positive-label", default=env_default("HPO_POSITIVE_LABEL"),
                       help="the label value of the positive class when labels are strings [HPO_POSITIVE_LABEL]")
    group.add_argument("--bbbp-path", default=env_default("HPO_BBBP_PATH"),
                       help="local BBBP.csv to use as is instead of the download cache [HPO_BBBP_PATH]")
    group.add_argument("--keep-all-fragments", action="store_true",
                       default=env_default("HPO_KEEP_ALL_FRAGMENTS", "") in ("1", "true", "yes"),
                       help="keep every fragment of multi-fragment SMILES instead of the largest one [HPO_KEEP_ALL_FRAGMENTS=1]")
    group.add_argument("--folds", type=int, default=env_int("HPO_FOLDS", 5), help="outer CV folds (default 5) [HPO_FOLDS]")
    group.add_argument("--split", choices=SPLIT_KINDS, default=env_default("HPO_SPLIT", "stratified"),
                       help="stratified by label, or scaffold: Bemis-Murcko groups kept in one fold [HPO_SPLIT]")
    group.add_argument("--dev-fraction", type=float, default=env_float("HPO_DEV_FRACTION", 0.2),
                       help="share of each fold's visible part used as dev set (default 0.2) [HPO_DEV_FRACTION]")
    group.add_argument("--seed", type=int, default=env_int("HPO_SEED", 0), help="seed of the splits and of the trials' training (default 0) [HPO_SEED]")
    group.add_argument("--trials-per-fold", type=int, default=env_int("HPO_TRIALS_PER_FOLD", 20),
                       help="finished trials per fold (default 20) [HPO_TRIALS_PER_FOLD]")
    group.add_argument("--max-epochs", type=int, default=env_int("HPO_MAX_EPOCHS", 30),
                       help="epochs per trial at most (default 30) [HPO_MAX_EPOCHS]")
    group.add_argument("--patience", type=int, default=env_int("HPO_PATIENCE", 5),
                       help="stop a trial after this many epochs without a better dev AUC (default 5) [HPO_PATIENCE]")
    group.add_argument("--batch-size", type=int, default=env_int("HPO_BATCH_SIZE", 64),
                       help="molecules per training batch (default 64) [HPO_BATCH_SIZE]")
    group.add_argument("--search-space", default=env_default("HPO_SEARCH_SPACE", "reference"),
                       help="built-in space (reference, small) or a TOML file (default reference) [HPO_SEARCH_SPACE]")
    group.add_argument("--sampler", choices=SAMPLERS, default=env_default("HPO_SAMPLER", "tpe"),
                       help="tpe (multivariate, constant liar) or random (default tpe) [HPO_SAMPLER]")
    group.add_argument("--pruner", choices=PRUNERS, default=env_default("HPO_PRUNER", "median"),
                       help="median: prune trials below the median dev AUC of earlier ones at the same epoch; "
                            "threshold: prune trials below --prune-below; none [HPO_PRUNER]")
    group.add_argument("--prune-below", type=float, default=env_float("HPO_PRUNE_BELOW", 0.5),
                       help="dev AUC under which the threshold pruner prunes (default 0.5) [HPO_PRUNE_BELOW]")
    group.add_argument("--max-retries", type=int, default=env_int("HPO_MAX_RETRIES", 2),
                       help="times an interrupted trial is retried with its parameters (default 2) [HPO_MAX_RETRIES]")


def dataset_spec_from_args(args: argparse.Namespace) -> DatasetSpec:
    return make_spec(
        args.dataset,
        smiles_column=args.smiles_column,
        label_column=args.label_column,
        positive_label=args.positive_label,
        bbbp_path=args.bbbp_path,
        keep_largest_fragment=not args.keep_all_fragments,
    )


def settings_from_args(args: argparse.Namespace, spec: DatasetSpec) -> ExperimentSettings:
    if args.folds < 2:
        raise ConfigError(f"--folds={args.folds} is invalid: use 2 or more")
    sampler = dict(DEFAULT_SAMPLER, name=args.sampler)
    if args.pruner == "median":
        pruner = dict(DEFAULT_PRUNER)
    elif args.pruner == "threshold":
        pruner = {"name": "threshold", "lower": args.prune_below, "n_warmup_steps": 0}
    else:
        pruner = {"name": args.pruner}
    return ExperimentSettings(
        dataset=dataset_identity(spec),
        trials_per_fold=args.trials_per_fold,
        search_space=load_search_space(args.search_space),
        n_folds=args.folds,
        split=args.split,
        dev_fraction=args.dev_fraction,
        seed=args.seed,
        max_epochs=args.max_epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        sampler=sampler,
        pruner=pruner,
        max_retries=args.max_retries,
    )
