"""Project exceptions.

Every user-facing failure is one of these, so the command-line entry points can
print a single line and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations


class HpoError(Exception):
    """Base class of the errors that a user can fix."""


class InvalidDataError(HpoError):
    """The input data is missing, unreadable or malformed."""


class ConfigError(HpoError):
    """A setting, flag or configuration file is invalid."""


class StorageError(HpoError):
    """The study storage is unreachable or does not hold what was expected."""


class ExperimentMismatchError(HpoError):
    """Stored experiment settings, data or schema differ from the local ones."""
