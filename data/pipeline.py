"""Where each stage finds its policy and data: the resolved policy folder, the frame codec,
and the configured manifests (or the cached synth splits)."""

from __future__ import annotations

from pathlib import Path

from streampro.config import Config
from streampro.data.codec import make_codec
from streampro.data.encode import encode_manifest
from streampro.data.synth import split_dir, synth_split
from streampro.hf_policy import image_factor, load_processor, resolve_policy

SPLITS = ("train", "val", "test")


def split_manifest(cfg: Config, split: str) -> Path:
    """data.<split> when set, else the StreamPro-Synth split folder's manifest."""

    explicit = getattr(cfg.data, split)
    return Path(explicit) if explicit else split_dir(cfg.synth, split) / "manifest.jsonl"


def ensure_split(cfg: Config, split: str) -> Path:
    """The split's manifest, rendering the synth split first when it is the default and missing."""
    path = split_manifest(cfg, split)
    if not getattr(cfg.data, split) and not path.is_file():
        synth_split(cfg.synth, split=split, out=path.parent, workers=cfg.data.workers)
    return path


def policy_folder(cfg: Config) -> str:
    """The policy folder every role loads: 'tiny' and 'tiny-vl' built locally (seeded by
    run.seed), any other HF folder or hub id extended with the stream tokens it lacks."""

    d = cfg.data
    return resolve_policy(
        cfg.policy, seed=cfg.run.seed, codebook_size=d.codebook_size, patch_grid=d.patch_grid
    )


def frame_codec(cfg: Config):
    """The configured codec; the image codec's side factor comes from the policy's processor
    (patch size x spatial merge), so frames need no further resize in the model."""

    d = cfg.data
    factor = 28
    if d.codec == "image":
        factor = image_factor(load_processor(policy_folder(cfg)))
    return make_codec(
        d.codec,
        grid=d.patch_grid,
        codebook_size=d.codebook_size,
        max_pixels=d.image_max_pixels,
        factor=factor,
    )


def encode_samples(cfg: Config, manifest: str | Path, *, progress: bool = True) -> list:
    """EncodedSample list of a manifest under the configured codec (decoded once, cached)."""

    return encode_manifest(
        manifest,
        fps=cfg.data.fps,
        codec=frame_codec(cfg),
        cache_dir=cfg.data.cache_dir,
        skip_bad=cfg.data.skip_bad,
        progress=progress,
        workers=cfg.data.workers,
    )


def load_split(cfg: Config, split: str, *, limit: int = 0) -> list:
    """EncodedSample list of a split (decoded and encoded once, then from the Arrow cache)."""
    samples = encode_samples(cfg, ensure_split(cfg, split))
    return samples[:limit] if limit else samples
