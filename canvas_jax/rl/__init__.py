"""Fine-tuning toward rewards and preferences: reward functions (``rewards``) and objectives (``objectives``)."""

from canvas_jax.rl.objectives import PerPromptStats, clipped_policy_loss, diffusion_dpo_loss
from canvas_jax.rl.rewards import (
    CheckerReward,
    DiversityReward,
    ImageTextReward,
    Reward,
    WeightedRewards,
    partial_credit,
    pixel_features,
)

__all__ = ["CheckerReward", "DiversityReward", "ImageTextReward", "PerPromptStats", "Reward", "WeightedRewards",
           "clipped_policy_loss", "diffusion_dpo_loss", "partial_credit", "pixel_features"]
