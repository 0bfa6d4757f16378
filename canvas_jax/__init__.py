import core_jax  # noqa: F401  (sets the runtime conventions)

__all__ = ["Pipeline", "PipelineOutput"]


def __getattr__(name: str):
    """``canvas_jax.Pipeline`` is imported on first use, so ``import canvas_jax`` stays light."""
    if name in __all__:
        from canvas_jax import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'canvas_jax' has no attribute {name!r}")
