"""Learner groups: `LocalLearnerGroup` (one in-process rank) and `RayLearnerGroup` (K Ray actors).

Both are one `LearnerGroup`: the verbs of learners/api.py `LearnerGroupAPI` written once over
a list of rank handles and a `get` that waits for what they started. A handle is a
`LearnerWorker` in this process (`LocalRank`: `rank.train.remote(...)` runs the call at once,
`get` unboxes the result) or a Ray actor handle of one (`get` is `ray.get` with a deadline),
so both groups run the same maths and the same transport code. A group computes the step's
global totals (CB-Stream class counts, the token or sequence normaliser) BEFORE splitting the
batch over ranks and micro-batches, so a step's loss and gradient do not depend on the split.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

import ray
import torch
from ray.util.placement_group import remove_placement_group

from streampro.cluster.resources import in_placement_group, learner_placement_group
from streampro.config import Config, GRPOConfig, LearnerConfig, SFTConfig
from streampro.learners.api import Batch, LearnerGroupAPI
from streampro.learners.losses import cb_stream_weights, finish_decision_metrics
from streampro.learners.packing import assign_rows, materialize
from streampro.learners.worker import OBJECTIVES, LearnerSpec, LearnerWorker
from streampro.tokens import CLASS_RESPONSE, CLASS_SILENCE

_REQUIRED = {"sft": ("decision_class",), "grpo": ("advantages", "old_logprobs")}
_BASE_KEYS = ("input_ids", "position_ids", "seq_ids", "loss_mask")
CALL_TIMEOUT_S = 3600.0
"""Longest a Ray rank may take over one verb (a step, a checkpoint, an export) before the
group gives up on it: past this a rank is stuck (e.g. in a collective a dead peer left)."""
_SYNC_MARGIN_S = 60.0
"""Seconds a group waits for its ranks beyond the sync timeout they enforce themselves."""
_SHUTDOWN_S = 30.0
_STATES_S = 600.0
"""Longest an offload or reload of the optimizer states may take: a host copy of a few GB,
so past this a rank is stuck, not slow."""
_PLACEMENT_S = 600.0


def check_batch(batch: Batch, objective: str) -> None:
    """Fail early, naming the missing or misshapen key, before any rank starts work."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})")
    shape = tuple(batch["input_ids"].shape) if "input_ids" in batch else None
    for key in _BASE_KEYS + _REQUIRED[objective]:
        if key not in batch:
            raise ValueError(f"batch for {objective!r} lacks key {key!r}")
        if tuple(batch[key].shape) != shape:
            raise ValueError(
                f"batch[{key!r}] has shape {tuple(batch[key].shape)}, input_ids {shape}"
            )


def step_totals(batch: Batch, objective: SFTConfig | GRPOConfig) -> dict[str, float]:
    """Global quantities of the whole step: class counts and the loss normaliser (GRPO:
    tokens or, with `grpo.loss_agg=seq_mean`, sequences)."""
    mask = batch["loss_mask"] > 0  # [B, T]
    totals: dict[str, float] = {"tokens": float(mask.sum())}
    if isinstance(objective, SFTConfig):
        dc = batch["decision_class"]
        totals["n_silence"] = float((mask & (dc == CLASS_SILENCE)).sum())
        totals["n_response"] = float((mask & (dc == CLASS_RESPONSE)).sum())
        totals["normalizer"] = totals["tokens"]
    elif objective.loss_agg == "seq_mean":
        if int(batch["seq_ids"].max()) > 0:
            raise ValueError(
                "loss_agg='seq_mean' needs one sequence per row (do not pack GRPO batches)"
            )
        totals["normalizer"] = float(mask.any(dim=1).sum())
    else:
        totals["normalizer"] = totals["tokens"]
    return totals


def reduce_stats(
    per_rank: list[dict[str, float]],
    objective: SFTConfig | GRPOConfig,
    *,
    totals: dict[str, float],
) -> dict[str, float]:
    """Add rank sums, then turn them into the step's metrics (global means)."""
    acc: dict[str, float] = {}
    for stats in per_rank:
        for k, v in stats.items():
            if k.startswith("max/"):
                acc[k] = max(acc.get(k, v), v)
            elif k.startswith("last/"):
                acc[k] = v  # identical on every rank (global grad norm, lr)
            else:
                acc[k] = acc.get(k, 0.0) + v
    n = max(acc.get("sum/tokens", 0.0), 1.0)
    out = {
        "loss": acc.get("sum/loss", 0.0),
        "tokens": acc.get("sum/tokens", 0.0),
        "entropy": acc.get("sum/entropy", 0.0) / n,
        "grad_norm": acc.get("last/grad_norm", 0.0),
        "lr": acc.get("last/lr", 0.0),
    }
    if isinstance(objective, SFTConfig):
        out["nll"] = acc.get("sum/nll", 0.0) / n
        out.update(
            finish_decision_metrics({k[4:]: v for k, v in acc.items() if k.startswith("sum/")})
        )
        out["n_silence"], out["n_response"] = totals["n_silence"], totals["n_response"]
        out["w_silence"], out["w_response"] = cb_stream_weights(
            int(totals["n_silence"]), int(totals["n_response"]), objective.beta
        )
    else:
        for k, v in acc.items():
            if k.startswith("sum/") and k not in ("sum/loss", "sum/tokens", "sum/entropy"):
                out[k[4:]] = v / n
        out["ratio_max"] = acc.get("max/ratio_max", 0.0)
    return out


def plan_micro_batches(
    batch: Batch, learner: LearnerConfig, world_size: int
) -> list[list[list[int]]]:
    """Rows per rank per micro-batch, by tokens (micro_batch_tokens > 0) or by row count."""
    return assign_rows(
        batch,
        world_size=world_size,
        micro_batch=learner.micro_batch,
        micro_batch_tokens=learner.micro_batch_tokens,
    )


def _scatter_logprobs(
    batch: Batch, plan: list[list[list[int]]], results: list[list[torch.Tensor]]
) -> torch.Tensor:
    out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)  # [B, T]
    for rank_rows, rank_lps in zip(plan, results):
        for rows, lp in zip(rank_rows, rank_lps):
            if rows:
                out[rows, : lp.shape[1]] = lp
    return out


def _tmp_sibling(path: str) -> Path:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, path: str) -> None:
    """Atomic-ish replace: rename the finished temp folder over the final one."""
    final = Path(path)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


# ---- the transport: rank handles and the `get` that waits for them -------------------------

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """A call started on a rank: a Ray ObjectRef, or in process the finished call (`Done`)."""


@dataclass(frozen=True)
class Done(Generic[T_co]):
    """The result of a call a `LocalRank` ran at once."""

    value: T_co


class Verb(Protocol[P, T_co]):
    """One verb of a rank: `rank.train.remote(...)` starts it; the group's `get` waits."""

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Pending[T_co]: ...


class RankHandle(Protocol):
    """A learner rank as a group drives it: the verbs of `LearnerWorker`, each behind
    `.remote` (a Ray actor handle of a LearnerWorker, or a `LocalRank`)."""

    @property
    def address(self) -> Verb[[], tuple[str, int]]: ...
    @property
    def setup(self) -> Verb[..., None]: ...
    @property
    def info(self) -> Verb[[], dict]: ...
    @property
    def train(self) -> Verb[..., dict[str, float]]: ...
    @property
    def logprobs(self) -> Verb[..., list[torch.Tensor]]: ...
    @property
    def keep_weights(self) -> Verb[..., None]: ...
    @property
    def save(self) -> Verb[..., None]: ...
    @property
    def load(self) -> Verb[..., dict]: ...
    @property
    def export_hf(self) -> Verb[..., None]: ...
    @property
    def weights_blob(self) -> Verb[..., bytes | None]: ...
    @property
    def init_weight_sync(self) -> Verb[..., None]: ...
    @property
    def send_weights(self) -> Verb[..., float]: ...
    @property
    def offload_states(self) -> Verb[..., list[str]]: ...
    @property
    def reload_states(self) -> Verb[[], list[str]]: ...
    @property
    def shutdown(self) -> Verb[[], None]: ...


class Get(Protocol):
    """Wait for calls started on the ranks: their results in order, or an error naming
    `what` (TimeoutError past `timeout_s` where the transport can bound the wait)."""

    def __call__(
        self, started: Sequence[Pending[T]], /, *, what: str, timeout_s: float
    ) -> list[T]: ...


class _Now(Generic[P, T]):
    """A worker method behind `.remote`: runs the call at once, in this process."""

    def __init__(self, fn: Callable[P, T]) -> None:
        self.fn = fn

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Done[T]:
        return Done(self.fn(*args, **kwargs))


class LocalRank:
    """A LearnerWorker in this process as a rank handle (no Ray, no copies)."""

    def __init__(self, worker: LearnerWorker) -> None:
        self.worker = worker
        self.address = _Now(worker.address)
        self.setup = _Now(worker.setup)
        self.info = _Now(worker.info)
        self.train = _Now(worker.train)
        self.logprobs = _Now(worker.logprobs)
        self.keep_weights = _Now(worker.keep_weights)
        self.save = _Now(worker.save)
        self.load = _Now(worker.load)
        self.export_hf = _Now(worker.export_hf)
        self.weights_blob = _Now(worker.weights_blob)
        self.init_weight_sync = _Now(worker.init_weight_sync)
        self.send_weights = _Now(worker.send_weights)
        self.offload_states = _Now(worker.offload_states)
        self.reload_states = _Now(worker.reload_states)
        self.shutdown = _Now(worker.shutdown)


def local_get(started: Sequence[Pending[T]], *, what: str, timeout_s: float) -> list[T]:
    """In process every call has run by the time it is started: nothing to wait for, so no
    deadline either (the weight sync bounds its own NCCL steps, learners/weight_sync.py)."""
    out: list[T] = []
    for call in started:
        if not isinstance(call, Done):
            raise TypeError(f"{what}: {type(call).__name__} is not an in-process result")
        out.append(call.value)
    return out


def wait_refs(refs: Sequence[Pending[T]], *, what: str, timeout_s: float) -> list[T]:
    """The Ray `get`: ray.get with a deadline that raises TimeoutError naming the step (as
    streampro.timeouts.run_with_timeout words it), so a stuck rank never hangs the driver."""
    try:
        return ray.get(list(refs), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout_s:g} s") from None


# ---- the group ------------------------------------------------------------------------------


class LearnerGroup:
    """`LearnerGroupAPI` over rank handles: every verb is written here once, for both the
    in-process and the Ray group; subclasses only start and release their ranks."""

    def __init__(self, spec: LearnerSpec, ranks: Sequence[RankHandle], get: Get) -> None:
        self.spec = spec
        self.ranks = list(ranks)
        self.world_size = len(self.ranks)
        self._get = get
        self.sync_timeout_s = 0.0  # set by init_weight_sync

    def _all(
        self, started: Sequence[Pending[T]], what: str, timeout_s: float = CALL_TIMEOUT_S
    ) -> list[T]:
        return self._get(started, what=what, timeout_s=timeout_s)

    def _start(self, model_path: str) -> None:
        """Rank 0's address is the rendezvous (127.0.0.1 when every rank is on one node);
        every rank then joins torch.distributed and builds its engine."""
        addrs = self._all([r.address.remote() for r in self.ranks], "learner rank addresses")
        one_node = len({ip for ip, _ in addrs}) == 1
        master = "127.0.0.1" if one_node else addrs[0][0]
        port = addrs[0][1]
        self._all(
            [r.setup.remote(master_addr=master, master_port=port) for r in self.ranks],
            f"learner setup of {model_path}",
        )

    def info(self) -> list[dict]:
        """What each rank's setup chose: precision and torch threads."""
        return self._all([r.info.remote() for r in self.ranks], "learner info")

    def train_step(self, *, batch: Batch, objective: str) -> dict[str, float]:
        check_batch(batch, objective)
        if objective != self.spec.name:
            raise ValueError(
                f"this learner group trains {self.spec.name!r}, not {objective!r} "
                "(a group is built for one objective: make_learner_group(objective=...))"
            )
        obj = self.spec.objective
        totals = step_totals(batch, obj)
        plan = plan_micro_batches(batch, self.spec.learner, self.world_size)
        started = [
            r.train.remote(
                micro_batches=[materialize(batch, rows) for rows in plan[k]], totals=totals
            )
            for k, r in enumerate(self.ranks)
        ]
        return reduce_stats(self._all(started, f"learner {objective} step"), obj, totals=totals)

    def logprobs(
        self, *, batch: Batch, reference: bool = False, version: int | None = None
    ) -> torch.Tensor:
        plan = plan_micro_batches(batch, self.spec.learner, self.world_size)
        started = [
            r.logprobs.remote(
                micro_batches=[materialize(batch, rows) for rows in plan[k]],
                reference=reference,
                version=version,
            )
            for k, r in enumerate(self.ranks)
        ]
        return _scatter_logprobs(batch, plan, self._all(started, "learner logprobs"))

    def keep_weights(self, *, version: int) -> None:
        self._all([r.keep_weights.remote(version=version) for r in self.ranks], "keep_weights")

    def save_checkpoint(self, *, path: str, client_state: dict | None = None) -> None:
        tmp = _tmp_sibling(path)  # ranks write into one shared folder (same node or shared FS)
        state = dict(client_state or {})
        self._all(
            [r.save.remote(path=str(tmp), client_state=state) for r in self.ranks],
            f"learner checkpoint {path}",
        )
        _publish(tmp, path)

    def load_checkpoint(self, *, path: str) -> dict:
        return self._all([r.load.remote(path=path) for r in self.ranks], f"learner load {path}")[0]

    def export_hf(self, *, path: str) -> str:
        tmp = _tmp_sibling(path)
        self._all([r.export_hf.remote(path=str(tmp)) for r in self.ranks], f"export {path}")
        _publish(tmp, path)
        return str(path)

    def weights_blob(self, *, dtype: str) -> bytes:
        # every rank iterates (ZeRO-3 gathers are collectives); rank 0 returns the blob
        blob = self._all([r.weights_blob.remote(dtype=dtype) for r in self.ranks], "weights")[0]
        assert blob is not None  # rank 0 always returns one
        return blob

    def init_weight_sync(self, *, client: Any, dtype: str, timeout_s: float) -> None:
        # rank 0 hosts the NCCL rendezvous on its own node
        ip, port = self._all(
            [self.ranks[0].address.remote()], "learner rank 0 address", timeout_s=timeout_s
        )[0]
        started = [
            r.init_weight_sync.remote(
                master_address=ip,
                master_port=port,
                world_size=client.world_size,
                client=client,
                dtype=dtype,
                timeout_s=timeout_s,
            )
            for r in self.ranks
        ]
        # the ranks time out themselves (run_with_timeout) and say where; this is the backstop
        self._all(started, "learner init_weight_sync", timeout_s=timeout_s + _SYNC_MARGIN_S)
        self.sync_timeout_s = timeout_s

    def send_weights(self, *, version: int) -> float:
        if not self.sync_timeout_s:
            raise RuntimeError("send_weights before init_weight_sync")
        started = [r.send_weights.remote(version=version) for r in self.ranks]
        what = f"learner send_weights v{version}"
        return self._all(started, what, timeout_s=self.sync_timeout_s + _SYNC_MARGIN_S)[0]

    def offload_states(self, *, include: list[str], pin_memory: bool = True) -> list[str]:
        started = [
            r.offload_states.remote(include=include, pin_memory=pin_memory) for r in self.ranks
        ]
        return self._all(started, f"learner offload_states {include}", _STATES_S)[0]

    def reload_states(self) -> list[str]:
        started = [r.reload_states.remote() for r in self.ranks]
        return self._all(started, "learner reload_states", _STATES_S)[0]

    def shutdown(self) -> None:
        """Free every rank's engine; a rank stuck in a collective after a peer failed must not
        block it (`_release` then ends the ranks). A second call finds nothing to do."""
        try:
            self._all([r.shutdown.remote() for r in self.ranks], "learner shutdown", _SHUTDOWN_S)
        except (ray.exceptions.RayError, TimeoutError) as e:  # the ranks are released below
            warnings.warn(
                f"learner shutdown: {type(e).__name__}: {e}; killing the ranks", stacklevel=2
            )
        finally:
            self._release()
            self.ranks = []

    def _release(self) -> None:
        """What the group holds beyond its ranks' engines (Ray: the actors and their bundles)."""


class LocalLearnerGroup(LearnerGroup):
    """World size 1 in this process: DeepSpeed over a single gloo rank (same code as Ray ranks)."""

    def __init__(self, *, model_path: str, spec: LearnerSpec) -> None:
        self.worker = LearnerWorker(model_path=model_path, rank=0, world_size=1, spec=spec)
        super().__init__(spec, [LocalRank(self.worker)], local_get)
        self._start(model_path)


def rank_env(learner: LearnerConfig) -> dict[str, str]:
    """Environment of a Ray rank: its DeepSpeed accelerator follows the GPUs it asks for, so
    a GPU rank never inherits the DS_ACCELERATOR=cpu a CPU-only local cluster gives workers."""
    accelerator = "cuda" if learner.num_gpus > 0 else "cpu"
    return {"TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": accelerator}


class RayLearnerGroup(LearnerGroup):
    """`learner.num_ranks` Ray actors in one placement group, each a rank of one DeepSpeed
    data-parallel engine, with the CPUs, GPUs, memory and placement of `spec`."""

    def __init__(self, *, model_path: str, spec: LearnerSpec, role_resource: bool = False) -> None:
        """role_resource asks for the 'learner' custom resource so an autoscaler starts nodes
        of the learner worker group (cluster.role_resources)."""
        super().__init__(spec, [], wait_refs)  # the ranks join once their actors exist
        lc = spec.learner
        env = rank_env(lc)
        self.pg: Any = learner_placement_group(
            lc.num_ranks,
            spec.num_cpus,
            lc.num_gpus,
            lc.placement,
            memory_gb=lc.memory_gb,
            custom=role_resource,
        )
        try:
            wait_refs([self.pg.ready()], what="learner placement group", timeout_s=_PLACEMENT_S)
            remote_cls = ray.remote(LearnerWorker)
            self.ranks = [
                remote_cls.options(
                    num_cpus=spec.num_cpus,
                    num_gpus=lc.num_gpus,
                    runtime_env={"env_vars": env},
                    **in_placement_group(self.pg, i),
                ).remote(model_path=model_path, rank=i, world_size=lc.num_ranks, spec=spec)
                for i in range(lc.num_ranks)
            ]
            self.world_size = lc.num_ranks
            self._start(model_path)
        except BaseException:
            self.shutdown()  # a failed start must not leave actors and bundles behind
            raise

    @property
    def actors(self) -> list[Any]:
        """The ranks' Ray actor handles."""
        return self.ranks

    def _release(self) -> None:
        for a in self.ranks:
            ray.kill(a)
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None


def make_learner_group(cfg: Config, model_path: str, *, objective: str) -> LearnerGroupAPI:
    """The learner group of a config for `objective` ('sft' or 'grpo'): in this process with
    `learner.in_process=true`, else Ray actors."""
    spec = LearnerSpec.from_config(cfg, objective=objective)
    if spec.learner.in_process:
        return LocalLearnerGroup(model_path=model_path, spec=spec)
    return RayLearnerGroup(
        model_path=model_path, spec=spec, role_resource=cfg.cluster.role_resources
    )


def rank_cpus(cfg: Config, objective: str) -> float:
    """CPUs of each learner rank for an objective (`LearnerSpec.num_cpus`): sft.num_cpus in
    SFT when set, else learner.num_cpus."""
    return LearnerSpec.from_config(cfg, objective=objective).num_cpus
