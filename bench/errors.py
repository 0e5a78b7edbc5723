"""The suite's own errors: a user can fix each from its message alone, so the command line prints
the message (one or two lines) and exits non-zero, with no traceback (BENCH_DEBUG=1 shows one).
Anything else escaping a command is a bug in the suite, and keeps its traceback."""
from __future__ import annotations


class BenchError(Exception):
    """Base of every error that names a user-side problem (bad input, missing data or weights)."""


class UsageError(BenchError, ValueError):
    """A command-line value or option combination that cannot be used."""


class DeviceError(BenchError, RuntimeError):
    """A device that this machine does not have."""


class UnknownNameError(BenchError, KeyError):
    """An unknown registered name (recipe, variant). A KeyError for older callers, printed without
    KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class VariantError(BenchError, ValueError):
    """A variant field with a value no detector can be built from."""


class GridError(BenchError, ValueError):
    """A grid file (or the shared datasets file) that cannot be read or expanded."""
