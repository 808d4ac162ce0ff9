"""bench/rollout.py helpers: each decision's prompt length read back from the segments, and the
attention-per-round timing on the policy's head shapes."""

from __future__ import annotations

from streampro.bench.rollout import attention_ms, prompt_lengths
from streampro.types import Segment, Trajectory


def test_prompt_lengths_are_where_each_generated_run_starts() -> None:
    # segment 1: prompt of 3, decision (1 token), 2 context tokens, decision (2 tokens)
    a = Segment([0] * 9, [0, 0, 0, 1, 0, 0, 1, 1, 0], [0.0] * 9, first_step=0)
    # segment 2 (after a slide): a shorter prompt of 2, then one decision
    b = Segment([0] * 4, [0, 0, 1, 0], [0.0] * 4, first_step=2)
    other = Segment([0] * 6, [0, 0, 0, 0, 0, 1], [0.0] * 6, first_step=0)
    trajs = [Trajectory("s", 0, [a, b]), Trajectory("t", 0, [other])]
    assert prompt_lengths(trajs) == {0: 4.0, 1: 6.0, 2: 2.0}  # step 0: mean of 3 and 5


def test_attention_ms_runs_on_the_policy_shapes(tiny_path) -> None:
    assert attention_ms(tiny_path, streams=2, context=64, new_tokens=8) > 0.0
