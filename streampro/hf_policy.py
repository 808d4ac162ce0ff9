"""Any Hugging Face policy folder (Qwen2.5-VL, Qwen3-VL or a causal text LM) made stream-ready.

A real checkpoint lacks the decision tokens `</Silence>` and `</Response>`. `extend_policy`
adds every missing stream token (streampro/tokens.py) to the tokenizer as one special id
each, gives the new embedding rows (and output rows, when untied) the mean of the existing
rows, and saves the extended folder with the model's own processor files and chat template,
so vLLM and transformers load the very same vocabulary. Old tokens keep their rows: their
logits do not change. The folder is content-addressed (source identity + added tokens) in
the policy cache, built once.

`turn_markers` reads the model's own chat template for the token ids the dialogue needs
(turn openers and closer, image placeholder), instead of assuming Qwen's literal strings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from streampro import tiny, tiny_vl, vl_compat
from streampro import tokens as T
from streampro.errors import UserError

EXTEND_VERSION = 1  # bump when the extension changes, so old cache folders are not reused
MARKER_FILE = "streampro_extended.json"
# Tokens a stream needs as single ids: the decisions, and the chat markers where the model's
# template does not already provide them (Qwen's do).
STREAM_TOKENS = (T.SILENCE, T.RESPONSE)
_SENTINEL = "\u2063STREAMPRO\u2063"  # text no template adds, split out of rendered turns


def is_vlm(config) -> bool:
    """True for image-text models (a vision_config)."""
    return getattr(config, "vision_config", None) is not None


def load_model(path: str | os.PathLike, *, dtype: str = "float32"):
    """The policy model in transformers: image-text-to-text for a VLM, else causal LM."""

    vl_compat.install()
    cfg = AutoConfig.from_pretrained(path)
    cls = AutoModelForImageTextToText if is_vlm(cfg) else AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=getattr(torch, dtype))


def pad_token_id(tokenizer) -> int:
    """The id the learner pads rows with: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def load_processor(path: str | os.PathLike):
    """The processor of a VLM folder (AutoProcessor), or None for a text model."""

    vl_compat.install()
    if not is_vlm(AutoConfig.from_pretrained(path)):
        return None
    return AutoProcessor.from_pretrained(path)


def missing_tokens(tokenizer, wanted=STREAM_TOKENS) -> list[str]:
    """The stream tokens the tokenizer does not hold as one id."""
    out = []
    for t in wanted:
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            out.append(t)
    return out


def _mean_init(weight, new_ids: list[int], n_old: int) -> None:
    """Rows of new tokens <- the mean of the first n_old rows (the tokens the model knows)."""

    with torch.no_grad():
        mean = weight[:n_old].float().mean(dim=0).to(weight.dtype)  # [H]
        weight[new_ids] = mean


def add_tokens(model, tokenizer, tokens: list[str]) -> list[int]:
    """Add tokens (special, one id each) and mean-initialise their rows; returns their ids.

    Embeddings grow only when the new ids reach past the matrix (real checkpoints pad their
    vocabulary: the padding rows are then reused). Rows of existing ids are untouched.
    """

    n_old = len(tokenizer)
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in tokens
            ]
        },
        replace_extra_special_tokens=False,
    )
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    emb = model.get_input_embeddings()
    if max(new_ids) >= emb.weight.shape[0]:
        rows = (len(tokenizer) + 63) // 64 * 64
        model.resize_token_embeddings(rows, mean_resizing=False)
        emb = model.get_input_embeddings()
    _mean_init(emb.weight, new_ids, n_old)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
        _mean_init(out.weight, new_ids, n_old)
    return new_ids


def _source_digest(src: Path) -> str:
    """Identity of a source folder: names, sizes and mtimes of its files (cheap, no reads)."""
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:12]


def _copy_side_files(src: Path, out: Path) -> None:
    """Processor and template files the model/tokenizer save does not write."""
    for name in (
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "processor_config.json",
        "chat_template.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        if (src / name).is_file() and not (out / name).is_file():
            shutil.copy2(src / name, out / name)


def extend_policy(
    src: str | os.PathLike, cache_dir: str | os.PathLike, *, dtype: str = "float32"
) -> Path:
    """The folder of `src` with every missing stream token added (src itself when none is).

    Built once into `{cache_dir}/ext-{digest}` (temp folder + rename); the marker file lists
    the added tokens and their ids.
    """

    src = Path(src)
    if not (src / "config.json").is_file():
        raise UserError(f"policy.name_or_path: {src} is not a Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(src)
    todo = missing_tokens(tokenizer)
    if not todo:
        return src
    key = json.dumps(
        {"v": EXTEND_VERSION, "src": str(src.resolve()), "id": _source_digest(src), "add": todo},
        sort_keys=True,
    )
    final = Path(cache_dir) / f"ext-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (final / MARKER_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ext-", dir=final.parent))
    try:
        model = load_model(src, dtype=dtype)
        new_ids = add_tokens(model, tokenizer, todo)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _copy_side_files(src, tmp)
        marker = {"source": str(src.resolve()), "added": dict(zip(todo, new_ids))}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process built it first
            if not (final / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class TurnMarkers:
    """Token ids of the model's own chat layout (rendered by its chat template)."""

    system_open: tuple[int, ...]
    """Before the system prompt's text."""
    user_open: tuple[int, ...]
    """Before a user turn's content."""
    assistant_open: tuple[int, ...]
    """The generation prompt: before an assistant turn's content."""
    turn_close: tuple[int, ...]
    """After a turn's content (end-of-turn token and newline)."""
    image: tuple[int, ...]
    """One image in a user turn, placeholder unexpanded (e.g. vision_start, image_pad,
    vision_end); empty for a text model."""
    image_token_id: int | None
    """The placeholder id that the processor repeats once per merged patch."""
    stop_ids: tuple[int, ...]
    """Ids that end an assistant turn (the end-of-turn token)."""


def _render(tokenizer, messages: list[dict], *, gen: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=gen, enable_thinking=False
    )


def turn_markers(tokenizer, image_token_id: int | None = None) -> TurnMarkers:
    """Read turn openers, the closer and the image placeholder off the model's chat template.

    The template renders sentinel texts; the strings around them are tokenised as the
    dialogue will hold them. Raises UserError when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the policy's tokenizer has no chat template (tokenizer_config/jinja)")
    s = _SENTINEL
    sys_txt = _render(tokenizer, [{"role": "system", "content": s}])
    one = _render(tokenizer, [{"role": "system", "content": "x"}, {"role": "user", "content": s}])
    two = _render(
        tokenizer,
        [{"role": "system", "content": "x"}, {"role": "user", "content": s}],
        gen=True,
    )
    head = one[: one.index(s)]
    user_open = head[len(_render(tokenizer, [{"role": "system", "content": "x"}])) :]

    def enc(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False))

    image: tuple[int, ...] = ()
    if image_token_id is not None:
        msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s}]}]
        with_img = _render(tokenizer, [{"role": "system", "content": "x"}] + msg)
        image = enc(with_img[len(head) : with_img.index(s)])
    close = one[one.index(s) + len(s) :]
    end_id = enc(close)[0]
    return TurnMarkers(
        system_open=enc(sys_txt[: sys_txt.index(s)]),
        user_open=enc(user_open),
        assistant_open=enc(two[len(one) :]),
        turn_close=enc(close),
        image=image,
        image_token_id=image_token_id,
        stop_ids=(end_id,),
    )


def markers_for(path: str | os.PathLike) -> TurnMarkers:
    """TurnMarkers of a policy folder (its tokenizer, and its image token for a VLM)."""

    cfg = AutoConfig.from_pretrained(path)
    return turn_markers(
        AutoTokenizer.from_pretrained(path),
        getattr(cfg, "image_token_id", None) if is_vlm(cfg) else None,
    )


def image_token_count(processor, height: int, width: int) -> int:
    """Placeholder tokens of one height x width image: the processor's grid / merge**2."""
    ip = processor.image_processor
    patches = ip.get_number_of_image_patches(height, width, {})
    return int(patches) // int(ip.merge_size) ** 2


def frame_tokens_fn(path: str | os.PathLike):
    """(h, w) -> a frame's placeholder pads for a VLM folder; None for a text policy."""

    processor = load_processor(path)
    return None if processor is None else functools.partial(image_token_count, processor)


def vision_tokens(tokenizer) -> dict[str, int]:
    """A VLM tokenizer's vision tokens (name -> id): never sampled, never a loss target."""
    out = {}
    for name in (T.VISION_START, T.IMAGE_PAD, T.VISION_END, "<|video_pad|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if tid is not None and tid != tokenizer.unk_token_id:
            out[name] = int(tid)
    return out


def image_placeholder(markers: TurnMarkers, n_tokens: int) -> list[int]:
    """One image as the dialogue holds it: the template's markers, the pad repeated n times."""
    if markers.image_token_id is None or not markers.image:
        raise UserError("this policy has no image placeholder (a text model): use codec 'patch'")
    out: list[int] = []
    for t in markers.image:
        out += [t] * n_tokens if t == markers.image_token_id else [t]
    return out


def image_factor(processor) -> int:
    """Side multiple an image needs to pass through the processor unresized: patch x merge."""
    if processor is None:
        raise UserError("data.codec=image needs a vision-language policy (this one is text only)")
    ip = processor.image_processor
    return int(ip.patch_size) * int(ip.merge_size)


def resolve_policy(
    policy_cfg, *, seed: int, codebook_size: int = T.DEFAULT_CODEBOOK_SIZE, patch_grid: int = 4
) -> str:
    """The folder every role loads for a PolicyConfig, with the stream tokens in its vocabulary.

    'tiny' and 'tiny-vl' are built locally; a local folder or a hub id (downloaded through
    huggingface_hub's cache) is extended by `extend_policy` where it lacks tokens.
    """
    name = policy_cfg.name_or_path
    if name == "tiny":
        return tiny.policy_path(
            policy_cfg, seed=seed, codebook_size=codebook_size, patch_grid=patch_grid
        )
    if name == "tiny-vl":
        return tiny_vl.policy_path(policy_cfg, seed=seed)
    src = Path(name)
    if not src.is_dir():
        from huggingface_hub import snapshot_download

        try:
            src = Path(snapshot_download(name))
        except Exception as e:  # noqa: BLE001 (any hub failure is the user's to fix: one line)
            raise UserError(f"policy.name_or_path: cannot fetch {name!r}: {type(e).__name__}: {e}")
    return str(extend_policy(src, policy_cfg.cache_dir, dtype=policy_cfg.dtype))
