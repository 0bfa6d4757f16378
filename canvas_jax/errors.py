"""The error canvas_jax raises for bad input (a value, an image, a folder) that its own checks caught."""


class InputError(ValueError):
    """Bad input, caught by canvas_jax's own validation: the message says what was wrong and what is expected.

    A ``ValueError``, so API callers can catch it as one; the ``canvas-jax`` command reports it (and
    ``core_jax.config.ConfigError``, and missing or existing paths) as one ``canvas-jax: error:`` line with exit
    code 2. Any other exception is a bug and propagates with its traceback.
    """
