"""Rewards: R_fmt, R_turn, R_traj, the S_acc and rubric judges, and the reward actor pool.

Importable without Ray: the Ray pool imports it when constructed.
"""

from streampro.rewards.judges import (
    AccJudge,
    EmbeddingJudge,
    ExactJudge,
    JudgeError,
    LLMJudge,
    OpenAIChat,
    interval_iou,
    make_acc_judge,
    normalize_text,
)
from streampro.rewards.pool import (
    InProcessRewardPool,
    RayRewardPool,
    RewardScorer,
    make_reward_pool,
)
from streampro.rewards.rubric import LLMRubricJudge, RubricJudge, RuleJudge
from streampro.rewards.scoring import (
    content_score,
    format_reward,
    reaches,
    s_time,
    total_reward,
    traj_reward,
    turn_reward,
)

__all__ = [
    "AccJudge",
    "EmbeddingJudge",
    "ExactJudge",
    "InProcessRewardPool",
    "JudgeError",
    "LLMJudge",
    "LLMRubricJudge",
    "OpenAIChat",
    "RayRewardPool",
    "RewardScorer",
    "RubricJudge",
    "RuleJudge",
    "content_score",
    "format_reward",
    "interval_iou",
    "make_acc_judge",
    "make_reward_pool",
    "normalize_text",
    "reaches",
    "s_time",
    "total_reward",
    "traj_reward",
    "turn_reward",
]
