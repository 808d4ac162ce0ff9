"""The dialogue builder: exact layout, masks on decision/answer tokens only, window, SFT targets."""

from __future__ import annotations

import pytest

from streampro import tokens as T
from streampro.data.dialogue import (
    StreamDialogue,
    build_sft_example,
    decision_ids,
    parse_decision,
    plan_responses,
)
from streampro.data.encode import EncodedSample
from streampro.data.schema import Answer, Sample
from streampro.data.window import Window


@pytest.fixture(scope="module")
def tok():
    from streampro.tiny import build_tokenizer

    return build_tokenizer(512, 64)


def _dec(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def test_layout_masks_and_classes(tok):
    d = StreamDialogue(
        tok, question="Tell me when it changes.", query_time=0.0, window=Window(200, 50)
    )
    d.add_chunk(0.0, 1.0, [1, 2])
    d.add_decision(decision_ids(tok, "silence"))
    d.add_chunk(1.0, 2.0, [63, 0])
    d.add_decision(decision_ids(tok, "response", "now blue"))
    chunk = "<|im_start|>user\n<{}s-{}s><|frame|>{}<|/frame|><|im_end|>\n<|im_start|>assistant\n"
    expected = (
        f"<|im_start|>system\n{T.SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nTell me when it changes.<|im_end|>\n"
        + chunk.format(0, 1, "<|v1|><|v2|>")
        + "</Silence><|im_end|>\n"
        + chunk.format(1, 2, "<|v63|><|v0|>")
        + "</Response> now blue<|im_end|>\n"
    )
    ids, mask, cls = d.token_ids, d.loss_mask, d.decision_class
    assert _dec(tok, ids) == expected
    assert len(ids) == len(mask) == len(cls)
    supervised = [i for i, m in zip(ids, mask) if m]
    # Exactly the decision tokens and the answer text with its closing <|im_end|>.
    assert supervised == decision_ids(tok, "silence") + decision_ids(tok, "response", "now blue")
    assert _dec(tok, supervised) == "</Silence></Response> now blue<|im_end|>"
    marked = [(tok.convert_ids_to_tokens(i), c) for i, c in zip(ids, cls) if c != T.CLASS_NONE]
    assert marked == [(T.SILENCE, T.CLASS_SILENCE), (T.RESPONSE, T.CLASS_RESPONSE)]
    assert d.context() == ids  # the window holds everything


def test_window_first_kept_hand_values():
    w = Window(turns=4, slide=2)
    # (turns so far incl. the new one, current first) -> first kept turn
    assert [w.first_kept(n, 0) for n in (1, 4, 5, 6)] == [0, 0, 2, 2]
    assert w.first_kept(7, 2) == 4 and w.first_kept(6, 2) == 2
    assert Window(turns=4, slide=1).first_kept(9, 0) == 5  # several slides at once
    with pytest.raises(ValueError, match="slide"):
        Window(turns=4, slide=5)


def test_question_arrives_at_query_time_and_window_slides(tok):
    """Window of 4 turns sliding by 2, question at 2 s, 10 chunks. Hand-derived: slides before
    chunks 4, 6 and 8 (first kept turn 2, 4, 6); between them every prompt extends the last."""
    d = StreamDialogue(tok, question="Q?", query_time=2.0, window=Window(4, 2))
    prompts = []
    for k in range(10):
        d.add_chunk(float(k), k + 1.0, [k])
        prompts.append(d.context())
        d.add_decision(decision_ids(tok, "silence"))
    full = _dec(tok, d.token_ids)
    assert full.index("<1s-2s>") < full.index("Q?") < full.index("<2s-3s>")
    extends = [prompts[k][: len(prompts[k - 1])] == prompts[k - 1] for k in range(1, 10)]
    assert [k for k, e in enumerate(extends, 1) if not e] == [4, 6, 8]
    ctx = _dec(tok, prompts[4])
    # system, the pinned question, then turns 2-4 (turn 4 awaiting its decision)
    assert ctx.startswith(f"<|im_start|>system\n{T.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nQ?")
    assert "<1s-2s>" not in ctx and "<2s-3s>" in ctx and "<4s-5s>" in ctx
    assert ctx.endswith("<|im_start|>assistant\n")
    segs = d.segments()
    assert len(segs) == 4
    silence = decision_ids(tok, "silence")[0]
    for k, p in enumerate(prompts):  # each prompt is a prefix of its segment's row
        row = segs[[0, 0, 0, 0, 1, 1, 2, 2, 3, 3][k]].row(d.token_ids)
        assert row[: len(p)] == p
    owned = [sum(sg.aligned(d.loss_mask, 0)) for sg in segs]
    assert owned == [4, 2, 2, 2]  # each decision trained once, in the segment that made it
    rows = [_dec(tok, sg.row(d.token_ids)) for sg in segs]
    assert [r.count("<|frame|>") for r in rows] == [4, 4, 4, 4]  # bounded by the window
    assert all(r.count("Q?") == 1 for r in rows)
    assert segs[3].aligned(d.token_ids, -1).count(silence) == 2
    with pytest.raises(RuntimeError):
        d.add_decision(decision_ids(tok, "silence"))  # no open turn


def test_unmasked_decisions_and_turn_closing(tok):
    d = StreamDialogue(tok, question="Q", query_time=0.0, window=Window(200, 50))
    d.add_chunk(0.0, 1.0, [0])
    v = decision_ids(tok, "response", "x")[:-1]  # cut before <|im_end|> (max tokens reached)
    d.add_decision(v, generated=False)
    assert sum(d.loss_mask) == 0 and set(d.decision_class) == {T.CLASS_NONE}
    assert _dec(tok, d.token_ids).endswith("</Response> x<|im_end|>\n")


def test_parse_decision(tok):
    sil, resp = decision_ids(tok, "silence"), decision_ids(tok, "response", "bounce 3")
    assert parse_decision(tok, sil) == ("silence", "", T.SILENCE)
    assert parse_decision(tok, sil + [tok.convert_tokens_to_ids(T.IM_END)])[0] == "silence"
    assert parse_decision(tok, resp) == ("response", "bounce 3", "</Response> bounce 3<|im_end|>")
    assert parse_decision(tok, resp[:-1])[:2] == ("response", "bounce 3")  # cut: still an answer
    empty = [resp[0], resp[-1]]
    assert parse_decision(tok, empty)[0] == "invalid"
    assert parse_decision(tok, tok.encode("hello", add_special_tokens=False))[0] == "invalid"
    assert parse_decision(tok, sil + resp)[0] == "invalid"
    with pytest.raises(ValueError):
        decision_ids(tok, "response", "  ")


def test_plan_responses_known_answers():
    ends = [float(k + 1) for k in range(20)]  # chunks [k, k+1)
    # EU interval: first chunk end at/after start 10.25 -> 11 (index 10).
    assert plan_responses("EU", [{"start": 10.25, "end": 11.25, "text": "a"}], ends) == (
        {10: "a"},
        0,
    )
    # GP window [-3, 0]: exactly at 12; at 12.5 nothing at/after fits, so the latest before: 12.
    assert plan_responses("GP", [{"time": 12.0, "text": "a"}], ends) == ({11: "a"}, 0)
    assert plan_responses("GP", [{"time": 12.5, "text": "a"}], ends) == ({11: "a"}, 0)
    # Two answers in one chunk: the second takes the next free chunk end inside its window.
    two = [{"time": 5.5, "text": "b"}, {"time": 5.25, "text": "a"}]
    assert plan_responses("OU", two, ends) == ({5: "a", 6: "b"}, 0)
    # Past the stream's end: counted, not supervised.
    assert plan_responses("RF", [{"time": 30.0, "text": "a"}], ends) == ({}, 1)


def _ten_second_ou(query_time: float, first_answer: float) -> EncodedSample:
    """10 one-second chunks of patch codes; answers 'now red' and 'now blue' (at 8.25 s)."""
    s = Sample(
        id="s",
        video="v.mp4",
        task="OU",
        question="Q",
        query_time=query_time,
        answers=[Answer(time=first_answer, text="now red"), Answer(time=8.25, text="now blue")],
    )
    times = [(float(k), k + 1.0) for k in range(10)]
    return EncodedSample(s, times, [[k % 64] * 16 for k in range(10)])


def test_build_sft_example(tok):
    enc = _ten_second_ou(1.0, 3.25)
    ex = build_sft_example(enc, tok, window=Window(200, 50))
    (row,) = ex.rows  # 10 turns: one window segment
    assert ex.response_times == [4.0, 9.0] and ex.response_texts == ["now red", "now blue"]
    assert ex.unplaced == 0
    assert row.decision_class.count(T.CLASS_SILENCE) == 8
    assert row.decision_class.count(T.CLASS_RESPONSE) == 2
    text_tokens = len(decision_ids(tok, "response", "now red")) + len(
        decision_ids(tok, "response", "now blue")
    )
    assert sum(row.loss_mask) == 8 + text_tokens
    assert len(row.input_ids) == len(row.loss_mask) == len(row.decision_class)
    full = _dec(tok, row.input_ids)
    assert full.index("<3s-4s>") < full.index("now red") < full.index("<4s-5s>")


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA = (
    "{% for m in messages %}<|im_start|>[{{ m['role'] }}] {{ m['content'] }}<|im_end|>"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>[assistant] {% endif %}"
)


def test_the_models_own_chat_template_is_checked(tok):
    """A tokenizer whose template renders ChatML turns is used as is; another layout is
    refused in one line (the dialogue would otherwise feed a layout the model never saw)."""
    import copy

    from streampro.errors import UserError

    chatml = copy.deepcopy(tok)
    chatml.chat_template = CHATML
    dlg = StreamDialogue(chatml, question="q?", query_time=0.0, window=Window(200, 50))
    dlg.add_chunk(0.0, 1.0, [1, 2])
    rendered = chatml.apply_chat_template(
        [{"role": "system", "content": T.SYSTEM_PROMPT}, {"role": "user", "content": "q?"}],
        tokenize=False,
    )
    assert _dec(chatml, dlg.context()).startswith(rendered)
    other = copy.deepcopy(tok)
    other.chat_template = LLAMA
    with pytest.raises(UserError, match="supports ChatML turns"):
        StreamDialogue(other, question="q?", query_time=0.0, window=Window(200, 50))


def test_answer_rows_put_the_question_a_few_turns_before_each_answer(tok):
    """sft.answer_window: per response one extra row under a short window, its answer text the
    only target (hand-counted), so the decision balance CB-Stream sees is unchanged."""
    from streampro.learners.sft import answer_rows, build_sft_data

    enc = _ten_second_ou(0.0, 5.25)
    short = build_sft_example(enc, tok, window=Window(3, 1))
    rows = answer_rows(short.rows)
    assert len(rows) == 2  # one slid segment per response; the silent ones are dropped
    for row, (text, stamp) in zip(rows, [("now red", "<5s-6s>"), ("now blue", "<8s-9s>")]):
        full = _dec(tok, row.input_ids)
        assert full.count("<|frame|>") == 3 and full.rstrip().endswith("<|im_end|>")
        assert full.index("user\nQ<|im_end|>") < full.index(stamp)  # the question, pinned
        assert full.count("</Silence><|im_end|>") == 2  # 3 turns: 2 silent, then the answer
        assert set(row.decision_class) == {T.CLASS_NONE}
        targets = [i for i, m in zip(row.input_ids, row.loss_mask) if m]
        assert targets == decision_ids(tok, "response", text)[1:]  # the text, not </Response>
    plain = build_sft_data([enc], tok, window=Window(200, 50), max_seq_len=4096)
    more = build_sft_data([enc], tok, window=Window(200, 50), max_seq_len=4096, answer_window=3)
    assert len(more.items) == len(plain.items) + 2
    assert more.supervised == plain.supervised + sum(
        len(decision_ids(tok, "response", t)) - 1 for t in ("now red", "now blue")
    )


@pytest.mark.parametrize("layout", ["position", "change"])
def test_positional_frame_layouts(layout):
    """policy.frame_tokens: a patch token names its position (and, with 'change', whether its
    code differs from the previous chunk's at that position); the tokenizer says which."""
    from streampro.tiny import build_tokenizer

    tok = build_tokenizer(512, 8, 0, layout, 4)
    d = StreamDialogue(tok, question="q?", query_time=0.0, window=Window(200, 50))
    d.add_chunk(0.0, 1.0, [1, 2, 3, 4])
    d.add_decision(decision_ids(tok, "silence"))
    d.add_chunk(1.0, 2.0, [1, 5, 3, 0])  # patches 1 and 3 changed
    star = "*" if layout == "change" else ""
    first = "<|v1@0|><|v2@1|><|v3@2|><|v4@3|>"
    second = f"<|v1@0|><|v5@1{star}|><|v3@2|><|v0@3{star}|>"
    text = _dec(tok, d.token_ids)
    assert f"<|frame|>{first}<|/frame|>" in text and f"<|frame|>{second}<|/frame|>" in text
    assert len(tok) - len(build_tokenizer(512, 8)) == 8 * 4 * (2 if star else 1) - 8


def test_frame_layout_needs_the_tiny_policy():
    from streampro.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="policy.frame_tokens"):
        load_config(
            None, ["policy.name_or_path=tiny-vl", "data.codec=image", "policy.frame_tokens=change"]
        )
