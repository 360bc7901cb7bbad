"""Builders of the tiny, randomly initialised stand-ins for the model zoo (see :mod:`humanverse.zoo`).

Each ``build_*(out_dir, seed)`` function constructs the *real* class of one zoo entry at a tiny size,
with the real checkpoint's pre/post-processing configuration, and saves it into ``out_dir`` in the
library's own on-disk format (``save_pretrained`` for transformers/diffusers, the open_clip
``local-dir:`` layout for CLIP, a bare ``model.safetensors`` for the aesthetic MLP). Loading the
folder therefore goes through exactly the code path a real checkpoint takes.

Rules every builder follows:

* offline: tokenizers and processors are written locally, nothing is fetched from a hub;
* deterministic: weights come from a seeded, forked torch RNG, so two builds with the same seed are
  byte-identical and the caller's RNG state is untouched;
* safetensors only, fp32;
* heavy libraries (torch, transformers, diffusers, open_clip) are imported inside the functions.

Every builder starts from the real checkpoint's configuration, kept as data in
:mod:`humanverse.configs`, and changes only the fields that file declares as size fields
(:func:`humanverse.configs.shrunk`): activations, epsilons, head layouts, processor sizes and
mean/std are the real ones (``tests/test_zoo.py`` checks every field).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from humanverse.configs import POSE_DECODING_FILE, real_config, section, shrunk, write_pose_decoding
from humanverse.testing.tiny_tokenizers import CLIP_BOS, CLIP_EOS, clip_bpe, gpt2_bpe

__all__ = [
    "COCO91_LABELS",
    "COCO_WHOLEBODY_KEYPOINTS",
    "POSE_DECODING_FILE",
    "TINY_CLIP_EMBED_DIM",
    "TINY_SIZES",
    "build_aesthetic_mlp",
    "build_blip2_opt",
    "build_clip_vit_b32",
    "build_clip_vit_l14",
    "build_midas_dpt_hybrid",
    "build_sd2_base",
    "build_sd2_inpainting",
    "build_sd_vae_ft_mse",
    "build_sdxl_base",
    "build_sdxl_vae_fp16_fix",
    "build_vitpose_wholebody",
    "build_yolos_tiny",
]

# Embedding width of the tiny CLIP; the tiny aesthetic MLP takes inputs of this size (real: 768).
TINY_CLIP_EMBED_DIM = 32

_SMALL_TRANSFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
_TINY_UNET = {"sample_size": 8, "block_out_channels": [32, 64], "attention_head_dim": [2, 4]}
_TINY_VAE = {"block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}


def _tiny_text(width: int) -> dict[str, Any]:
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2, "num_attention_heads": 4,
            "projection_dim": width}


TINY_SIZES: dict[tuple[str, str], dict[str, Any]] = {
    ("yolos-tiny", "model"): {**_SMALL_TRANSFORMER, "intermediate_size": 64},
    ("vitpose-wholebody", "backbone"): {**_SMALL_TRANSFORMER, "out_indices": [2]},
    ("midas-dpt-hybrid", "backbone"): {"depths": [1, 1, 1], "hidden_sizes": [8, 16, 32, 64], "embedding_size": 16,
                                       "num_groups": 2},
    ("midas-dpt-hybrid", "model"): {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
                                    "intermediate_size": 64, "backbone_out_indices": [0, 1, 2, 3],
                                    "neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16,
                                    "backbone_featmap_shape": [1, 32, 24, 24]},
    ("clip-vit-l14", "model_cfg"): {"embed_dim": TINY_CLIP_EMBED_DIM},
    ("clip-vit-l14", "vision_cfg"): {"layers": 2, "width": 64, "head_width": 32},
    ("clip-vit-l14", "text_cfg"): {"width": 16, "heads": 2, "layers": 2},
    ("blip2-opt-2.7b", "vision"): {**_SMALL_TRANSFORMER, "intermediate_size": 64},
    ("blip2-opt-2.7b", "qformer"): {**_SMALL_TRANSFORMER, "intermediate_size": 64, "encoder_hidden_size": 32},
    ("blip2-opt-2.7b", "text"): {**_SMALL_TRANSFORMER, "ffn_dim": 64, "word_embed_proj_dim": 32},
    ("sd2-inpainting", "unet"): {**_TINY_UNET, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
    ("sd2-base", "unet"): {**_TINY_UNET, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                           "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
    ("sdxl-base", "unet"): {**_TINY_UNET, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                            "transformer_layers_per_block": [1, 2], "addition_time_embed_dim": 8},
    ("sd2-inpainting", "text_encoder"): _tiny_text(32),
    ("sd2-base", "text_encoder"): _tiny_text(32),
    # SDXL's two encoders differ in width (real 768 and 1280), so concatenation mistakes show.
    ("sdxl-base", "text_encoder"): _tiny_text(32),
    ("sdxl-base", "text_encoder_2"): _tiny_text(48),
    ("sd2-inpainting", "vae"): _TINY_VAE,
    ("sd2-base", "vae"): _TINY_VAE,
    ("sd-vae-ft-mse", "vae"): _TINY_VAE,
    ("sdxl-base", "vae"): _TINY_VAE,
    ("sdxl-vae-fp16-fix", "vae"): _TINY_VAE,
}
"""The fixed sizes each tiny stand-in shrinks its real config component ``(entry, part)`` to (every
other field stays real: :func:`humanverse.configs.shrunk`). Sizes that follow from other parts (a
tokenizer's vocabulary, a text encoder's width) are added by the builders. ``bench/gpu_check.py``
builds its reduced CPU models from the same table."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_BILINEAR = 2
PIL_BICUBIC = 3

# DETR's COCO-91 label map (ids 0..90; "N/A" marks ids without a category). 1 = person (§1).
_COCO91_NAMES = (
    "N/A person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant N/A "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe N/A "
    "backpack umbrella N/A N/A handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle N/A wine_glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair "
    "couch potted_plant bed N/A dining_table N/A N/A toilet N/A tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator N/A book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
)
COCO91_LABELS: dict[int, str] = {
    i: name.replace("_", " ") for i, name in enumerate(_COCO91_NAMES.split())
}


def _wholebody_keypoint_names() -> tuple[str, ...]:
    """COCO-WholeBody's 133 keypoint names in mmpose order (§11)."""
    body = (
        "nose left_eye right_eye left_ear right_ear left_shoulder right_shoulder left_elbow "
        "right_elbow left_wrist right_wrist left_hip right_hip left_knee right_knee left_ankle "
        "right_ankle"
    ).split()
    feet = "left_big_toe left_small_toe left_heel right_big_toe right_small_toe right_heel".split()
    face = [f"face-{i}" for i in range(68)]
    fingers = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
    hands = []
    for side in ("left", "right"):
        hands.append(f"{side}_hand_root")
        hands += [f"{side}_{finger}{j}" for finger in fingers for j in range(1, 5)]
    return tuple(body + feet + face + hands)


COCO_WHOLEBODY_KEYPOINTS: tuple[str, ...] = _wholebody_keypoint_names()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG inside a fork, leaving the caller's RNG state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _quietly(build: Callable[[Path, int], None]) -> Callable[[Path, int], None]:
    """Run a builder with transformers' per-save progress bars silenced (restored afterwards)."""

    @functools.wraps(build)
    def wrapper(out_dir: Path, seed: int) -> None:
        from transformers.utils import logging as hf_logging

        enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            build(out_dir, seed)
        finally:
            if enabled:
                hf_logging.enable_progress_bar()

    return wrapper


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# tokenizers


def _clip_tokenizer(pad_token: str) -> Any:
    """A CLIPTokenizer over the tiny CLIP-layout vocabulary (77 positions, like the real ones)."""
    from transformers import CLIPTokenizer

    bpe = clip_bpe()
    return CLIPTokenizer(
        vocab=dict(bpe.vocab),
        merges=list(bpe.merges),
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=pad_token,
        model_max_length=77,
    )


def _opt_tokenizer() -> Any:
    """OPT's GPT2Tokenizer layout (§7): bos = eos = unk = ``</s>`` (id 2), pad ``<pad>`` (id 1)."""
    from transformers import AddedToken, GPT2Tokenizer

    bpe = gpt2_bpe()
    tokenizer = GPT2Tokenizer(
        vocab=dict(bpe.vocab),
        merges=list(bpe.merges),
        bos_token="</s>",
        eos_token="</s>",
        unk_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        add_prefix_space=False,
        errors="replace",
    )
    tokenizer.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return tokenizer


def _clip_text_config(tokenizer: Any, entry: str, part: str) -> Any:
    """The real text encoder ``entry/part`` shrunk to its :data:`TINY_SIZES` with ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **shrunk(entry, part, vocab_size=len(tokenizer), **TINY_SIZES[entry, part]),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------
# detection, pose, depth


@_quietly
def build_yolos_tiny(out_dir: Path, seed: int) -> None:
    """YolosForObjectDetection with 100 detection tokens and the COCO-91 head (§1).

    Real: hidden 192, 12 layers, 3 heads. Tiny: hidden 32, 2 layers, 2 heads. The processor is the
    real one (shortest edge 512, longest 1333, bilinear, ImageNet mean/std, padding).
    """
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    config = YolosConfig(
        **shrunk("yolos-tiny", "model", **TINY_SIZES["yolos-tiny", "model"]),
        id2label=dict(COCO91_LABELS),
        label2id={v: k for k, v in COCO91_LABELS.items() if v != "N/A"},
    )
    with _seeded(seed):
        model = YolosForObjectDetection(config).eval()
        # At init every detection token looks alike and "person" (1 of 92 classes) never wins, so a
        # tiny detector would find nobody and nothing downstream would run. Spread the detection
        # tokens and the heads, and bias the person and no-object logits, so that a couple of
        # tokens score "person" near 0.5 with distinct boxes. Still random: the boxes mean nothing.
        with torch.no_grad():
            model.vit.embeddings.detection_tokens.normal_(0.0, 1.0)
            for head in (model.class_labels_classifier, model.bbox_predictor):
                for layer in head.layers:
                    layer.weight.normal_(0.0, config.hidden_size ** -0.5)
                    layer.bias.zero_()
            last = model.class_labels_classifier.layers[-1]
            last.weight.normal_(0.0, 0.5)
            last.bias[1] = 4.0  # person
            last.bias[config.num_labels] = 4.0  # no-object
    model.save_pretrained(out_dir)
    processor = YolosImageProcessor(**section("yolos-tiny", "processor"))
    processor.save_pretrained(out_dir)


@_quietly
def build_vitpose_wholebody(out_dir: Path, seed: int) -> None:
    """VitPoseForPoseEstimation with 133 COCO-WholeBody heatmaps and the classic decoder (§2).

    Real (ViTPose-H whole-body): ViT 1280 wide, 32 layers, 16 heads, two 256-wide deconvolutions.
    Tiny: ViT 32 wide, 2 layers, 2 heads; the decoder keeps its fixed 256 widths. Input 256x192
    and heatmaps 64x48 as the real model.
    """
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    backbone = VitPoseBackboneConfig(**shrunk("vitpose-wholebody", "backbone", **TINY_SIZES["vitpose-wholebody", "backbone"]))
    labels = dict(enumerate(COCO_WHOLEBODY_KEYPOINTS))
    model_kwargs = section("vitpose-wholebody", "model")
    assert model_kwargs.pop("num_labels") == len(labels)
    config = VitPoseConfig(
        backbone_config=backbone,
        **model_kwargs,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    with _seeded(seed):
        model = VitPoseForPoseEstimation(config).eval()
    model.save_pretrained(out_dir)
    VitPoseImageProcessor(**section("vitpose-wholebody", "processor")).save_pretrained(out_dir)
    write_pose_decoding(out_dir)


@_quietly
def build_midas_dpt_hybrid(out_dir: Path, seed: int) -> None:
    """DPTForDepthEstimation in hybrid mode (BiT backbone + ViT), §3.

    Real: ViT 768 x 12 layers over a BiT [3,4,9] backbone; tiny: ViT 32 x 4 layers over a BiT with
    one bottleneck per stage, widths 8/16/32. The processor is the hub one: 384x384 squash,
    bilinear, mean = std = 0.5.
    """
    from transformers import (
        BitConfig,
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessor,
    )

    backbone = BitConfig(**shrunk("midas-dpt-hybrid", "backbone", **TINY_SIZES["midas-dpt-hybrid", "backbone"]))
    config = DPTConfig(
        backbone_config=backbone, **shrunk("midas-dpt-hybrid", "model", **TINY_SIZES["midas-dpt-hybrid", "model"])
    )
    with _seeded(seed):
        model = DPTForDepthEstimation(config).eval()
    model.save_pretrained(out_dir)
    processor = DPTImageProcessor(**section("midas-dpt-hybrid", "processor"))
    processor.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# CLIP + aesthetic predictor


def _build_open_clip(out_dir: Path, seed: int, **vision: Any) -> None:
    """The tiny CLIP of :data:`TINY_SIZES` shrunk from the real ViT-L-14/openai config, then the
    ``vision`` fields set (another CLIP's geometry), saved in open_clip's ``local-dir:`` layout."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg: dict[str, Any] = {
        **shrunk("clip-vit-l14", "model_cfg", **TINY_SIZES["clip-vit-l14", "model_cfg"]),
        "vision_cfg": {**shrunk("clip-vit-l14", "vision_cfg", **TINY_SIZES["clip-vit-l14", "vision_cfg"]), **vision},
        "text_cfg": shrunk("clip-vit-l14", "text_cfg", **TINY_SIZES["clip-vit-l14", "text_cfg"]),
    }
    preprocess_cfg = section("clip-vit-l14", "preprocess_cfg")
    with _seeded(seed):
        model = open_clip.CLIP(**model_cfg).eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})


@_quietly
def build_clip_vit_l14(out_dir: Path, seed: int) -> None:
    """An open_clip CLIP in the ``local-dir:`` layout, QuickGELU like ViT-L-14/openai (§6).

    Real: embed 768, vision 1024 x 24 layers, patch 14, 224 px; text 768 x 12 layers, context 77,
    vocab 49408. Tiny: embed 32, vision 64 x 2 layers (patch 14, 224 px kept), text 16 x 2 layers
    (context 77 and vocab 49408 kept so open_clip's bundled tokenizer matches).
    """
    _build_open_clip(out_dir, seed)


@_quietly
def build_clip_vit_b32(out_dir: Path, seed: int) -> None:
    """The stand-in for clean-fid's CLIP ViT-B/32 (the FID-CLIP features): the tiny CLIP above with
    B/32's 32-pixel patches. OpenAI's B/32 and L/14 share QuickGELU, the text tower's context and
    vocabulary, and the preprocessing (224 px, bicubic shortest-side resize, centre crop, OpenAI
    mean/std); the real B/32 vision tower is 768 wide x 12 layers."""
    _build_open_clip(out_dir, seed, patch_size=32)


@_quietly
def build_aesthetic_mlp(out_dir: Path, seed: int) -> None:
    """The LAION improved aesthetic MLP as ``model.safetensors`` with the real key names (§5).

    Real structure: Linear(768,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout
    Linear(64,16) Linear(16,1), keys ``layers.{0,2,4,6,7}``. Tiny: the same, with the input width
    of the tiny CLIP embedding (32) instead of 768.
    """
    import torch
    from safetensors.torch import save_file

    mlp = shrunk("aesthetic-mlp", "mlp", input_size=TINY_CLIP_EMBED_DIM)
    w = [mlp["input_size"], *mlp["widths"]]
    p1, p2, p3 = mlp["dropouts"]
    with _seeded(seed):
        layers = torch.nn.Sequential(
            torch.nn.Linear(w[0], w[1]),
            torch.nn.Dropout(p1),
            torch.nn.Linear(w[1], w[2]),
            torch.nn.Dropout(p2),
            torch.nn.Linear(w[2], w[3]),
            torch.nn.Dropout(p3),
            torch.nn.Linear(w[3], w[4]),
            torch.nn.Linear(w[4], w[5]),
        )
    state = {f"layers.{k}": v.detach().contiguous() for k, v in layers.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# captioning


@_quietly
def build_blip2_opt(out_dir: Path, seed: int) -> None:
    """Blip2ForConditionalGeneration over a tiny OPT, with the ``<image>``-token layout (§7).

    Real: EVA ViT-g 1408 x 39, Q-Former 768 x 12, OPT-2.7b 2560 x 32, 32 query tokens. Tiny: ViT,
    Q-Former and OPT 32 wide x 2 layers; 32 query tokens, 224x224 squash bicubic CLIP-normalised
    input, OPT's token ids and the language model's eos = newline (real 50118) are kept.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    tokenizer = _opt_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    newline_id = tokenizer.convert_tokens_to_ids("Ċ")
    vision = Blip2VisionConfig(**shrunk("blip2-opt-2.7b", "vision", **TINY_SIZES["blip2-opt-2.7b", "vision"]))
    qformer = Blip2QFormerConfig(**shrunk("blip2-opt-2.7b", "qformer", **TINY_SIZES["blip2-opt-2.7b", "qformer"]))
    text = OPTConfig(
        **shrunk(
            "blip2-opt-2.7b",
            "text",
            vocab_size=len(tokenizer),
            eos_token_id=newline_id,
            **TINY_SIZES["blip2-opt-2.7b", "text"],
        ),
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        **section("blip2-opt-2.7b", "model"),
        image_token_index=image_token_id,
    )
    with _seeded(seed):
        model = Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir)
    image_processor = BlipImageProcessor(**section("blip2-opt-2.7b", "processor"))
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=config.num_query_tokens
    )
    processor.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# diffusion


def _scheduler(entry: str) -> Any:
    """The real scheduler of ``entry`` (SD-2: PNDM, scaled_linear 0.00085..0.012, epsilon; SDXL:
    EulerDiscrete), built from its recorded config, whose ``_class_name`` names the class (§9, §10)."""
    import diffusers

    cls = real_config(entry)["scheduler"]["_class_name"]
    return getattr(diffusers, cls)(**section(entry, "scheduler"))


def _vae(entry: str, part: str = "vae", *, sample_size: int | None = None) -> Any:
    """AutoencoderKL of ``entry`` with 4 latent channels and 4 blocks (downsampling x8, as real).

    Real widths 128/256/512/512 with 2 resnets per block; tiny 8/16/32/32 with 1, 8 groups.
    """
    from diffusers import AutoencoderKL

    sizes = {**TINY_SIZES[entry, part], **({} if sample_size is None else {"sample_size": sample_size})}
    return AutoencoderKL(**shrunk(entry, part, **sizes))


def _sd2_unet(entry: str, cross_attention_dim: int) -> Any:
    """SD-2-style UNet: linear projections in the transformers, heads per block (§8, §9).

    Real: widths 320/640/1280/1280, heads 5/10/20/20, sample 64. Tiny: widths 32/64 (one
    cross-attention block and one plain block each way), heads 2/4, sample 8 (64 px through the
    x8 VAE); in_channels (4, or 9 for inpainting) and everything else as the real one.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**shrunk(entry, "unet", cross_attention_dim=cross_attention_dim, **TINY_SIZES[entry, "unet"]))


def _sd2_components(entry: str, seed: int) -> dict[str, Any]:
    from transformers import CLIPTextModel

    # SD-2's OpenCLIP tokenizer pads with "!" (id 0); its text encoder is a CLIPTextModel with gelu.
    tokenizer = _clip_tokenizer(pad_token="!")
    text_config = _clip_text_config(tokenizer, entry, "text_encoder")
    with _seeded(seed):
        text_encoder = CLIPTextModel(text_config).eval()
    with _seeded(seed + 1):
        unet = _sd2_unet(entry, cross_attention_dim=text_config.hidden_size)
    with _seeded(seed + 2):
        vae = _vae(entry, sample_size=64)
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": _scheduler(entry),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


@_quietly
def build_sd2_inpainting(out_dir: Path, seed: int) -> None:
    """StableDiffusionInpaintPipeline: 9-channel UNet input (latents + mask + masked latents), §8."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**_sd2_components("sd2-inpainting", seed))
    pipe.save_pretrained(out_dir, safe_serialization=True)


@_quietly
def build_sd2_base(out_dir: Path, seed: int) -> None:
    """StableDiffusionPipeline for SD-2-base (ε-prediction, PNDM), §9."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**_sd2_components("sd2-base", seed))
    pipe.save_pretrained(out_dir, safe_serialization=True)


@_quietly
def build_sd_vae_ft_mse(out_dir: Path, seed: int) -> None:
    """AutoencoderKL like ``sd-vae-ft-mse``: scaling 0.18215, sample size 256 (§9)."""
    with _seeded(seed):
        vae = _vae("sd-vae-ft-mse")
    vae.save_pretrained(out_dir, safe_serialization=True)


@_quietly
def build_sdxl_base(out_dir: Path, seed: int) -> None:
    """StableDiffusionXLPipeline with two text encoders and text_time conditioning (§10).

    Tiny encoder widths differ (32 and 48, real 768 and 1280) so that concatenation mistakes show:
    ``cross_attention_dim`` = 32 + 48 and ``projection_class_embeddings_input_dim`` =
    6 x 8 (time-id embedding) + 48 (pooled projection of encoder 2).
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _clip_tokenizer(pad_token=CLIP_EOS)  # ViT-L tokenizer pads with <|endoftext|>
    tokenizer_2 = _clip_tokenizer(pad_token="!")  # OpenCLIP bigG tokenizer pads with "!"
    config_1 = _clip_text_config(tokenizer, "sdxl-base", "text_encoder")
    config_2 = _clip_text_config(tokenizer_2, "sdxl-base", "text_encoder_2")
    sizes = TINY_SIZES["sdxl-base", "unet"]
    with _seeded(seed):
        text_encoder = CLIPTextModel(config_1).eval()
    with _seeded(seed + 1):
        text_encoder_2 = CLIPTextModelWithProjection(config_2).eval()
    with _seeded(seed + 2):
        unet = UNet2DConditionModel(
            **shrunk(
                "sdxl-base",
                "unet",
                cross_attention_dim=config_1.hidden_size + config_2.hidden_size,
                projection_class_embeddings_input_dim=6 * sizes["addition_time_embed_dim"] + config_2.projection_dim,
                **sizes,
            )
        )
    with _seeded(seed + 3):
        vae = _vae("sdxl-base", sample_size=64)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_scheduler("sdxl-base"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


@_quietly
def build_sdxl_vae_fp16_fix(out_dir: Path, seed: int) -> None:
    """AutoencoderKL like ``sdxl-vae-fp16-fix``: scaling 0.13025, ``force_upcast=False`` (§10)."""
    with _seeded(seed):
        vae = _vae("sdxl-vae-fp16-fix", sample_size=64)
    vae.save_pretrained(out_dir, safe_serialization=True)
