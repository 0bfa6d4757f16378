"""Training tasks of canvas_jax on the shared loop (``core_jax.loop.Trainer``): VAE, text-to-image, inpainting.

    cfg = core_jax.config.load(CanvasTrainConfig, "configs/canvas/shapes_tiny.yaml", ["train.steps=100"])
    state, metrics = canvas_jax.train.train(cfg)
    canvas_jax.train.export_pipeline(cfg.train.run_dir, "out/shapes_pipeline")
"""

from canvas_jax.config import CanvasTrainConfig
from canvas_jax.train.export import export_pipeline
from canvas_jax.train.run import add_train_arguments, run_train, train
from canvas_jax.train.tasks import make_task

__all__ = ["CanvasTrainConfig", "add_train_arguments", "export_pipeline", "make_task", "run_train", "train"]
