"""The error canvas_jax raises for bad input (a value, an image, a folder) that its own checks caught."""

from core_jax.config import ConfigError


class InputError(ValueError):
    """Bad input, caught by canvas_jax's own validation: the message says what was wrong and what is expected.

    A ``ValueError``, so API callers can catch it as one; the ``canvas-jax`` command (and its ``data`` and
    ``eval`` subcommands) report it, and the other :data:`USAGE_ERRORS`, as one ``canvas-jax: error:`` line with
    exit code 2. Any other exception is a bug and propagates with its traceback.
    """


# what our own checks raise for bad input (a config error, a missing or existing path included); the command
# line reports these as usage errors, everything else is a bug and keeps its traceback
USAGE_ERRORS = (InputError, ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError)
