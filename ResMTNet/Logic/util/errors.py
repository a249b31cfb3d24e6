"""Errors the core raises for bad input; the CLI turns them into a message and a non-zero exit."""


class ResMTNetError(Exception):
    """Base class for errors the user can act on (bad input, missing model ...)."""


class InputError(ResMTNetError):
    """The input is not a usable chest CT (missing, unreadable, 2-D, empty, NaN, absurd spacing ...)."""


class NoLungsError(InputError):
    """No lungs were found in the CT."""


class Cancelled(ResMTNetError):
    """The caller asked to stop (Cancel in Slicer, Ctrl-C on the terminal)."""


class NonFiniteLossError(ResMTNetError):
    """A training step's loss was inf or NaN: the run stops before any checkpoint takes broken weights."""


class OutputError(ResMTNetError):
    """The output folder could not be written (read-only, full, a file ...); what it held is unchanged."""
