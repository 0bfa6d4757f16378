import core_jax  # noqa: F401  (sets the runtime conventions)
