"""Where each stage finds its data: the configured manifests, or the cached synth splits."""

from __future__ import annotations

from pathlib import Path

from streampro.config import Config

SPLITS = ("train", "val", "test")


def split_manifest(cfg: Config, split: str) -> Path:
    """data.<split> when set, else the StreamPro-Synth split folder's manifest."""
    from streampro.data.synth import split_dir

    explicit = getattr(cfg.data, split)
    return Path(explicit) if explicit else split_dir(cfg.synth, split) / "manifest.jsonl"


def ensure_split(cfg: Config, split: str) -> Path:
    """The split's manifest, rendering the synth split first when it is the default and missing."""
    path = split_manifest(cfg, split)
    if not getattr(cfg.data, split) and not path.is_file():
        from streampro.data.synth import synth_split

        synth_split(cfg.synth, split=split, out=path.parent, seed=None)
    return path


def load_split(cfg: Config, split: str, *, limit: int = 0) -> list:
    """EncodedSample list of a split (decoded and tokenised once, then from the Arrow cache)."""
    from streampro.data.encode import encode_manifest

    samples = encode_manifest(
        ensure_split(cfg, split),
        fps=cfg.data.fps,
        grid=cfg.data.patch_grid,
        codebook_size=cfg.data.codebook_size,
        cache_dir=cfg.data.cache_dir,
        skip_bad=cfg.data.skip_bad,
    )
    return samples[:limit] if limit else samples
