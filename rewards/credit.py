"""Per-response credit for `grpo.credit=decision` (docs/learners.md, "Per-decision credit").

Each response of a trajectory is scored by StreamPro-F1's own greedy matching with the task's
own tolerances (rewards/f1.py): its marginal contribution to the stream's F1 (F1 with every
response minus F1 without this one), the answer its text was judged against, and that S_acc.
The reward actors compute it beside the reward, so the learner never calls the judge.
"""

from __future__ import annotations

from streampro.rewards.f1 import greedy_matches, kept_sum, prf
from streampro.rewards.judges import AccJudge
from streampro.types import RewardResult


def add_credit(
    result: RewardResult, sample: dict, responses: list[dict], judge: AccJudge
) -> RewardResult:
    """`result` (in place, returned) with each response's marginal StreamPro-F1 and judged
    content in its `credit_*` fields, in the trajectory's response order.

    A response's match does not depend on the others (each goes to the first answer it
    reaches), so leaving one out only drops its S from its answer's max and one from N_pred:
    the marginals need no further judge calls.
    """
    matches, n_gt = greedy_matches(sample, responses, judge)
    n = len(matches)
    f1_all = prf(kept_sum(matches, n_gt), n, n_gt)[2]
    # a stream's few responses: the O(n^2) of leaving each out is nothing
    result.credit_marginal = [
        f1_all - prf(kept_sum(matches, n_gt, without=i), n - 1, n_gt)[2] for i in range(n)
    ]
    # content counts only where the judge was asked (an answer reached with S_time > 0)
    result.credit_item = [-1 if m.content is None else m.item for m in matches]
    result.credit_content = [m.content or 0.0 for m in matches]
    return result
