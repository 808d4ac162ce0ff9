"""bench/rollout.py helpers: each decision's prompt length read back from the segments, the
attention-per-round timing on the policy's head shapes, and the warm-then-timed protocol."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from streampro.actors.api import Sampling
from streampro.bench.rollout import attention_ms, prompt_lengths, synthetic_streams, timed_pass
from streampro.data.window import Window
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


class _RecordingLoop:
    """A rollout loop that records what it was given and stays silent at every chunk."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def generate(self, *, samples: list, n: int, sampling) -> list:
        self.calls.append(samples)
        silent = SimpleNamespace(decision="silence")
        return [
            SimpleNamespace(steps=[silent] * len(s.times), num_generated=len(s.times))
            for s in samples
        ]

    def take_latencies(self) -> list:
        return []


def test_timed_pass_times_the_seeded_load_after_a_pass_over_other_streams() -> None:
    loop = _RecordingLoop()
    sampling = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=4, seed=3)
    m = timed_pass(loop, 3, 5, seed=3, sampling=sampling)
    warm, timed = loop.calls
    assert [len(s.times) for s in warm] == [len(s.times) for s in timed] == [5, 5, 5]
    assert [s.codes for s in timed] == [s.codes for s in synthetic_streams(3, 5, seed=3)]
    assert all(w.codes != t.codes for w, t in zip(warm, timed))  # other streams, same shapes
    assert [len(c) for s in warm for c in s.codes] == [len(c) for s in timed for c in s.codes]
    assert m["silence_rate"] == 1.0 and m["gen_tokens_per_step"] == 1.0


def test_bench_engines_take_the_rollout_config(monkeypatch) -> None:
    # The bench builds its own engines: they must honour rollout.* like the trainer's do.
    from streampro.actors import rollout
    from streampro.bench.rollout import _local_group
    from streampro.config import load_config

    built: list = []
    monkeypatch.setattr(rollout, "LocalRolloutGroup", built.append)
    overrides = ["rollout.enforce_eager=false", "rollout.block_size=64", "rollout.max_num_seqs=8"]
    cfg = load_config("configs/default.yaml", overrides)
    _local_group("m", cfg, [4, 16], prefix=False)
    (spec,) = built
    r = spec.rollout
    assert spec.model_path == "m" and r.enforce_eager is False and r.block_size == 64
    assert r.enable_prefix_caching is False and r.max_num_seqs == 16  # the largest load
    assert spec.dtype == "float32"  # as the bench's transformers loops
    assert spec.window == Window.from_config(cfg.data) and spec.seed == cfg.run.seed
    assert cfg.rollout.max_num_seqs == 8  # the config itself is left as it was


def test_bench_dtype_reaches_every_loop(monkeypatch, tiny_path) -> None:
    # bench.dtype: vLLM and both transformers loops run at the same precision
    import torch

    from streampro.actors import hf_loop, rollout
    from streampro.bench import rollout as bench_rollout
    from streampro.bench.rollout import HF_STREAMS, _local_group, batched_hf_loop, sequential_hf_run
    from streampro.config import load_config

    cfg = load_config("configs/default.yaml", ["bench.dtype=bfloat16"])
    built: list = []
    monkeypatch.setattr(rollout, "LocalRolloutGroup", built.append)
    _local_group("m", cfg, [4], prefix=True)
    assert built[0].dtype == "bfloat16"
    assert {p.dtype for p in batched_hf_loop(tiny_path, cfg).model.parameters()} == {torch.bfloat16}
    loops: list = []

    class Recorded(hf_loop.HFStreamPolicy):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            loops.append(self)

    monkeypatch.setattr(bench_rollout, "HFStreamPolicy", Recorded)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=4, seed=0)
    m = sequential_hf_run(tiny_path, cfg, 3, sampling)
    assert {p.dtype for p in loops[0].model.parameters()} == {torch.bfloat16}
    assert len(m["trajs"]) == HF_STREAMS and all(len(t.steps) == 3 for t in m["trajs"])


def test_image_streams_carry_one_seeded_frame_per_chunk() -> None:
    # the image-codec workload: a frame per chunk at the codec's size, no frame codes
    from streampro.bench.rollout_images import image_streams

    a, b = image_streams(2, 4, seed=1, height=56, width=84)
    assert a.codes == [[]] * 4 and a.frames is not None and b.frames is not None
    assert [f.shape for f in a.frames] == [(56, 84, 3)] * 4 and a.frames[0].dtype.name == "uint8"
    again = image_streams(2, 4, seed=1, height=56, width=84)[0].frames
    assert again is not None and all((x == y).all() for x, y in zip(a.frames, again))
    assert not (a.frames[0] == b.frames[0]).all()  # streams differ


def test_image_bench_needs_baselines_off() -> None:
    # the transformers baselines feed frame codes: an image run must turn them off
    import pytest

    from streampro.bench.rollout import _workload
    from streampro.config import load_config
    from streampro.errors import UserError

    cfg = load_config("configs/tiny_vl.yaml", ["bench.baselines=true"])
    with pytest.raises(UserError, match="bench.baselines=false"):
        _workload(cfg, Path("/nonexistent"))
