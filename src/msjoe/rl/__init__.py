"""Pure functions of MSJoE training: rewards, advantages, losses, lr schedule, seeding (no I/O, no models).

The trainers that use them are in :mod:`msjoe.train` (``stage1``, ``stage2``).

- :mod:`msjoe.rl.rewards`: the stage-1 difficulty-aware advantage and the stage-2 rollout reward
  ``r = r_acc + r_format + r_info``;
- :mod:`msjoe.rl.advantages`: GRPO group normalisation and the sampler's advantage;
- :mod:`msjoe.rl.losses`: the MLLM's PPO-clip token loss and the sampler's REINFORCE loss;
- :mod:`msjoe.rl.schedule`: the learning-rate schedules; :mod:`msjoe.rl.seeding`: per-process seeds.
"""

from msjoe.rl.advantages import group_advantages, sampler_advantages
from msjoe.rl.losses import ppo_clip_token_loss, reinforce_loss, sampler_log_prob
from msjoe.rl.rewards import (
    RewardBreakdown,
    RewardWeights,
    answer_is_correct,
    difficulty_advantage,
    info_reward,
    informative_fraction,
    informative_queries,
    peak_prominence,
    rollout_follows_format,
    rollout_reward,
)

__all__ = [
    "RewardBreakdown",
    "RewardWeights",
    "answer_is_correct",
    "difficulty_advantage",
    "group_advantages",
    "info_reward",
    "informative_fraction",
    "informative_queries",
    "peak_prominence",
    "ppo_clip_token_loss",
    "reinforce_loss",
    "rollout_follows_format",
    "rollout_reward",
    "sampler_advantages",
    "sampler_log_prob",
]
