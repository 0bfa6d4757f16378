"""Training data for canvas_jax: the procedural Shapes dataset and its checker, ingestion of image folders
into ArrayRecord, inpainting masks, and the Grain pipeline producing the training batch contract."""

from canvas_jax.data.checker import CheckResult, Detection, adherence, check, detect
from canvas_jax.data.ingest import (
                                    BuildReport,
                                    build_captioned_folder,
                                    build_image_folder,
)
from canvas_jax.data.masks import (
                                    MASK_KINDS,
                                    brush_strokes,
                                    outpaint_border,
                                    random_mask,
                                    rectangles,
)
from canvas_jax.data.loader import (
                                    ImagePipelineConfig,
                                    make_image_iterator,
                                    open_source,
)
from canvas_jax.data.shapes import (
                                    Scene,
                                    ShapesConfig,
                                    ShapeSpec,
                                    ShapesSource,
                                    build_shapes,
                                    enumerate_prompts,
                                    heldout_prompts,
                                    parse_caption,
                                    render,
                                    sample_prompts,
                                    seen_prompts,
)

__all__ = [
                                    "MASK_KINDS",
                                    "BuildReport",
                                    "CheckResult",
                                    "Detection",
                                    "ImagePipelineConfig",
                                    "Scene",
                                    "ShapeSpec",
                                    "ShapesConfig",
                                    "ShapesSource",
                                    "adherence",
                                    "brush_strokes",
                                    "build_captioned_folder",
                                    "build_image_folder",
                                    "build_shapes",
                                    "check",
                                    "detect",
                                    "enumerate_prompts",
                                    "heldout_prompts",
                                    "make_image_iterator",
                                    "open_source",
                                    "outpaint_border",
                                    "parse_caption",
                                    "random_mask",
                                    "rectangles",
                                    "render",
                                    "sample_prompts",
                                    "seen_prompts",
]
