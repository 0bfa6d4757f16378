"""Fine-tuning toward rewards and preferences: reward functions (``rewards``)."""

from canvas_jax.rl.rewards import (
    CheckerReward,
    DiversityReward,
    ImageTextReward,
    Reward,
    WeightedRewards,
    partial_credit,
    pixel_features,
)

__all__ = ["CheckerReward", "DiversityReward", "ImageTextReward", "Reward", "WeightedRewards", "partial_credit",
           "pixel_features"]
