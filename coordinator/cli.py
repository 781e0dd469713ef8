"""`hpo-coordinator`: create an experiment, print its status or its cross-validation report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from coordinator.create import create_experiment
from coordinator.options import add_experiment_options, dataset_spec_from_args, settings_from_args
from coordinator.report import build_report, format_report, format_status, write_json
from shared.cleaning import load_dataset
from shared.cli_support import add_verbosity, env_default, env_float, run_main, setup_logging
from shared.experiment import load_experiment, validate_experiment_name
from shared.storage import DEFAULT_CONNECT_TIMEOUT_S, mask_url, open_storage, resolve_storage_setting

logger = logging.getLogger(__name__)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=None,
                        help="postgresql+psycopg2:// URL or journal file path [HPO_STORAGE]")
    parser.add_argument("--experiment", default=env_default("HPO_EXPERIMENT"),
                        help="experiment name; its studies are <name>-fold<k> [HPO_EXPERIMENT]")
    parser.add_argument("--connect-timeout", type=float,
                        default=env_float("HPO_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
                        help="seconds to keep retrying an unreachable database (default 120) [HPO_CONNECT_TIMEOUT]")
    add_verbosity(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo-coordinator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create the fold studies (does nothing if they exist with the same settings)")
    add_common_options(create)
    add_experiment_options(create)
    status = commands.add_parser("status", help="print finished, running and failed trials per fold")
    add_common_options(status)
    report = commands.add_parser("report", help="print the CV report and write it as JSON")
    add_common_options(report)
    report.add_argument("--output", default=None,
                        help="JSON file to write (default <experiment>-report.json); - writes the JSON "
                             "to stdout and the tables to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args, prefix="coordinator")
    storage_setting = resolve_storage_setting(args.storage)
    experiment = validate_experiment_name(args.experiment or "")

    if args.command == "create":
        spec = dataset_spec_from_args(args)
        settings = settings_from_args(args, spec)
        dataset = load_dataset(spec)
        storage = open_storage(storage_setting, create_schema=True, connect_timeout_s=args.connect_timeout)
        result = create_experiment(storage_setting, storage, experiment, settings, dataset, spec.path)
        if result.created or result.completed:
            print(f"experiment {experiment}: created folds {result.created + result.completed} "
                  f"in {mask_url(storage_setting)}")
        else:
            print(f"experiment {experiment} already exists with the same settings; nothing to do")
        return 0

    storage = open_storage(storage_setting, create_schema=False, connect_timeout_s=args.connect_timeout)
    record = load_experiment(storage, experiment)
    report = build_report(storage, record)
    if args.command == "status":
        print(format_status(report))
        return 0
    if args.output == "-":
        # The JSON alone goes to stdout, so it can be redirected from a container.
        print(format_status(report), format_report(report), sep="\n", file=sys.stderr)
        print(json.dumps(report, indent=2))
        return 0
    print(format_status(report))
    print(format_report(report))
    output = Path(args.output or f"{experiment}-report.json")
    write_json(report, output)
    print(f"report written to {output}")
    return 0


def run() -> None:
    run_main(main)


if __name__ == "__main__":
    run()
