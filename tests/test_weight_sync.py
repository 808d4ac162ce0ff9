"""The NCCL weight sync's CPU-testable parts (the broadcast itself needs GPUs: bench/gpu_check.sh).

Known answers: what the learner would send (names, shapes, values) equals what `save_pretrained`
writes, for a tiny Qwen2.5-VL (tied head, VLM renames), with LoRA merged exactly as peft merges,
and from a ZeRO-3 engine whose parameters are partitioned; separate engines get disjoint NCCL
ranks; a peer that never answers raises TimeoutError instead of hanging; configs that ask for
NCCL without GPUs are refused at load in one line; bench/gpu_check.sh's overrides exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from streampro.actors.api import WorkerSpec
from streampro.actors.weight_transfer import engine_rank_offsets
from streampro.config import ConfigError, RolloutConfig, load_config
from streampro.data.window import Window
from streampro.learners.weight_sync import (
    GatheredWeights,
    SendItem,
    gather_groups,
    layer_key,
    send_plan,
)
from streampro.timeouts import run_with_timeout

REPO = Path(__file__).resolve().parents[1]


# ---- pure parts ------------------------------------------------------------------------------


def test_engine_rank_offsets() -> None:
    assert engine_rank_offsets([1]) == ([1], 2)
    assert engine_rank_offsets([2, 1, 4]) == ([1, 3, 4], 8)  # trainer 0; engines 1-2, 3, 4-7
    with pytest.raises(ValueError):
        engine_rank_offsets([])
    with pytest.raises(ValueError):
        engine_rank_offsets([2, 0])


def test_tensor_parallel_placement_only_on_gpus() -> None:
    from streampro.actors.rollout import RayRolloutGroup

    group = RayRolloutGroup.__new__(RayRolloutGroup)  # the placement rule alone, no actors
    group.tp, group.pgs = 2, []
    assert group._engine_placement(1.0, 0.0) == {}  # CPU engines: vLLM's own TP, no group
    group.tp = 1
    assert group._engine_placement(1.0, 1.0) == {}  # one GPU: the actor's own


def test_send_plan_merges_lora_and_renames() -> None:
    params = [
        "model.embed_tokens.weight",
        "model.layers.0.q_proj.base_layer.weight",
        "model.layers.0.q_proj.base_layer.bias",
        "model.layers.0.q_proj.lora_A.default.weight",
        "model.layers.0.q_proj.lora_B.default.weight",
        "model.layers.0.norm.weight",
        "model.layers.1.norm.weight",
        "model.norm.weight",
    ]
    rename = {p.replace(".base_layer.", "."): "x." + p for p in params}
    plan = send_plan(params, rename)
    assert [i.name for i in plan] == [
        "x.model.embed_tokens.weight",
        "x.model.layers.0.q_proj.base_layer.weight",
        "x.model.layers.0.q_proj.base_layer.bias",
        "x.model.layers.0.norm.weight",
        "x.model.layers.1.norm.weight",
        "x.model.norm.weight",
    ]
    assert plan[1].params == (params[1], params[3], params[4])  # merged with its adapters
    assert plan[2].params == (params[2],)
    with pytest.raises(ValueError, match="lacks"):
        send_plan(params[:4], rename)  # lora_B missing
    with pytest.raises(ValueError, match="checkpoint name"):
        send_plan(["a.weight", "b.weight"], {"a.weight": "w", "b.weight": "w"})


def test_gather_groups_one_layer_each_in_order() -> None:
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.a.weight",
        "model.layers.0.b.weight",
        "model.layers.1.a.weight",
        "model.visual.blocks.0.a.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert layer_key(names[1]) == "model.layers.0"
    assert layer_key(names[4]) == "model.visual.blocks.0"
    assert layer_key(names[0]) == ""
    items = [SendItem(n, (n,)) for n in names]
    groups = gather_groups(items)
    assert [[i.name for i in g] for g in groups] == [
        [names[0]],
        names[1:3],
        [names[3]],
        [names[4]],
        [names[5]],
        [names[6]],
    ]
    assert [i for g in groups for i in g] == items  # iteration order = metadata order


def test_run_with_timeout_raises_on_a_slow_peer() -> None:
    assert run_with_timeout(lambda: 7, timeout_s=5, what="quick") == 7
    with pytest.raises(KeyError):
        run_with_timeout(lambda: {}["x"], timeout_s=5, what="failing")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="update_weights did not finish within 0.5 s"):
        run_with_timeout(lambda: time.sleep(60), timeout_s=0.5, what="update_weights")
    assert time.monotonic() - t0 < 30  # returned, not hung (generous bound, not a timing test)


# ---- names and values: what reaches vLLM is what save_pretrained writes ------------------------


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory) -> str:
    from streampro.config import PolicyConfig
    from streampro.tiny_vl import policy_path

    return policy_path(PolicyConfig(cache_dir=str(tmp_path_factory.mktemp("models"))), seed=0)


def _saved(model, folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    model.save_pretrained(folder, safe_serialization=True)
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(f)
    return out


def _sent(source: GatheredWeights) -> dict[str, torch.Tensor]:
    meta = source.metadata()
    got = list(source)
    assert [n for n, _ in got] == [m[0] for m in meta]  # iteration agrees with metadata
    for (_, t), (_, dtype, shape) in zip(got, meta):
        assert t.dtype == dtype and tuple(t.shape) == shape
    return dict(got)


def test_vlm_names_and_values_equal_the_saved_checkpoint(tiny_vl, tmp_path) -> None:
    from streampro.hf_policy import load_model

    model = load_model(tiny_vl, dtype="float32")
    assert model.config.get_text_config().tie_word_embeddings
    saved = _saved(model, tmp_path / "hf")
    sent = _sent(GatheredWeights(model, dtype=torch.float32))
    assert sent.keys() == saved.keys()
    assert "lm_head.weight" not in sent  # tied head: vLLM ties it to the embedding
    assert any(k.startswith("visual.") for k in sent)  # renamed as a checkpoint names them
    assert any(k.startswith("model.layers.") for k in sent)
    for k, v in saved.items():
        torch.testing.assert_close(sent[k], v, atol=0, rtol=0)
    bf16 = _sent(GatheredWeights(model, dtype=torch.bfloat16))  # the engines' dtype
    k = "model.embed_tokens.weight"
    torch.testing.assert_close(bf16[k], saved[k].to(torch.bfloat16), atol=0, rtol=0)


def test_lora_goes_out_merged_as_peft_merges(tiny_vl, tmp_path) -> None:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from streampro.hf_policy import load_model

    model = load_model(tiny_vl, dtype="float32")
    targets = r"^(?!.*visual).*\.(q_proj|v_proj|down_proj)$"
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets), model)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_()  # B starts at 0: make the merge visible
    sent = _sent(GatheredWeights(model, dtype=torch.float32, lora_scale=8 / 4))
    for m in model.modules():  # peft's own merge, in place
        if isinstance(m, LoraLayer):
            m.merge()
    merged = {
        n.replace(".base_layer.", "."): p.detach()
        for n, p in model.named_parameters()
        if ".lora_" not in n
    }
    base = load_model(tiny_vl, dtype="float32")
    saved = _saved(base, tmp_path / "base")  # the names of the model without adapters
    assert sent.keys() == saved.keys()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(sent[key], saved[key])  # the adapter changed it
    from streampro.learners.weight_sync import checkpoint_names

    for name, key in checkpoint_names(base, list(merged)).items():
        torch.testing.assert_close(sent[key], merged[name], atol=1e-6, rtol=0)


def test_vllm_accepts_the_source_and_the_client_payloads(tiny_vl) -> None:
    """vLLM's own checks on what we hand it: its sender's metadata-vs-iteration check passes
    over our source, a non-sender rank runs send_weights (iterate only) without a client call,
    the update info it would build parses on the worker side, and the init payload our client
    sends (with the engine's rank offset) is a valid worker init info."""
    from dataclasses import asdict

    from vllm.distributed.weight_transfer.nccl_common import worker_init_payload
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerWeightTransferEngine,
        NCCLWeightTransferInitInfo,
        NCCLWeightTransferUpdateInfo,
    )

    from streampro.actors.weight_transfer import EngineSyncClient, _vllm_source
    from streampro.hf_policy import load_model

    src = _vllm_source(GatheredWeights(load_model(tiny_vl, dtype="float32"), dtype=torch.bfloat16))
    meta = src.metadata()
    n = sum(1 for _ in NCCLTrainerWeightTransferEngine._checked_iter(src, meta))
    assert n == len(meta)

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"a non-sender rank called the client's {name}")

    NCCLTrainerWeightTransferEngine(client=NoCalls(), source=src, is_sender=False).send_weights()

    update = NCCLWeightTransferUpdateInfo(
        names=[m.name for m in meta],
        dtype_names=[str(m.dtype).split(".")[-1] for m in meta],
        shapes=[list(m.shape) for m in meta],
    )
    assert {getattr(torch, d) for d in update.dtype_names} == {torch.bfloat16}
    NCCLWeightTransferUpdateInfo(**asdict(update))  # what the worker parses

    sent: list[dict] = []

    class Handle:  # records what EngineSyncClient would send to each actor
        class init_weight_transfer_engine:  # mirrors the actor method of that name
            @staticmethod
            def remote(info: dict) -> None:
                sent.append(info)

    client = EngineSyncClient([Handle(), Handle()], [1, 2], timeout_s=1)
    client._wait = lambda refs, what: None  # no Ray here: the payloads are the point
    payload = worker_init_payload(
        NCCLWeightTransferInitInfo(
            master_address="10.0.0.1", master_port=29500, rank_offset=1, world_size=4, packed=True
        )
    )
    client.init_weight_transfer_engine(payload)
    infos = [NCCLWeightTransferInitInfo(**p) for p in sent]
    assert [i.rank_offset for i in infos] == [1, 2] and {i.world_size for i in infos} == {4}


@pytest.mark.slow
def test_zero3_partitioned_parameters_are_gathered_whole(tiny_vl, tmp_path, learner_spec) -> None:
    """A real ZeRO-3 engine (DeepSpeed, one gloo rank), its model built inside zero.Init:
    every parameter is partitioned, yet the source declares whole shapes without gathering
    and yields the exported weights, which are the checkpoint's own."""
    from safetensors.torch import load as safetensors_load
    from safetensors.torch import load_file

    from streampro.learners.group import LocalLearnerGroup

    spec = learner_spec("sft", "learner.zero_stage=3", "learner.micro_batch=1")
    group = LocalLearnerGroup(model_path=tiny_vl, spec=spec)
    try:
        module = group.worker.engine.module
        # ZeRO-3 keeps small parameters whole (persistence threshold); the big ones are empty
        partitioned = [n for n, p in module.named_parameters() if p.numel() == 0]
        assert "model.language_model.embed_tokens.weight" in partitioned
        source = GatheredWeights(module, dtype=torch.float32)
        sent = _sent(source)
        folder = Path(group.export_hf(path=str(tmp_path / "hf")))
        blob = group.weights_blob(dtype="float32")  # the colocated CPU handoff, in memory
    finally:
        group.shutdown()
    in_memory = safetensors_load(blob)
    assert in_memory.keys() == sent.keys()
    for k, v in sent.items():
        torch.testing.assert_close(in_memory[k], v, atol=0, rtol=0)
    saved: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        saved |= load_file(f)
    assert sent.keys() == saved.keys()
    for k, v in saved.items():
        torch.testing.assert_close(sent[k], v, atol=0, rtol=0)
    # built inside zero.Init, the rank loaded the checkpoint's own weights, not a fresh init
    original: dict[str, torch.Tensor] = {}
    for f in sorted(Path(tiny_vl).glob("*.safetensors")):
        original |= load_file(f)
    assert original.keys() == saved.keys()
    for k, v in original.items():
        torch.testing.assert_close(saved[k], v, atol=0, rtol=0)


# ---- the client over (fake, slow) rollout actors on a real local Ray ----------------------------


@pytest.mark.slow
def test_client_gives_each_engine_its_ranks_and_times_out(ray_local) -> None:
    from streampro.actors.weight_transfer import EngineSyncClient

    @ray_local.remote
    class FakeEngine:
        """The rollout actor's control plane; update_weights never returns (a dead peer)."""

        def __init__(self) -> None:
            self.calls: list = []

        def init_weight_transfer_engine(self, init_info: dict) -> None:
            self.calls.append(("init", init_info))

        def start_weight_update(self) -> None:
            self.calls.append(("start",))

        def update_weights(self, update_info) -> None:
            time.sleep(3600)

        def finish_weight_update(self, weight_version=None) -> None:
            self.calls.append(("finish", weight_version))

        def seen(self) -> list:
            return self.calls

    engines = [FakeEngine.options(max_concurrency=4).remote() for _ in range(2)]
    try:
        # started before the clock runs: on a loaded box an actor's start alone can take 2 s
        assert ray_local.get([e.seen.remote() for e in engines], timeout=120) == [[], []]
        client = EngineSyncClient(engines, [2, 1], timeout_s=5.0)
        assert client.world_size == 4
        info = {"master_address": "10.0.0.1", "master_port": 29999, "world_size": 4}
        client.init_weight_transfer_engine(info)
        client.start_weight_update()
        with pytest.raises(TimeoutError, match=r"update_weights \(NCCL receive\) did not finish"):
            client.update_weights({"names": ["w"], "dtype_names": ["float32"], "shapes": [[1]]})
        client.finish_weight_update("3")
        with pytest.raises(ValueError, match="world size"):
            client.init_weight_transfer_engine({**info, "world_size": 3})
        seen = ray_local.get([e.seen.remote() for e in engines])
        assert [c[1]["rank_offset"] for c in (seen[0][0], seen[1][0])] == [1, 3]
        assert [c[0] for c in seen[0]] == ["init", "start", "finish"]
        assert seen[1][-1] == ("finish", "3")
    finally:
        for e in engines:
            ray_local.kill(e)


@pytest.mark.slow
def test_engine_side_of_a_weight_transfer_sync(tiny_path) -> None:
    """A real vLLM CPU engine: the in-process client sees 1 trainer + 1 worker; a
    WEIGHT_TRANSFER sync (weights already sent) runs the head refresh and cache resets and the
    engine decides exactly as before; a request for a version it never received fails loudly."""
    from streampro.actors.api import WEIGHT_TRANSFER, Sampling
    from streampro.actors.rollout import LocalRolloutGroup
    from streampro.bench.rollout import synthetic_streams

    settings = RolloutConfig(
        max_answer_tokens=4, kv_cache_gb=0.25, max_num_seqs=8, max_model_len=2048
    )
    group = LocalRolloutGroup(
        WorkerSpec(tiny_path, settings, dtype="float32", seed=0, window=Window(200, 50))
    )
    try:
        assert group.weight_sync_client(timeout_s=60).world_size == 2
        samples = synthetic_streams(1, 4, seed=2)
        greedy = Sampling(temperature=0.0, top_p=1.0, max_answer_tokens=4, seed=0)
        before = group.generate(samples=samples, n=1, sampling=greedy)
        group.sync_weights(version=1, source=WEIGHT_TRANSFER)
        after = group.generate(samples=samples, n=1, sampling=greedy)
        assert [g.token_ids for g in after[0].segments] == [g.token_ids for g in before[0].segments]
        assert group.worker.status()["version"] == 1
        stale = group.worker.generate(
            samples=samples, first_index=0, n=1, sampling=greedy, version=2, source=WEIGHT_TRANSFER
        )
        with pytest.raises(RuntimeError, match="restarted after an NCCL weight sync"):
            group._run(stale)
    finally:
        group.shutdown()


# ---- config refusal at load -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.weight_transfer_backend=nccl"], "needs GPUs"),
        (
            ["rollout.weight_transfer_backend=nccl", "rollout.num_gpus=1", "learner.num_gpus=0"],
            "needs GPUs",
        ),
        (
            [
                "rollout.weight_transfer_backend=nccl",
                "rollout.num_gpus=0.5",
                "learner.num_gpus=0.5",
            ],
            "needs GPUs",
        ),
        (
            [
                "rollout.weight_transfer_backend=nccl",
                "rollout.num_gpus=1",
                "learner.num_gpus=1",
                "learner.in_process=true",
            ],
            "in_process",
        ),
        (["rollout.weight_transfer_backend=gloo"], "must be '', 'nccl' or 'ipc'"),
        (["rollout.tensor_parallel_size=2", "rollout.num_gpus=2"], "num_gpus must be 1"),
    ],
)
def test_gpu_paths_refused_at_load(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_nccl_accepted_with_gpus() -> None:
    cfg = load_config(
        None, ["rollout.weight_transfer_backend=nccl", "rollout.num_gpus=1", "learner.num_gpus=1"]
    )
    assert cfg.rollout.weight_sync_timeout_s > 0


def test_cli_refuses_nccl_without_gpus_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "grpo", "rollout.weight_transfer_backend=nccl"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the exit code is what is tested
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "weight_transfer_backend=nccl needs GPUs" in lines[0]


def test_gpu_check_overrides_exist() -> None:
    """bench/gpu_check.sh's overrides load onto configs/tiny_vl.yaml (every key exists)."""
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    block = re.search(r"OVERRIDES=\((.*?)\)", script, re.DOTALL)
    assert block, "bench/gpu_check.sh defines OVERRIDES=( ... )"
    overrides = [
        o.replace('"$RUN"', "/tmp/x").strip('"')
        for o in re.findall(r'\S+="?[^"\s]*"?', block.group(1))
    ]
    assert any(o.startswith("rollout.weight_transfer_backend=nccl") for o in overrides)
    cfg = load_config(REPO / "configs" / "tiny_vl.yaml", overrides)
    assert cfg.grpo.max_steps == 2 and cfg.rollout.weight_transfer_backend == "nccl"


def test_publish_orchestrates_the_nccl_sync(tmp_path) -> None:
    """GRPOStep.publish with backend nccl: the transfer opens once, each version is sent and
    then taken by the engines; no HF folder is written (recording fakes: orchestration only)."""
    from streampro.actors.api import WEIGHT_TRANSFER
    from streampro.config import Config
    from streampro.learners.grpo_loop import GRPOStep

    calls: list[tuple] = []

    class Rollout:
        def weight_sync_client(self, *, timeout_s: float) -> str:
            calls.append(("client", timeout_s))
            return "client"

        def sync_weights(self, *, version: int, source: str) -> float:
            calls.append(("sync", version, source))
            return 0.0

    class Learner:
        def init_weight_sync(self, *, client, dtype: str, timeout_s: float) -> None:
            calls.append(("init", client, dtype, timeout_s))

        def send_weights(self, *, version: int) -> float:
            calls.append(("send", version))
            return 0.0

        def export_hf(self, *, path: str) -> str:
            raise AssertionError("the NCCL path writes no folder")

    cfg = Config()  # built directly: load_config refuses nccl on a machine without GPUs
    cfg.rollout.weight_transfer_backend, cfg.rollout.weight_sync_timeout_s = "nccl", 42.0
    cfg.policy.dtype = "bfloat16"
    step = GRPOStep(
        cfg=cfg,
        train=[],
        rollout=Rollout(),
        pool=None,
        learner=Learner(),
        cursor=None,  # type: ignore[arg-type]
        run_dir=tmp_path,
        pad_id=0,
    )
    step.publish(1)
    step.publish(2)
    assert calls == [
        ("client", 42.0),
        ("init", "client", "bfloat16", 42.0),
        ("send", 1),
        ("sync", 1, WEIGHT_TRANSFER),
        ("send", 2),
        ("sync", 2, WEIGHT_TRANSFER),
    ]
    assert not (tmp_path / "weights").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU node runs the check")
def test_gpu_check_fails_loudly_without_gpus(tmp_path) -> None:
    out = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # the exit code is what is tested
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "gpu_check: FAILED: nvidia-smi not found: run this on a GPU node"
    ]
