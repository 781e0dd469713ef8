"""Helpers for the command-line entry points: environment defaults, logging, error exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import optuna

from shared.errors import HpoError

EXIT_USER_ERROR = 2


def env_default(name: str, default: str | None = None) -> str | None:
    """Return $name when set and non-empty, else the default."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int | None) -> int | None:
    value = env_default(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise HpoError(f"environment variable {name}={value!r} is not a whole number") from None


def env_float(name: str, default: float | None) -> float | None:
    value = env_default(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise HpoError(f"environment variable {name}={value!r} is not a number") from None


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def setup_logging(args: argparse.Namespace, prefix: str = "") -> None:
    """Configure the root logger once, at the entry point; modules only create loggers."""
    if args.quiet:
        level = logging.WARNING
    elif args.verbose >= 2:
        level = logging.DEBUG
    else:
        level = logging.INFO
    tag = f"[{prefix}] " if prefix else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # Optuna logs every finished trial at INFO through its own handler; ours
    # already logs them with the worker id.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING if args.verbose < 2 else logging.DEBUG)


def run_main(main: Callable[[], int], fast_exit: bool = False) -> None:
    """Run an entry point: user errors become one line on stderr and exit status 2.

    With ``fast_exit`` the process ends with os._exit once the output is
    flushed, skipping the interpreter's teardown of PyTorch and the database
    pool, which took several seconds on a loaded machine and delayed a worker
    stopped by SIGTERM. Only for entry points that have finished all their I/O.
    """
    try:
        code = main()
    except HpoError as error:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if fast_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
