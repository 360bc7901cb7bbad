"""The model zoo: the one table of every pretrained model HumanVerse uses (docs/models.md).

Three things live here:

* :data:`ZOO`, a table of :class:`ModelEntry` rows (hub id, pinned revision, licence, the class that
  loads the weights, pitfalls), keyed by short names that configs and datasets use
  (``"yolos-tiny"``, ``"sd2-base"``...). Loading facts are in docs/models.md.
* :func:`resolve`, which turns a model *spec* into a :class:`ResolvedModel` (a hub id at a revision,
  a local directory, or a tiny stand-in) that loaders pass to ``from_pretrained``::

      r = resolve("yolos-tiny", "paper")
      model = YolosForObjectDetection.from_pretrained(r.path, **r.pretrained_kwargs())
      row["models"]["detect"] = r.tag

* :func:`make_tiny`, which builds deterministic, randomly initialised tiny models of the *same real
  classes*, saved in the libraries' own formats, so tests, CI and the offline demo run the real
  loading code with no network.

Module-level imports stay light (stdlib only); the tiny builders import torch & co. when called.
Entries whose class lives outside ``humanverse`` (Omnidata in ``pipelines``, the LSDM in ``model``)
have no builder here: the CLI passes theirs in through ``builders=``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from humanverse.testing import tiny_models as tb

__all__ = [
    "MODEL_DIR_MARKERS",
    "TINY_FORMAT_VERSION",
    "ZOO",
    "ModelEntry",
    "ResolvedModel",
    "TinyBuilder",
    "format_table",
    "how_to_fetch",
    "is_prepared",
    "list_entries",
    "load_error",
    "make_tiny",
    "models_root",
    "pin_status",
    "resolve",
    "tiny_model",
    "tiny_root",
]

logger = logging.getLogger(__name__)

TinyBuilder = Callable[[Path, int], None]
"""Builds one tiny stand-in: ``builder(out_dir, seed)`` writes the model files into ``out_dir``."""

TINY_FORMAT_VERSION = 3
"""Bumped whenever a tiny builder changes, so cached tiny folders from older builds are rebuilt."""

COMPLETE_MARKER = ".complete"
MODEL_DIR_MARKERS = ("config.json", "model_index.json", "open_clip_config.json", "model.safetensors")
"""Files whose presence makes a directory a model folder (as opposed to a folder of model folders)."""

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


@dataclass(frozen=True)
class ModelEntry:
    """One pretrained model the system uses.

    Attributes:
        name: short key used by configs and the datasets' ``models`` column.
        task: what the system uses it for.
        hub_id: Hugging Face repo id (``org/repo``), another download location for weights that are
            not on the hub, or ``""`` for weights this project trains.
        revision: pinned commit of ``hub_id``, or None where none is known (see ``notes``).
        licence: licence of the weights.
        model_class: dotted name of the class that loads the folder.
        files: specific files of the repo the system reads, where that matters.
        tiny: what the tiny stand-in is, including any deviation from the real preprocessing.
        notes: loading pitfalls.
        direct_from_hub: whether ``model_class`` loads ``hub_id@revision`` as is; False where the
            weights must first be downloaded by hand or converted (``humanverse zoo prepare``).
        build_tiny: the tiny builder, or None where it lives beside a class outside ``humanverse``.
        pin_source: where the pinned commit was seen in public history, so anyone can check it.
        pin_confirmed: True where the commit was checked against the repository's own commit
            history; False where it is the commit that independent public code pins or downloads
            (hub cache snapshot paths, ``revision=`` arguments) but was not read from the hub here.
        sha256: known SHA-256 digests of some of ``files`` (as published by independent pins);
            ``zoo prepare`` checks them.
    """

    name: str
    task: str
    hub_id: str
    revision: str | None
    licence: str
    model_class: str
    files: tuple[str, ...] = ()
    tiny: str = ""
    notes: str = ""
    direct_from_hub: bool = True
    build_tiny: TinyBuilder | None = field(default=None, compare=False, repr=False)
    pin_source: str = ""
    pin_confirmed: bool = False
    sha256: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def paper(self) -> bool:
        """Whether the paper's configuration (``--models paper``) loads this entry."""
        return bool(self.hub_id)

    @property
    def on_hub(self) -> bool:
        """Whether ``hub_id`` is a Hugging Face repository (not a download URL)."""
        return bool(self.hub_id) and not self.hub_id.startswith(("http://", "https://"))

    @property
    def pin(self) -> str:
        """``hub_id@revision`` (or the record URL for non-hub sources)."""
        return f"{self.hub_id}@{self.revision}" if self.revision else self.hub_id


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load one model from.

    Attributes:
        name: the zoo entry.
        path: a hub id (``kind == "hub"``) or a local directory (``"local"``, ``"tiny"``).
        revision: the hub revision, None for local folders (and for unpinned hub ids).
        kind: ``"hub"``, ``"local"`` or ``"tiny"``.
        source: for ``--models paper`` entries taken from the prepared models folder, the pin they
            were prepared from (``hub_id@revision``), recorded in :attr:`tag` instead of the path.
    """

    name: str
    path: str
    revision: str | None
    kind: Literal["hub", "local", "tiny"]
    source: str | None = None

    @property
    def entry(self) -> ModelEntry:
        """The zoo row this model stands for."""
        return ZOO[self.name]

    @property
    def tag(self) -> str:
        """The identifier recorded in a dataset's ``models`` column.

        ``org/repo@revision`` (or ``org/repo`` when unpinned) for hub models, ``tiny:<name>`` for
        tiny stand-ins, the directory for local folders, and ``org/repo@revision (prepared)`` for a
        ``--models paper`` entry found in the prepared models folder.
        """
        if self.kind == "tiny":
            return f"tiny:{self.name}"
        if self.source:
            return f"{self.source} (prepared)"
        if self.kind == "hub" and self.revision:
            return f"{self.path}@{self.revision}"
        return self.path

    def pretrained_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``from_pretrained``: the revision for hub models, nothing otherwise."""
        if self.kind == "hub" and self.revision:
            return {"revision": self.revision}
        return {}


_SD2_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_SDXL_FILES = (
    *_SD2_FILES,
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
)


def _entries(*entries: ModelEntry) -> dict[str, ModelEntry]:
    return {e.name: e for e in entries}


ZOO: dict[str, ModelEntry] = _entries(
    ModelEntry(
        name="yolos-tiny",
        task="person detection",
        hub_id="hustvl/yolos-tiny",
        revision="95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de",
        licence="apache-2.0",
        model_class="transformers.YolosForObjectDetection",
        files=("config.json", "preprocessor_config.json", "model.safetensors"),
        pin_source="huggingface.co/hustvl/yolos-tiny commit list (Apr 2024 preprocessor update)",
        pin_confirmed=True,
        tiny="YOLOS hidden 32 x 2 layers, 100 detection tokens, COCO-91 labels, heads biased so a few "
        "tokens score 'person' near 0.5 (otherwise a random detector finds nobody); real processor "
        "(shortest edge 512, longest 1333, bilinear, ImageNet mean/std, pad).",
        notes="Person is class id 1 (COCO-91 map), not 0. Logits (B,100,92), last = no-object. "
        "Boxes come out absolute xyxy (ViTPose wants xywh). No mask input: padding in a mixed-size "
        "batch changes predictions, so batch same-size images. Processor: YolosImageProcessor.",
        build_tiny=tb.build_yolos_tiny,
    ),
    ModelEntry(
        name="vitpose-wholebody",
        task="whole-body pose (133 COCO-WholeBody keypoints)",
        hub_id="JunkyByte/easy_ViTPose",
        revision="e83805274e89428969355ec4afffcbc413e79188",
        licence="apache-2.0",
        model_class="transformers.VitPoseForPoseEstimation",
        files=("torch/wholebody/vitpose-h-wholebody.pth",),
        pin_source="pinned as VITPOSE_REVISION of JunkyByte/easy_ViTPose in public download code "
        "(not read from the hub here)",
        tiny="VitPoseForPoseEstimation(num_labels=133, classic decoder) shrunk from the real config "
        "(ViT 32 x 2 layers, layer_norm_eps 1e-6 kept); processor 256x192, ImageNet mean/std; "
        "heatmaps 64x48; decoded as the real one (non-UDP crop, flip test, heatmap shift).",
        notes="No Hugging Face checkpoint outputs 133 keypoints (usyd-community ones give COCO-17). "
        "The paper's model is ViTPose++-H's whole-body split: `wholebody.pth` from "
        "ViTAE-Transformer/ViTPose tools/model_split.py (ViT 1280 x 32, two 256 deconvs, 133 "
        "outputs); the listed file is a mirror of it (2.55 GB, loads with weights_only=True). "
        "`humanverse zoo convert-vitpose SRC.pth OUT_DIR` (run by `zoo prepare`) writes "
        "VitPoseForPoseEstimation(num_labels=133) safetensors + processor config. Decoding: the "
        "non-UDP affine crop with flip test and heatmap shift, as its test config "
        "(ViTPose_huge_wholebody_256x192.py). The processor needs scipy.",
        direct_from_hub=False,
        build_tiny=tb.build_vitpose_wholebody,
    ),
    ModelEntry(
        name="midas-dpt-hybrid",
        task="relative depth (MiDaS)",
        hub_id="Intel/dpt-hybrid-midas",
        revision="11eaf7a1cf4bd70740697dbc216f98980c0aeb03",
        licence="apache-2.0",
        model_class="transformers.DPTForDepthEstimation",
        files=("config.json", "preprocessor_config.json", "pytorch_model.bin"),
        pin_source="pinned with huggingface-cli download --revision and hashed in several public "
        "repositories (not read from the hub here)",
        sha256={"pytorch_model.bin": "b6c4d44f9d96ca3fa76dd3bbb153989a60b4ad5526559f3c598562a368d687ec"},
        tiny="Hybrid DPT, ViT 32 x 4 layers over a BiT (widths 8/16/32, num_groups=2); real "
        "processor (384x384 squash, bilinear, mean=std=0.5).",
        notes="The repo's main holds only pytorch_model.bin (read with weights_only loading). Output is "
        "relative inverse depth (larger = nearer). The class default resample is bicubic: always "
        "load the hub processor config. Original MiDaS keeps aspect (multiple of 32) instead.",
        build_tiny=tb.build_midas_dpt_hybrid,
    ),
    ModelEntry(
        name="omnidata-depth",
        task="depth (Omnidata v2)",
        hub_id="https://zenodo.org/records/10447888",
        revision=None,
        licence="Omnidata non-commercial EULA (weights may not be redistributed)",
        model_class="pipelines.annotators.omnidata.OmnidataDPT",
        files=("omnidata_dpt_depth_v2.ckpt",),
        pin_source="Zenodo record 10447888 (a published record's files cannot change; no git commit exists)",
        tiny="Built by pipelines.annotators.omnidata (passed to make_tiny via builders=).",
        notes="Never vendor these weights. Lightning ckpt: strip the 'model.' prefix. Input: "
        "resize 384 + centre crop, normalised to [-1,1]. DPT(vitb_rn50_384); timm calls the "
        "backbone vit_base_r50_s16_384. `humanverse zoo prepare DIR --accept-omnidata-licence` "
        "downloads it, or pass the file or its directory.",
        direct_from_hub=False,
    ),
    ModelEntry(
        name="omnidata-normal",
        task="surface normals (Omnidata v2)",
        hub_id="https://zenodo.org/records/10447888",
        revision=None,
        licence="Omnidata non-commercial EULA (weights may not be redistributed)",
        model_class="pipelines.annotators.omnidata.OmnidataDPT",
        files=("omnidata_dpt_normal_v2.ckpt",),
        pin_source="Zenodo record 10447888 (a published record's files cannot change; no git commit exists)",
        tiny="Built by pipelines.annotators.omnidata (passed to make_tiny via builders=).",
        notes="Never vendor these weights. Input is ToTensor only ([0,1], no normalisation); "
        "output RGB in [0,1], n = 2x-1 with +Z away from the viewer; stored with z negated (+Z "
        "towards the viewer). 3-channel head, so not a DPTForDepthEstimation. `humanverse zoo "
        "prepare DIR --accept-omnidata-licence` downloads it, or pass the file or its directory.",
        direct_from_hub=False,
    ),
    ModelEntry(
        name="clip-vit-l14",
        task="CLIP image embedding for the aesthetic score",
        hub_id="timm/vit_large_patch14_clip_224.openai",
        revision="18d0535469bb561bf468d76c1d73aa35156c922b",
        licence="mit",
        model_class="open_clip.CLIP",
        files=("open_clip_config.json", "open_clip_model.safetensors"),
        pin_source="hub cache snapshot of open_clip_model.safetensors pinned as OPENCLIP_REVISION in "
        "several public repositories, with the file's SHA-256 (also its hub cache blob name) "
        "(not read from the hub here)",
        sha256={"open_clip_model.safetensors": "9ce2e8a8ebfff3793d7d375ad6d3c35cb9aebf3de7ace0fc7308accab7cd207e"},
        tiny="open_clip CLIP with QuickGELU: embed 32, vision 64 x 2 layers (patch 14, 224 px), "
        "text 16 x 2 layers (vocab 49408, context 77); OpenAI mean/std, bicubic, shortest-side "
        "resize + centre crop, as the real one.",
        notes="Open with open_clip.create_model_and_transforms('local-dir:<dir>') on a downloaded "
        "snapshot (the hf-hub: schema takes no revision: `zoo prepare` fetches the pin). "
        "Built-in name route: 'ViT-L-14-quickgelu' with pretrained='openai'; plain 'ViT-L-14' + "
        "'openai' builds GELU and only warns.",
        build_tiny=tb.build_clip_vit_l14,
    ),
    ModelEntry(
        name="aesthetic-mlp",
        task="LAION improved aesthetic score",
        hub_id="ttj/sac-logos-ava1-l14-linearMSE",
        revision="1e77fa05081323d99725fc40a9bf9f88180490e7",
        licence="apache-2.0 (the original's; mirror's unverified)",
        model_class="torch.nn.Sequential",
        files=("model.safetensors",),
        pin_source="NeMo Curator nemo_curator/models/aesthetics.py",
        pin_confirmed=True,
        tiny="Same 5-Linear structure (keys layers.{0,2,4,6,7}, widths 1024/128/64/16/1) with "
        "input width 32 (the tiny CLIP's embed dim) instead of 768.",
        notes="Original: christophschuhmann/improved-aesthetic-predictor@6934dd81 "
        "sac+logos+ava1-l14-linearMSE.pth. Load with safetensors.torch.load_file into Sequential(Linear 768->1024, Dropout, "
        "->128, Dropout, ->64, Dropout, ->16, ->1); no activations. Input: L2-normalised CLIP "
        "ViT-L/14 image embedding. Output ~1-10. Original .pth was saved on cuda: "
        "map_location='cpu'.",
        build_tiny=tb.build_aesthetic_mlp,
    ),
    ModelEntry(
        name="blip2-opt-2.7b",
        task="captioning",
        hub_id="Salesforce/blip2-opt-2.7b",
        revision="59a1ef6c1e5117b3f65523d1c6066825bcf315e3",
        licence="mit",
        model_class="transformers.Blip2ForConditionalGeneration",
        files=(
            "config.json",
            "generation_config.json",
            "preprocessor_config.json",
            "processor_config.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
            "added_tokens.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ),
        pin_source="the repo sha in a public model listing and pinned with shard digests in several "
        "public repositories (not read from the hub here)",
        sha256={
            "model-00001-of-00002.safetensors": "b81228c9ac1b3dee1731ee71d51fe3b2c34f915019c44c25a793b51300ae24fc",
            "model-00002-of-00002.safetensors": "536bd73b8f1de7d94f503b23fea2eaa4f7f3ea5f74f8f874fcb21d6df1555a19",
        },
        tiny="ViT, Q-Former and OPT 32 wide x 2 layers; 32 query tokens; GPT2Tokenizer with OPT "
        "ids and <image>; real processor (224x224 squash, bicubic, OpenAI CLIP mean/std).",
        notes="The pin is the repo head of a public model listing, so it should hold the "
        "<image>-token layout (image_token_index=50265, processor_config.json; inferred, not read: "
        "`zoo prepare` checks image_token_index); 51572668da0e... predates that layout and takes "
        "the legacy path. Processor: Blip2Processor. "
        "LAVIS captioning: num_beams=5, max_new_tokens=30, prompt ''. Decode with "
        "skip_special_tokens=True.",
        build_tiny=tb.build_blip2_opt,
    ),
    ModelEntry(
        name="sd2-inpainting",
        task="outpainting",
        hub_id="stabilityai/stable-diffusion-2-inpainting",
        revision="6ba40839c3c171123b2b863d16caf023e297abb9",
        licence="openrail++",
        model_class="diffusers.StableDiffusionInpaintPipeline",
        files=_SD2_FILES,
        pin_source="huggingface.co/stabilityai/stable-diffusion-2-inpainting commit tree (a commit "
        "that holds the safetensors)",
        pin_confirmed=True,
        tiny="UNet widths 32/64 (in_channels 9, linear projection, heads 2/4, sample 8 = 64 px), "
        "CLIPTextModel 32 x 2 layers, tiny CLIP BPE tokenizer (pad '!'), PNDM, x8 VAE 0.18215.",
        notes="Mask: white = repaint. UNet "
        "input cat(noisy 4, mask 1, masked-image latents 4). Paste unmasked pixels back with "
        "pipe.image_processor.apply_overlay.",
        build_tiny=tb.build_sd2_inpainting,
    ),
    ModelEntry(
        name="sd2-base",
        task="stage-1 initialisation (UNet, text encoder, tokenizer, scheduler, VAE)",
        hub_id="stabilityai/stable-diffusion-2-base",
        revision="d6f5d3ef32568709d194e94c41ea4696d0566644",
        licence="openrail++",
        model_class="diffusers.StableDiffusionPipeline",
        files=_SD2_FILES,
        pin_source="huggingface.co/stabilityai/stable-diffusion-2-base commit tree (a commit that "
        "holds the safetensors)",
        pin_confirmed=True,
        tiny="UNet widths 32/64 (linear projection, heads 2/4, sample 8 = 64 px), CLIPTextModel "
        "32 x 2 layers (real 1024 x 23), tiny CLIP BPE tokenizer (pad '!'), PNDM epsilon, x8 VAE.",
        notes="epsilon-prediction (the 768 px SD-2 is "
        "v-prediction). Text encoder is OpenCLIP ViT-H's text tower truncated to 23 layers. "
        "attention_head_dim means number of heads here.",
        build_tiny=tb.build_sd2_base,
    ),
    ModelEntry(
        name="sd-vae-ft-mse",
        task="stage-1 VAE",
        hub_id="stabilityai/sd-vae-ft-mse",
        revision="31f26fdeee1355a5c34592e401dd41e45d25a493",
        licence="mit",
        model_class="diffusers.AutoencoderKL",
        files=("config.json", "diffusion_pytorch_model.safetensors"),
        pin_source="hub cache snapshot path pinned in many public repositories, several with both files' "
        "SHA-256 and sizes (547 and 334,643,276 bytes) (not read from the hub here)",
        sha256={"config.json": "92d3dfb746fca211a2c9e019e285f8597412211728dce3c5bcf4eda0f2d62e7e",
                "diffusion_pytorch_model.safetensors": "a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815"},
        tiny="AutoencoderKL widths 8/16/32/32 (x8 downsampling), 4 latent channels, scaling 0.18215.",
        notes="The hub config may lack scaling_factor; the class "
        "default 0.18215 applies: encode as latents * 0.18215.",
        build_tiny=tb.build_sd_vae_ft_mse,
    ),
    ModelEntry(
        name="sdxl-base",
        task="stage-2 refiner base",
        hub_id="stabilityai/stable-diffusion-xl-base-1.0",
        revision="462165984030d82259a11f4367a4eed129e94a7b",
        licence="openrail++",
        model_class="diffusers.StableDiffusionXLPipeline",
        files=_SDXL_FILES,
        pin_source="huggingface.co/stabilityai/stable-diffusion-xl-base-1.0 commit tree",
        pin_confirmed=True,
        tiny="UNet widths 32/64 (text_time, time embed 8, transformer layers 1/2), CLIPTextModel 32 "
        "+ CLIPTextModelWithProjection 48 (cross-attention 80), two tiny CLIP BPE tokenizers, "
        "EulerDiscrete, x8 VAE 0.13025, sample 8 = 64 px.",
        notes="projection_class_embeddings_input_dim = 6 x 256 + 1280. Prompt embeds from "
        "hidden_states[-2] of both encoders; pooled from encoder 2. VAE upcast to fp32 for "
        "decoding unless the fp16-fix VAE is passed as vae=.",
        build_tiny=tb.build_sdxl_base,
    ),
    ModelEntry(
        name="sdxl-vae-fp16-fix",
        task="stage-2 VAE (fp16-safe)",
        hub_id="madebyollin/sdxl-vae-fp16-fix",
        revision="207b116dae70ace3637169f1ddd2434b91b3a8cd",
        licence="mit",
        model_class="diffusers.AutoencoderKL",
        files=("config.json", "diffusion_pytorch_model.safetensors"),
        pin_source="huggingface.co/madebyollin/sdxl-vae-fp16-fix commit tree",
        pin_confirmed=True,
        tiny="AutoencoderKL widths 8/16/32/32 (x8), 4 latent channels, scaling 0.13025, "
        "force_upcast False.",
        notes="force_upcast=false since commit 9292e14. Load with "
        "torch_dtype=torch.float16 and pass as vae= to the SDXL pipeline.",
        build_tiny=tb.build_sdxl_vae_fp16_fix,
    ),
    ModelEntry(
        name="lsdm",
        task="stage-1 Latent Structural Diffusion Model",
        hub_id="",
        revision=None,
        licence="apache-2.0 (this project)",
        model_class="model.models.lsdm.LatentStructuralUNet",
        tiny="Built by the model package (passed to make_tiny via builders=).",
        notes="Trained by this project; no published weights yet. Pass a local checkpoint directory.",
        direct_from_hub=False,
    ),
)


def list_entries() -> list[ModelEntry]:
    """All zoo entries, in table order."""
    return list(ZOO.values())


def pin_status(entry: ModelEntry) -> str:
    """How far ``entry``'s pin is verified, in words for ``zoo list``.

    ``confirmed``: checked against the repository's commit history; ``public pin, unconfirmed``:
    the commit independent public code pins or downloads, not read from the hub here;
    ``immutable record``: a download record (Zenodo) whose files cannot change; ``not published``:
    weights this project trains.
    """
    if not entry.paper:
        return "not published"
    if not entry.on_hub:
        return "immutable record"
    if not entry.revision:
        return "UNPINNED"
    return "confirmed" if entry.pin_confirmed else "public pin, unconfirmed"


def format_table(entries: Iterable[ModelEntry] | None = None) -> str:
    """A plain-text table (name, task, hub id, full revision, pin status, licence) for
    ``humanverse zoo list``."""
    rows = [("name", "task", "hub id", "revision", "pin", "licence")]
    for e in list_entries() if entries is None else entries:
        rows.append((e.name, e.task, e.hub_id or "-", e.revision or "-", pin_status(e), e.licence))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def models_root() -> Path:
    """Where ``humanverse zoo prepare`` puts the paper's models by default, and where
    ``--models paper`` finds the entries that need a conversion: ``$HUMANVERSE_MODELS`` or
    ``~/.cache/humanverse/models``."""
    env = os.environ.get("HUMANVERSE_MODELS")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "humanverse" / "models"


def is_prepared(name: str, folder: Path) -> bool:
    """Whether ``folder`` holds entry ``name`` ready to load: a converted or saved model
    (``config.json``) or, for entries loaded from their original files, every one of them."""
    entry = _entry(name)
    if (folder / "config.json").is_file():
        return True
    return bool(entry.files) and all((folder / f).is_file() for f in entry.files)


def how_to_fetch(name: str) -> str:
    """One sentence naming zoo entry ``name``, its source and pin, and how to fetch it."""
    entry = _entry(name)
    if not entry.paper:
        return f"zoo entry {name!r} has no published weights; pass its local checkpoint directory."
    return (
        f"zoo entry {name!r} ({entry.pin}) is not available here; fetch it with "
        f"`humanverse zoo prepare DIR` and pass `--models DIR` (or set HUMANVERSE_MODELS=DIR)."
    )


def load_error(name: str, resolved: ResolvedModel | None, error: BaseException) -> ValueError:
    """The one-sentence ``ValueError`` for a model that failed to load: the entry, where it was
    looked for, the cause's first line, and how to fetch it (``humanverse zoo prepare``)."""
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    cause = cause.split(". ")[0].rstrip(".")[:160]
    where = resolved.tag if resolved is not None else name
    return ValueError(f"Cannot load {where} ({cause}): {how_to_fetch(name)}")


@contextlib.contextmanager
def loading(name: str, resolved: ResolvedModel | None):
    """Inside the block, a model that cannot be found or read (``OSError``, what the hub clients
    raise offline or for a missing file) becomes :func:`load_error`'s one sentence."""
    try:
        yield
    except OSError as e:
        raise load_error(name, resolved, e) from None


def tiny_root() -> Path:
    """Where tiny stand-ins are cached: ``$HUMANVERSE_TINY_ZOO`` or ``~/.cache/humanverse/tiny-zoo``."""
    env = os.environ.get("HUMANVERSE_TINY_ZOO")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "humanverse" / "tiny-zoo"


def tiny_model(name: str, builder: TinyBuilder, seed: int = 0) -> Path:
    """A tiny stand-in that is not a zoo entry (e.g. clean-fid's CLIP B/32 for ``--models tiny``),
    built once into :func:`tiny_root` the way :func:`make_tiny` builds the entries'."""
    return _build_one(name, builder, tiny_root(), seed=seed, force=False)


def _entry(name: str) -> ModelEntry:
    if name not in ZOO:
        raise ValueError(f"Unknown model {name!r}; expected one of: {', '.join(ZOO)}.")
    return ZOO[name]


def _builder_for(name: str, builders: Mapping[str, TinyBuilder] | None) -> TinyBuilder | None:
    if builders and name in builders:
        return builders[name]
    return ZOO[name].build_tiny


def resolve(
    name: str,
    models: str = "paper",
    *,
    builders: Mapping[str, TinyBuilder] | None = None,
) -> ResolvedModel:
    """Resolve the model spec ``models`` for zoo entry ``name``.

    Accepted specs:

    * ``"paper"``: the entry's hub id at its pinned revision;
    * ``"tiny"`` or ``"tiny:<name>"``: the tiny stand-in under :func:`tiny_root`, built on demand
      (entries whose builder lives outside ``humanverse`` need it in ``builders``);
    * an existing local directory holding a ``<name>/`` subfolder, or itself a model folder
      (it contains one of :data:`MODEL_DIR_MARKERS`);
    * a hub id ``org/repo`` or ``org/repo@revision`` (the entry's own repo without a revision
      gets the pinned one).

    Raises:
        ValueError: for an unknown name or a spec that matches none of the above.
    """
    entry = _entry(name)
    if not isinstance(models, str) or not models.strip():
        raise ValueError(
            f"Model spec {models!r} for {name!r} is empty; expected 'paper', 'tiny', "
            f"'tiny:{name}', a local directory or a hub id 'org/repo[@revision]'."
        )
    spec = models.strip()

    if spec == "paper":
        if not entry.hub_id:
            raise ValueError(
                f"Model {name!r} has no published weights (it is trained by this project); pass "
                f"its local checkpoint directory as its spec instead of 'paper'."
            )
        if not entry.direct_from_hub:
            prepared = models_root() / name
            if is_prepared(name, prepared):
                return ResolvedModel(name=name, path=str(prepared.resolve()), revision=None, kind="local",
                                     source=entry.pin)
            source = ", ".join(f"{entry.hub_id}/{f}" for f in entry.files) or entry.hub_id
            raise ValueError(
                f"Model {name!r} cannot be loaded from the hub as is (its weights come from "
                f"{source} at {entry.revision or 'its record'} and need a download and "
                f"conversion): run `humanverse zoo prepare DIR` and pass `--models DIR` (or set "
                f"HUMANVERSE_MODELS=DIR; looked in {models_root()})."
            )
        return ResolvedModel(name=name, path=entry.hub_id, revision=entry.revision, kind="hub")

    if spec == "tiny" or spec.startswith("tiny:"):
        tiny_name = name if spec == "tiny" else spec[len("tiny:") :]
        if tiny_name != name:
            raise ValueError(
                f"Model spec {spec!r} names a different tiny model than {name!r}; "
                f"use 'tiny' or 'tiny:{name}'."
            )
        builder = _builder_for(name, builders)
        if builder is None:
            raise ValueError(
                f"Model {name!r} has no tiny builder in humanverse (its class is "
                f"{entry.model_class}); pass one with builders={{{name!r}: ...}} or use a local "
                f"directory."
            )
        path = _build_one(name, builder, tiny_root(), seed=0, force=False)
        return ResolvedModel(name=name, path=str(path), revision=None, kind="tiny")

    local = Path(spec).expanduser()
    if local.is_dir():
        sub = local / name
        if sub.is_dir():
            return ResolvedModel(name=name, path=str(sub.resolve()), revision=None, kind="local")
        if any((local / marker).is_file() for marker in MODEL_DIR_MARKERS):
            return ResolvedModel(name=name, path=str(local.resolve()), revision=None, kind="local")
        raise ValueError(
            f"Model directory {spec!r} has neither a {name + '/'!r} subfolder nor a model file "
            f"({', '.join(MODEL_DIR_MARKERS)})."
        )
    if local.exists():
        raise ValueError(f"Model spec {spec!r} for {name!r} is a file; expected a model directory.")

    match = _HUB_ID.match(spec)
    if match and not spec.startswith((".", "~")):
        repo, revision = match.group("repo"), match.group("revision")
        if revision is None and repo == entry.hub_id:
            revision = entry.revision
        return ResolvedModel(name=name, path=repo, revision=revision, kind="hub")
    if spec.startswith(("/", ".", "~")) or os.sep in spec:
        raise ValueError(f"Model directory {spec!r} for {name!r} does not exist.")
    raise ValueError(
        f"Model spec {spec!r} for {name!r} is not understood; expected 'paper', 'tiny', "
        f"'tiny:{name}', an existing local directory or a hub id 'org/repo[@revision]'."
    )


def make_tiny(
    root: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
    *,
    seed: int = 0,
    builders: Mapping[str, TinyBuilder] | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Build tiny stand-ins into ``root/<name>/`` and return ``{name: folder}``.

    Args:
        root: destination (default :func:`tiny_root`).
        names: entries to build (default: every entry).
        seed: weight-initialisation seed; the same seed gives byte-identical weights.
        builders: extra builders ``{name: builder(out_dir, seed)}`` for entries whose class lives
            outside ``humanverse`` (they also override the built-in ones).
        force: rebuild even where a complete folder exists.

    Entries with no builder are skipped with a warning. Each folder is built under a temporary
    sibling and renamed into place with a ``.complete`` marker, so concurrent builders of the same
    entry are safe; a complete folder built with the same seed and format is reused.

    Raises:
        ValueError: if ``names`` holds an unknown entry or ``builders`` a name not in the zoo.
    """
    out_root = Path(root).expanduser() if root is not None else tiny_root()
    wanted = list(ZOO) if names is None else list(names)
    for name in wanted:
        _entry(name)
    for name in builders or {}:
        _entry(name)
    built: dict[str, Path] = {}
    for name in wanted:
        builder = _builder_for(name, builders)
        if builder is None:
            logger.warning(
                "Skipping tiny %s: its builder lives beside %s; pass it with builders=.",
                name,
                ZOO[name].model_class,
            )
            continue
        built[name] = _build_one(name, builder, out_root, seed=seed, force=force)
    return built


def _marker_payload(name: str, seed: int) -> dict[str, object]:
    return {"name": name, "seed": seed, "tiny_format": TINY_FORMAT_VERSION}


def _is_complete(folder: Path, name: str, seed: int) -> bool:
    marker = folder / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == _marker_payload(name, seed)
    except (OSError, ValueError):
        return False


def _build_one(name: str, builder: TinyBuilder, root: Path, *, seed: int, force: bool) -> Path:
    """Build one tiny entry atomically: temp sibling folder, marker, rename into place."""
    final = root / name
    if not force and _is_complete(final, name, seed):
        logger.debug("Reusing tiny %s at %s", name, final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        logger.info("Building tiny %s into %s (seed %d)", name, final, seed)
        builder(tmp, seed)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(_marker_payload(name, seed)) + "\n", encoding="utf-8")
        if not force and _is_complete(final, name, seed):
            # Another process published it while we were building: keep theirs (it may be in use).
            logger.debug("Tiny %s was built concurrently; keeping the other copy", name)
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        if final.exists():
            # Stale, incomplete, other-seed or forced: move the old folder aside, then swap in.
            _discard(final, root / f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process published the folder between our check and rename.
            if not _is_complete(final, name, seed):
                raise
            logger.debug("Tiny %s was built concurrently; keeping the other copy", name)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _discard(folder: Path, aside: Path) -> None:
    """Rename ``folder`` out of the way (atomic), then delete it; fine if it is already gone."""
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return  # another builder moved it first
    shutil.rmtree(aside, ignore_errors=True)
