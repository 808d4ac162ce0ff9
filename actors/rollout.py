"""Rollout: many streaming episodes at once on async vLLM engines, in-process or as Ray actors.

`RolloutWorker` owns one `DecisionEngine` and runs every episode it is given as an asyncio
task, so all B*n streams share the engine's continuous batching and prefix cache.
`LocalRolloutGroup` runs one worker in this process; `RayRolloutGroup` runs N of them as
`RolloutActor`s, spreads samples over them, re-runs the samples of an actor that died and
returns every trajectory exactly once, in order. Both implement `RolloutGroupAPI`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from transformers import AutoTokenizer

from streampro import tokens as TOK
from streampro.actors.api import (
    IN_MEMORY,
    WEIGHT_TRANSFER,
    RolloutGroupAPI,
    Sampling,
    WorkerSpec,
)
from streampro.actors.decode import FireState, ThresholdSampling, calibrated_p, fire
from streampro.actors.engine import DecisionEngine, decision_params
from streampro.actors.engine_session import DecisionSession
from streampro.actors.episode import (
    Chunk,
    StreamEpisode,
    calibrated_steps,
    max_decision_tokens,
    request_seed,
    run_episode,
    sample_chunks,
    stop_token_ids,
)
from streampro.actors.weight_transfer import EngineSyncClient
from streampro.cluster.resources import engine_placement_group, in_placement_group
from streampro.config import Config, DecodeConfig
from streampro.hf_policy import image_token_count, vision_tokens
from streampro.timeouts import run_with_timeout
from streampro.types import Trajectory

MAX_LATENCIES = 1 << 20
T = TypeVar("T")


def vlm_frame_rules(processor, tokenizer) -> tuple[list[str], Callable[[int, int], int] | None]:
    """(tokens never sampled, frame -> placeholder size) of a VLM policy; ([], None) for text."""
    if processor is None:
        return [], None

    return list(vision_tokens(tokenizer)), functools.partial(image_token_count, processor)


class RolloutWorker:
    """One vLLM engine plus the episode loop; async methods (a Ray async actor runs them)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.engine = DecisionEngine(
            spec.model_path,
            spec.rollout,
            dtype=spec.dtype,
            seed=spec.seed,
            max_images=spec.window.turns,  # a prompt holds at most one frame per turn
            sleep_mode=spec.sleep_mode,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.decision_ids = (  # (`</Response>`, `</Silence>`): the threshold decoder's choices
            int(self.tokenizer.convert_tokens_to_ids(TOK.RESPONSE)),
            int(self.tokenizer.convert_tokens_to_ids(TOK.SILENCE)),
        )
        self.banned, self.image_tokens = vlm_frame_rules(self.engine.processor, self.tokenizer)
        self.window = spec.window
        self.max_answer_tokens = spec.rollout.max_answer_tokens
        self.version = 0
        self.source = spec.model_path
        # (step index, seconds) of each decision since last taken; bounded if nobody takes them
        self.latencies: deque[tuple[int, float]] = deque(maxlen=MAX_LATENCIES)
        self.inflight = 0  # decision requests now in the engine (the fault test waits on it)

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> int:
        return self.version

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "inflight": self.inflight, **self.engine.cache_stats()}

    def take_latencies(self) -> list[tuple[int, float]]:
        """(step index, seconds) of every decision since the last call (for the benchmark)."""
        out = list(self.latencies)
        self.latencies.clear()
        return out

    async def sync_weights(self, *, version: int, source: str, blob: bytes | None = None) -> float:
        t0 = time.perf_counter()
        await self.engine.reload(source, blob)
        self.version, self.source = int(version), source
        return time.perf_counter() - t0

    async def generate(
        self,
        *,
        samples: list,
        first_index: int,
        n: int,
        sampling: Sampling,
        version: int | None = None,
        source: str | None = None,
    ) -> list[Trajectory]:
        """n episodes of each sample, concurrently; sample i has global index first_index + i.

        `version`/`source` name the weights the caller expects: a restarted actor (which
        came back with the initial weights) reloads them before it starts."""
        if version is not None and version != self.version and source:
            if source in (WEIGHT_TRANSFER, IN_MEMORY):  # a restarted actor: initial weights
                nccl = source == WEIGHT_TRANSFER
                raise RuntimeError(
                    f"rollout actor holds weights v{self.version}, not v{version}: it restarted "
                    f"after {'an NCCL' if nccl else 'an in-memory'} weight sync, which left no "
                    "folder to reload; resume the run (run.resume=auto) or use "
                    + ("rollout.weight_transfer_backend=''" if nccl else "cluster.colocate=false")
                )
            await self.sync_weights(version=version, source=source)
        jobs = [
            self._episode(s, first_index + i, e, sampling)
            for i, s in enumerate(samples)
            for e in range(n)
        ]
        return list(await asyncio.gather(*jobs))

    async def _episode(self, encoded, index: int, episode: int, sampling: Sampling) -> Trajectory:
        ep = StreamEpisode.for_sample(
            self.tokenizer,
            encoded,
            episode=episode,
            window=self.window,
            version=self.version,
        )
        max_tokens = max_decision_tokens(min(sampling.max_answer_tokens, self.max_answer_tokens))
        chunks = sample_chunks(encoded, self.image_tokens)
        if isinstance(sampling, ThresholdSampling):
            return await self._threshold_episode(ep, chunks, sampling.decode, max_tokens)
        # one resumable vLLM request per window segment: each step sends its new tokens only
        session = DecisionSession(self.engine)

        async def decide(prompt: list[int], step: int) -> tuple[list[int], list[float]]:
            params = decision_params(
                stop_ids=self.stop_ids,
                max_tokens=max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=request_seed(sampling.seed, index, episode, step),
                banned=self.banned,
                response_bias=sampling.response_bias,
                response_id=self.decision_ids[0],
            )
            t0 = time.perf_counter()
            self.inflight += 1
            try:
                d = await session.decide(prompt, params, ep.context_images())
            finally:
                self.inflight -= 1
            self.latencies.append((step, time.perf_counter() - t0))
            return d.token_ids, d.logprobs

        try:
            return await run_episode(ep, chunks, decide, version=lambda: self.version)
        finally:
            await session.close()

    async def _threshold_episode(
        self, ep: StreamEpisode, chunks: list[Chunk], decode: DecodeConfig, max_tokens: int
    ) -> Trajectory:
        """decode.mode=threshold: per chunk the two decision tokens' logprobs (one greedy token
        among them), the calibrated p and `fire`; a response's text is then greedy. Records
        the chosen decision token's logprob over the two, and each step's p."""
        r_id, s_id = self.decision_ids
        answer = decision_params(
            stop_ids=self.stop_ids,
            max_tokens=max_tokens - 1,  # after `</Response>`: text and `<|im_end|>`
            temperature=0.0,
            top_p=1.0,
            seed=None,
            banned=self.banned,
        )
        state, probs = FireState(), []

        async def decide(prompt: list[int], step: int) -> tuple[list[int], list[float]]:
            nonlocal state
            images = ep.context_images()
            t0 = time.perf_counter()
            self.inflight += 1
            try:
                l_r, l_s = await self.engine.choice_logprobs(prompt, (r_id, s_id), images)
                p = calibrated_p(l_r, l_s, decode.shift)
                probs.append(p)
                respond, state = fire(
                    state,
                    p,
                    threshold=decode.threshold,
                    integrate=decode.integrate,
                    refractory=decode.refractory_chunks,
                )
                if not respond:
                    return [s_id], [l_s]
                d = await self.engine.decide([*prompt, r_id], answer, images)
                return [r_id, *d.token_ids], [l_r, *d.logprobs]
            finally:
                self.inflight -= 1
                self.latencies.append((step, time.perf_counter() - t0))

        traj = await run_episode(ep, chunks, decide, version=lambda: self.version)
        traj.steps = calibrated_steps(traj.steps, probs)
        return traj

    # GPU weight-transfer control plane (plain dicts in, as vLLM's VLLMWeightSyncClient
    # protocol passes them), driven by actors/weight_transfer.py EngineSyncClient from learner
    # rank 0 while it broadcasts. GPU only; not exercised on a CPU machine.
    async def init_weight_transfer_engine(self, init_info: dict) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self.engine.llm.init_weight_transfer_engine(
            WeightTransferInitRequest(init_info=init_info)
        )

    async def start_weight_update(self) -> None:
        await self.engine.llm.start_weight_update()

    async def update_weights(self, update_info: dict | list) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await self.engine.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    async def finish_weight_update(self, weight_version: str | None = None) -> None:
        await self.engine.llm.finish_weight_update(weight_version)

    async def update_weight_version(self, new_version: str) -> None:
        await self.engine.llm.update_weight_version(new_version)

    # Colocated mode (actors/colocate.py orders them). vLLM CPU has no sleep mode: there both
    # verbs return at once and free nothing (measured: 6 ms and 1 ms, a warning each).
    async def sleep(self, level: int) -> None:
        await self.engine.llm.sleep(level=level)

    async def wake_up(self, tags: list[str]) -> None:
        await self.engine.llm.wake_up(tags=tags)

    def engine_world_size(self) -> int:
        """Workers of this engine in the NCCL group (tensor parallel ranks)."""
        return int(self.engine.llm.vllm_config.parallel_config.world_size)

    def shutdown(self) -> None:
        self.engine.shutdown()


class LocalRolloutGroup:
    """One `RolloutWorker` in this process, its event loop on a background thread."""

    def __init__(self, spec: WorkerSpec) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rollout-loop", daemon=True
        )
        self._thread.start()

        async def build() -> RolloutWorker:  # created on the loop that will drive it
            return RolloutWorker(spec)

        self.worker = self._run(build())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, *, samples: list, n: int, sampling: Sampling) -> list[Trajectory]:
        return self._run(
            self.worker.generate(samples=list(samples), first_index=0, n=n, sampling=sampling)
        )

    def sync_weights(self, *, version: int, source: str, blob: bytes | None = None) -> float:
        t0 = time.perf_counter()
        self._run(self.worker.sync_weights(version=version, source=source, blob=blob))
        return time.perf_counter() - t0

    def sleep(self, *, level: int) -> None:
        self._run(self.worker.sleep(level))

    def wake_up(self, *, tags: list[str]) -> None:
        self._run(self.worker.wake_up(tags))

    def weight_sync_client(self, *, timeout_s: float) -> LocalEngineClient:
        return LocalEngineClient(self, timeout_s=timeout_s)

    def cache_stats(self) -> dict[str, int]:
        return self.worker.engine.cache_stats()

    def take_latencies(self) -> list[tuple[int, float]]:
        return self.worker.take_latencies()

    def shutdown(self) -> None:
        if self._loop.is_closed():
            return

        async def stop() -> None:  # on the engine's own loop: it cancels its output task there
            self.worker.shutdown()

        self._run(stop())
        self.worker = None  # type: ignore[assignment]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


class LocalEngineClient:
    """vLLM's `VLLMWeightSyncClient` over a LocalRolloutGroup's one engine (an in-process
    learner only: it is not picklable); every call raises TimeoutError past timeout_s."""

    def __init__(self, group: LocalRolloutGroup, *, timeout_s: float) -> None:
        self.group, self.timeout_s = group, timeout_s
        self.world_size = 1 + self._call(group.worker.engine_world_size, "engine_world_size")

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        async def run() -> Any:
            out = fn()
            return await out if asyncio.iscoroutine(out) else out

        return run_with_timeout(lambda: self.group._run(run()), timeout_s=self.timeout_s, what=what)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        info = {**init_info, "rank_offset": 1}
        w = self.group.worker
        self._call(lambda: w.init_weight_transfer_engine(info), "init_weight_transfer_engine")

    def start_weight_update(self) -> None:
        self._call(self.group.worker.start_weight_update, "start_weight_update")

    def update_weights(self, update_info: dict | list) -> None:
        self._call(lambda: self.group.worker.update_weights(update_info), "update_weights")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        w = self.group.worker
        self._call(lambda: w.finish_weight_update(weight_version), "finish_weight_update")


# The Ray actor: the same worker class, one engine per actor process.
RolloutActor = ray.remote(RolloutWorker)


class RayRolloutGroup:
    """N `RolloutActor`s; samples go round-robin, one call per sample (the unit of re-run)."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        max_retries_per_sample: int = -1,
        restart_timeout_s: float = 600.0,
        env_vars: dict[str, str] | None = None,
    ) -> None:
        r = spec.rollout
        num_actors, num_cpus, num_gpus = r.num_actors, r.num_cpus, r.num_gpus
        max_restarts = r.max_restarts
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        opts: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "max_restarts": max_restarts,
        }
        if r.memory_gb > 0:
            opts["memory"] = int(r.memory_gb * (1 << 30))
        if env_vars:
            opts["runtime_env"] = {"env_vars": dict(env_vars)}
        self.restart_timeout_s = restart_timeout_s
        self.tp = r.tensor_parallel_size
        self.pgs: list = []  # one per engine when tp > 1 on GPUs
        self.actors: list = []
        for _ in range(num_actors):
            placement = self._engine_placement(num_cpus, num_gpus)
            # an engine's bundles declare no memory: the actor must not ask for any there
            placed = {k: v for k, v in opts.items() if not (placement and k == "memory")}
            placed |= placement
            self.actors.append(RolloutActor.options(**placed).remote(spec))
        # A sample is re-run at most this often (default: once per allowed restart + 1).
        self.max_attempts = (
            max_retries_per_sample if max_retries_per_sample >= 0 else max_restarts * num_actors
        ) + 1
        self.version, self.source = 0, spec.model_path
        self.reruns = 0  # samples re-run after an actor died (cumulative)
        ray.get([a.ready.remote() for a in self.actors])

    def _engine_placement(self, num_cpus: float, num_gpus: float) -> dict[str, Any]:
        """tp > 1 on GPUs: a STRICT_PACK placement group of tp one-GPU bundles for the
        engine's workers (vLLM's Ray executor, as vLLM's, verl's and OpenRLHF's examples);
        the actor sits in bundle 0 without a GPU and its workers inherit the group."""
        if self.tp <= 1 or num_gpus <= 0:
            return {}

        pg = engine_placement_group(self.tp, num_cpus=num_cpus, num_gpus=1.0)
        self.pgs.append(pg)
        try:
            ray.get(pg.ready(), timeout=self.restart_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()  # the engines placed so far and every group
            raise RuntimeError(
                f"no node has {self.tp} free GPUs for a tensor_parallel_size={self.tp} engine "
                f"within {self.restart_timeout_s:.0f} s"
            ) from None
        return {"num_gpus": 0, **in_placement_group(pg, 0, capture_child_tasks=True)}

    def _submit(
        self, actor_idx: int, sample, index: int, n: int, sampling: Sampling
    ) -> ray.ObjectRef:
        actor = self.actors[actor_idx % len(self.actors)]
        return actor.generate.remote(
            samples=[sample],
            first_index=index,
            n=n,
            sampling=sampling,
            version=self.version,
            source=self.source,
        )

    def generate(self, *, samples: list, n: int, sampling: Sampling) -> list[Trajectory]:
        pending = {self._submit(i, s, i, n, sampling): (i, 0) for i, s in enumerate(samples)}
        results: dict[int, list[Trajectory]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i, attempt = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except (RayActorError, ActorUnavailableError) as e:
                # The actor died mid-episode: Ray restarts it (max_restarts); run the whole
                # sample again there or on the next actor. Seeds make the rerun identical.
                if attempt + 1 >= self.max_attempts:
                    raise RuntimeError(f"sample {i} failed on {attempt + 1} attempts: {e}") from e
                self.reruns += 1
                target = self._alive_actor(i + attempt + 1)
                pending[self._submit(target, samples[i], i, n, sampling)] = (i, attempt + 1)
        out = [t for i in range(len(samples)) for t in results[i]]
        assert len(out) == len(samples) * n, "every trajectory exactly once"
        return out

    def _alive_actor(self, start: int) -> int:
        """The first actor from `start` on that answers (waiting out a restart, as calls to
        a restarting actor fail at once); ActorDiedError means restarts are used up."""
        deadline = time.monotonic() + self.restart_timeout_s
        while time.monotonic() < deadline:
            for k in range(len(self.actors)):
                idx = (start + k) % len(self.actors)
                try:
                    ray.get(self.actors[idx].ready.remote(), timeout=5)
                    return idx
                except (ActorUnavailableError, ray.exceptions.GetTimeoutError):
                    continue
                except RayActorError:  # dead for good: try the next actor
                    continue
            time.sleep(0.5)
        raise RuntimeError(f"no rollout actor came back within {self.restart_timeout_s:.0f} s")

    def sync_weights(self, *, version: int, source: str, blob: bytes | None = None) -> float:
        t0 = time.perf_counter()
        self.version, self.source = int(version), source
        ref = ray.put(blob) if blob is not None else None  # one copy in the store for all
        refs = [
            a.sync_weights.remote(version=version, source=source, blob=ref) for a in self.actors
        ]
        for ref in refs:
            try:
                ray.get(ref)
            except (RayActorError, ActorUnavailableError):
                pass  # a restarting actor loads (version, source) before its next episode
        return time.perf_counter() - t0

    def sleep(self, *, level: int) -> None:
        ray.get([a.sleep.remote(level) for a in self.actors])  # the caller bounds the wait

    def wake_up(self, *, tags: list[str]) -> None:
        ray.get([a.wake_up.remote(tags) for a in self.actors])

    def weight_sync_client(self, *, timeout_s: float, backend: str = "nccl") -> EngineSyncClient:
        sizes = ray.get([a.engine_world_size.remote() for a in self.actors], timeout=timeout_s)
        return EngineSyncClient(self.actors, sizes, timeout_s=timeout_s, backend=backend)

    def cache_stats(self) -> dict[str, int]:
        stats = ray.get([a.status.remote() for a in self.actors])
        return {k: sum(s[k] for s in stats) for k in ("queries", "hits", "mm_queries", "mm_hits")}

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=60)
            except (RayActorError, ActorUnavailableError, ray.exceptions.GetTimeoutError):
                pass  # already dead or stuck: ray.kill below releases it
            ray.kill(a)
        self.actors = []
        if self.pgs:
            from ray.util.placement_group import remove_placement_group

            for pg in self.pgs:
                remove_placement_group(pg)
            self.pgs = []


def make_rollout_group(cfg: Config, model_path: str) -> RolloutGroupAPI:
    """The rollout group a config asks for (a RayRolloutGroup; Ray must be initialised)."""
    return RayRolloutGroup(WorkerSpec.of(cfg, model_path))
