"""Evaluation: an in-project classifier (accuracy, classifier Fréchet distance), inpainting PSNR and
prompt adherence; the ``canvas-jax eval`` suites (:func:`evaluate_shapes`, :func:`evaluate_cifar10`,
:func:`evaluate_inpaint`) built on them."""

from canvas_jax.eval.cifar10 import evaluate_cifar10
from canvas_jax.eval.classifier import (
                                        ClassifierConfig,
                                        ClassifierModelConfig,
                                        SmallCNN,
                                        extract_features,
                                        load_classifier,
                                        predict_logits,
                                        save_classifier,
                                        train_classifier,
                                        train_classifier_on,
)
from canvas_jax.eval.frechet import (
                                        classifier_frechet_distance,
                                        frechet_distance,
                                        frechet_distance_of_features,
                                        gaussian_stats,
                                        mobilenet_frechet_distance,
)
from canvas_jax.eval.inpaint_eval import evaluate_inpaint
from canvas_jax.eval.metrics import (
                                        accuracy,
                                        adherence_report,
                                        prompt_adherence,
                                        psnr,
                                        unmasked_psnr,
)
from canvas_jax.eval.sampling import SamplingOptions
from canvas_jax.eval.shapes_eval import evaluate_shapes

__all__ = ["ClassifierConfig", "ClassifierModelConfig", "SamplingOptions", "SmallCNN", "accuracy",
           "adherence_report", "classifier_frechet_distance", "evaluate_cifar10", "evaluate_inpaint", "evaluate_shapes",
           "extract_features", "frechet_distance", "frechet_distance_of_features", "gaussian_stats", "load_classifier",
           "mobilenet_frechet_distance",
           "predict_logits", "prompt_adherence", "psnr", "save_classifier", "train_classifier", "train_classifier_on",
           "unmasked_psnr"]
