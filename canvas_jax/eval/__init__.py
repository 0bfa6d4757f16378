"""Evaluation: an in-project classifier (accuracy, classifier Fréchet distance), inpainting PSNR and
prompt adherence."""

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
)
from canvas_jax.eval.metrics import (
                                        accuracy,
                                        adherence_report,
                                        prompt_adherence,
                                        psnr,
                                        unmasked_psnr,
)

__all__ = ["ClassifierConfig", "ClassifierModelConfig", "SmallCNN", "accuracy", "adherence_report",
           "classifier_frechet_distance", "extract_features", "frechet_distance", "frechet_distance_of_features",
           "gaussian_stats", "load_classifier", "predict_logits", "prompt_adherence", "psnr", "save_classifier",
           "train_classifier", "train_classifier_on", "unmasked_psnr"]
