"""The model zoo: the table, spec resolution, and tiny stand-ins loaded through the real classes.

Every tiny model is built once per session (offline, seeded), then loaded exactly as a real
checkpoint would be and run on a synthetic image. No mocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from humanverse import zoo
from humanverse.testing.tiny_models import COCO_WHOLEBODY_KEYPOINTS, TINY_CLIP_EMBED_DIM
from humanverse.zoo import (
    ZOO,
    ModelEntry,
    ResolvedModel,
    format_table,
    make_tiny,
    resolve,
)

CORE = {
    "yolos-tiny",
    "vitpose-wholebody",
    "midas-dpt-hybrid",
    "clip-vit-l14",
    "aesthetic-mlp",
    "blip2-opt-2.7b",
    "sd2-inpainting",
    "sd2-base",
    "sd-vae-ft-mse",
    "sdxl-base",
    "sdxl-vae-fp16-fix",
}
EXTERNAL = {"omnidata-depth", "omnidata-normal", "lsdm"}  # builders live outside humanverse

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BILINEAR, BICUBIC = 2, 3


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory):
    """The whole tiny zoo, built once; HUMANVERSE_TINY_ZOO points at it for the session."""
    root = tmp_path_factory.mktemp("tiny-zoo")
    patch = pytest.MonkeyPatch()
    patch.setenv("HUMANVERSE_TINY_ZOO", str(root))
    make_tiny(root)
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def image() -> Image.Image:
    """A 320x240 RGB image with structure (gradients + a bright block)."""
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=-1).astype(np.uint8)
    rgb[60:180, 120:200] = (250, 240, 230)
    return Image.fromarray(rgb)


def _sha256_weights(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


# ---------------------------------------------------------------------------------------------
# the table


def test_every_paper_entry_is_pinned_and_names_its_files():
    """Every entry `--models paper` loads pins a 40-hex commit of its hub repository (or, for a
    download record, says why none exists), says where the pin was seen, and names its files."""
    hex40 = re.compile(r"[0-9a-f]{40}")
    for name, entry in ZOO.items():
        if not entry.paper:
            assert name == "lsdm" and zoo.pin_status(entry) == "not published"
            continue
        assert entry.files, name
        assert entry.pin_source, name
        if entry.on_hub:
            assert entry.revision and hex40.fullmatch(entry.revision), name
            assert zoo.pin_status(entry) in ("confirmed", "public pin, unconfirmed"), name
        else:
            assert "zenodo.org/records/10447888" in entry.hub_id and entry.revision is None, name
            assert zoo.pin_status(entry) == "immutable record"
        for f, digest in entry.sha256.items():
            assert f in entry.files and re.fullmatch(r"[0-9a-f]{64}", digest), (name, f)
    # The corrected pins (the old SD-2 ones do not exist in their repos).
    assert ZOO["sd2-inpainting"].revision == "6ba40839c3c171123b2b863d16caf023e297abb9"
    assert ZOO["sd2-base"].revision == "d6f5d3ef32568709d194e94c41ea4696d0566644"
    assert ZOO["sdxl-vae-fp16-fix"].revision == "207b116dae70ace3637169f1ddd2434b91b3a8cd"
    assert "pytorch_model.bin" in ZOO["midas-dpt-hybrid"].files


def test_zoo_list_shows_every_full_pin_and_its_status():
    out = subprocess.run([sys.executable, "-m", "humanverse.cli", "zoo", "list"], capture_output=True, text=True,
                         check=True).stdout
    for entry in ZOO.values():
        row = next(line for line in out.splitlines() if line.startswith(entry.name + " "))
        if entry.revision:
            assert entry.revision in row
        assert zoo.pin_status(entry) in row
    assert "UNPINNED" not in out


def test_table_lists_every_model_with_pinned_revisions():
    assert CORE | EXTERNAL <= set(ZOO)
    for name, entry in ZOO.items():
        assert isinstance(entry, ModelEntry) and entry.name == name
        assert entry.task and entry.licence and entry.model_class and entry.tiny
        assert entry.revision is None or re.fullmatch(r"[0-9a-f]{40}", entry.revision), name
        assert (entry.build_tiny is not None) == (name in CORE), name
    assert ZOO["yolos-tiny"].revision == "95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de"
    assert ZOO["aesthetic-mlp"].files == ("model.safetensors",)
    assert ZOO["aesthetic-mlp"].revision == "1e77fa05081323d99725fc40a9bf9f88180490e7"
    assert ZOO["vitpose-wholebody"].model_class == "transformers.VitPoseForPoseEstimation"
    assert "wholebody.pth" in ZOO["vitpose-wholebody"].notes
    assert "10447888" in ZOO["omnidata-depth"].hub_id
    assert "non-commercial" in ZOO["omnidata-normal"].licence
    assert ZOO["lsdm"].hub_id == ""


def test_format_table_has_one_row_per_entry():
    table = format_table()
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["name", "task"]
    assert len(lines) == 2 + len(ZOO)
    for entry in ZOO.values():
        row = next(line for line in lines if line.startswith(entry.name + " "))
        assert (entry.revision or "-") in row


def test_importing_the_zoo_stays_light():
    heavy = ("torch", "transformers", "diffusers", "open_clip")
    code = f"import sys, humanverse.zoo; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# resolve()


def test_resolve_paper_pins_the_revision():
    r = resolve("yolos-tiny", "paper")
    pinned = "95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de"
    assert r == ResolvedModel("yolos-tiny", "hustvl/yolos-tiny", pinned, "hub")
    assert r.tag == "hustvl/yolos-tiny@95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de"
    assert r.pretrained_kwargs() == {"revision": "95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de"}
    assert r.entry is ZOO["yolos-tiny"]
    vae = resolve("sd-vae-ft-mse")
    assert vae.tag == "stabilityai/sd-vae-ft-mse@31f26fdeee1355a5c34592e401dd41e45d25a493"


def test_resolve_hub_ids():
    r = resolve("yolos-tiny", "someone/yolos-finetune@v2")
    assert (r.kind, r.path, r.revision) == ("hub", "someone/yolos-finetune", "v2")
    assert r.tag == "someone/yolos-finetune@v2" and r.pretrained_kwargs() == {"revision": "v2"}
    assert resolve("yolos-tiny", "someone/yolos-finetune").pretrained_kwargs() == {}
    # The entry's own repo without a revision gets the pinned one.
    own = resolve("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0")
    assert own.revision == ZOO["sdxl-base"].revision


def test_resolve_tiny_specs(tiny_root: Path):
    for spec in ("tiny", "tiny:yolos-tiny"):
        r = resolve("yolos-tiny", spec)
        assert r.kind == "tiny" and Path(r.path) == tiny_root / "yolos-tiny"
        assert r.tag == "tiny:yolos-tiny" and r.pretrained_kwargs() == {} and r.revision is None


def test_resolve_builds_a_missing_tiny_model_on_demand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HUMANVERSE_TINY_ZOO", str(tmp_path / "zoo"))
    r = resolve("aesthetic-mlp", "tiny")
    assert (Path(r.path) / "model.safetensors").is_file() and (Path(r.path) / ".complete").is_file()
    assert zoo.tiny_root() == tmp_path / "zoo"


def test_resolve_local_directories(tiny_root: Path, tmp_path: Path):
    parent = resolve("midas-dpt-hybrid", str(tiny_root))  # a folder of model folders
    assert parent.kind == "local" and Path(parent.path) == tiny_root / "midas-dpt-hybrid"
    assert parent.tag == parent.path and parent.pretrained_kwargs() == {} and parent.revision is None
    direct = resolve("yolos-tiny", str(tiny_root / "sd2-base"))  # itself a model folder
    assert Path(direct.path) == tiny_root / "sd2-base"
    assert Path(resolve("aesthetic-mlp", str(tiny_root / "aesthetic-mlp")).path).name == "aesthetic-mlp"

    with pytest.raises(ValueError, match=r"neither a 'yolos-tiny/' subfolder nor a model file"):
        resolve("yolos-tiny", str(tmp_path))
    with pytest.raises(ValueError, match=r"does not exist"):
        resolve("yolos-tiny", str(tmp_path / "missing" / "models"))
    with pytest.raises(ValueError, match=r"does not exist"):
        resolve("yolos-tiny", "./no-such-models-dir")
    weights = tiny_root / "aesthetic-mlp" / "model.safetensors"
    with pytest.raises(ValueError, match=r"is a file; expected a model directory"):
        resolve("aesthetic-mlp", str(weights))


def test_resolve_errors_are_one_clear_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HUMANVERSE_MODELS", str(tmp_path / "no-models-prepared"))
    with pytest.raises(ValueError, match=r"Unknown model 'yolo'; expected one of: yolos-tiny, "):
        resolve("yolo", "paper")
    bad = r"Model spec 'bogus spec!' for 'yolos-tiny' is not understood; expected 'paper'"
    with pytest.raises(ValueError, match=bad):
        resolve("yolos-tiny", "bogus spec!")
    with pytest.raises(ValueError, match=r"is empty"):
        resolve("yolos-tiny", "  ")
    other = r"names a different tiny model than 'yolos-tiny'; use 'tiny' or 'tiny:yolos-tiny'"
    with pytest.raises(ValueError, match=other):
        resolve("yolos-tiny", "tiny:sd2-base")
    with pytest.raises(ValueError, match=r"cannot be loaded from the hub as is .*wholebody.*zoo prepare DIR"):
        resolve("vitpose-wholebody", "paper")
    with pytest.raises(ValueError, match=r"cannot be loaded from the hub as is .*omnidata_dpt_depth_v2.ckpt"):
        resolve("omnidata-depth", "paper")
    with pytest.raises(ValueError, match=r"'lsdm' has no published weights"):
        resolve("lsdm", "paper")


def test_external_entries_need_a_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setenv("HUMANVERSE_TINY_ZOO", str(tmp_path / "zoo"))
    with pytest.raises(ValueError, match=r"'omnidata-depth' has no tiny builder in humanverse"):
        resolve("omnidata-depth", "tiny")

    with caplog.at_level(logging.WARNING, logger="humanverse.zoo"):
        built = make_tiny(tmp_path / "zoo", ["omnidata-depth", "aesthetic-mlp"])
    assert set(built) == {"aesthetic-mlp"}
    assert "Skipping tiny omnidata-depth" in caplog.text

    def fake_omnidata(out_dir: Path, seed: int) -> None:
        (out_dir / "config.json").write_text(json.dumps({"seed": seed}))

    r = resolve("omnidata-depth", "tiny", builders={"omnidata-depth": fake_omnidata})
    assert r.kind == "tiny" and json.loads((Path(r.path) / "config.json").read_text()) == {"seed": 0}
    with pytest.raises(ValueError, match=r"Unknown model 'nope'"):
        make_tiny(tmp_path / "zoo", builders={"nope": fake_omnidata})
    with pytest.raises(ValueError, match=r"Unknown model 'nope'"):
        make_tiny(tmp_path / "zoo", ["nope"])


# ---------------------------------------------------------------------------------------------
# make_tiny(): completeness, determinism, atomic publication


def test_make_tiny_builds_every_core_entry_as_safetensors(tiny_root: Path):
    built = {p.name for p in tiny_root.iterdir() if not p.name.startswith(".")}
    assert built == CORE
    for name in CORE:
        folder = tiny_root / name
        assert json.loads((folder / ".complete").read_text())["name"] == name
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files), name
        assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}], name
        size = sum(p.stat().st_size for p in files)
        assert size < 12 * 2**20, f"{name} is {size} bytes"
    assert not [p for p in tiny_root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_building_twice_gives_identical_weights(tiny_root: Path, tmp_path: Path):
    again = make_tiny(tmp_path / "again", sorted(CORE), seed=0)
    for name, folder in again.items():
        first, second = _sha256_weights(tiny_root / name), _sha256_weights(folder)
        assert first and first == second, name
    other_seed = make_tiny(tmp_path / "seed1", ["aesthetic-mlp"], seed=1)["aesthetic-mlp"]
    assert _sha256_weights(other_seed) != _sha256_weights(tiny_root / "aesthetic-mlp")


def test_building_does_not_touch_the_callers_rng(tmp_path: Path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    make_tiny(tmp_path, ["sd-vae-ft-mse"])
    assert torch.equal(torch.rand(3), expected)


def test_complete_folders_are_reused_and_force_rebuilds(tmp_path: Path):
    calls: list[int] = []

    def builder(out_dir: Path, seed: int) -> None:
        calls.append(seed)
        (out_dir / "config.json").write_text("{}")

    make_tiny(tmp_path, ["lsdm"], builders={"lsdm": builder})
    make_tiny(tmp_path, ["lsdm"], builders={"lsdm": builder})
    assert calls == [0]
    make_tiny(tmp_path, ["lsdm"], builders={"lsdm": builder}, force=True)
    make_tiny(tmp_path, ["lsdm"], builders={"lsdm": builder}, seed=7)  # other seed: rebuilt
    assert calls == [0, 0, 7]
    # A folder without the marker (an interrupted copy, a hand-made folder) is replaced.
    (tmp_path / "lsdm" / ".complete").unlink()
    (tmp_path / "lsdm" / "junk").write_text("x")
    make_tiny(tmp_path, ["lsdm"], builders={"lsdm": builder})
    assert calls == [0, 0, 7, 0] and not (tmp_path / "lsdm" / "junk").exists()


def test_failed_build_leaves_nothing_behind(tmp_path: Path):
    def broken(out_dir: Path, seed: int) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make_tiny(tmp_path, ["lsdm"], builders={"lsdm": broken})
    assert list(tmp_path.iterdir()) == []


def test_concurrent_builders_publish_one_complete_folder(tmp_path: Path):
    """Racing builders (Ray actors) all get the folder; the first one published is never replaced."""

    def slow_builder(index: int):
        def build(out_dir: Path, seed: int) -> None:
            (out_dir / "config.json").write_text(json.dumps({"builder": index}))
            time.sleep(0.15 * (index + 1))  # builder 0 finishes first
            (out_dir / "model.safetensors").write_bytes(b"")

        return build

    results: list[Path] = []
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results.append(make_tiny(tmp_path, ["lsdm"], builders={"lsdm": slow_builder(index)})["lsdm"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [tmp_path / "lsdm"] * 4
    assert (tmp_path / "lsdm" / ".complete").is_file() and (tmp_path / "lsdm" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "lsdm" / "config.json").read_text()) == {"builder": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lsdm"]


# ---------------------------------------------------------------------------------------------
# every tiny model through its real loading path


def test_yolos_detects_with_pixel_boxes(tiny_root: Path, image: Image.Image):
    from transformers import YolosForObjectDetection, YolosImageProcessor
    from transformers.image_transforms import center_to_corners_format

    r = resolve("yolos-tiny", "tiny")
    model = YolosForObjectDetection.from_pretrained(r.path, **r.pretrained_kwargs()).eval()
    processor = YolosImageProcessor.from_pretrained(r.path, **r.pretrained_kwargs())
    assert model.config.id2label[1] == "person" and model.config.num_labels == 91

    enc = processor(images=[image], return_tensors="pt")
    assert tuple(enc["pixel_values"].shape) == (1, 3, 512, 672)  # 240x320 -> short side 512, /16
    with torch.no_grad():
        out = model(**enc)
    assert tuple(out.logits.shape) == (1, 100, 92)
    assert tuple(out.pred_boxes.shape) == (1, 100, 4)

    (det,) = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[(240, 320)])
    assert det["boxes"].shape == (100, 4)
    expected = center_to_corners_format(out.pred_boxes[0]) * torch.tensor([320.0, 240.0, 320.0, 240.0])
    torch.testing.assert_close(det["boxes"], expected)  # absolute xyxy pixels of the input image


def test_vitpose_gives_133_heatmaps(tiny_root: Path):
    from transformers import VitPoseForPoseEstimation

    model = VitPoseForPoseEstimation.from_pretrained(resolve("vitpose-wholebody", "tiny").path).eval()
    assert model.config.num_labels == 133
    assert [model.config.id2label[i] for i in range(133)] == list(COCO_WHOLEBODY_KEYPOINTS)
    crops = torch.randn(3, 3, 256, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        heatmaps = model(pixel_values=crops).heatmaps
    assert tuple(heatmaps.shape) == (3, 133, 64, 48)


def test_vitpose_processor_with_boxes(tiny_root: Path, image: Image.Image):
    pytest.importorskip("scipy", reason="VitPoseImageProcessor's affine crop needs scipy")
    from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

    path = resolve("vitpose-wholebody", "tiny").path
    model = VitPoseForPoseEstimation.from_pretrained(path).eval()
    processor = VitPoseImageProcessor.from_pretrained(path)
    boxes = [[[10.0, 20.0, 90.0, 150.0], [150.0, 40.0, 60.0, 180.0]]]  # COCO xywh
    enc = processor(images=[image], boxes=boxes, return_tensors="pt")
    assert tuple(enc["pixel_values"].shape) == (2, 3, 256, 192)
    with torch.no_grad():
        out = model(**enc)
    assert tuple(out.heatmaps.shape) == (2, 133, 64, 48)
    (people,) = processor.post_process_pose_estimation(out, boxes=boxes)
    assert len(people) == 2 and tuple(people[0]["keypoints"].shape) == (133, 2)


def test_dpt_hybrid_predicts_depth(tiny_root: Path, image: Image.Image):
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    path = resolve("midas-dpt-hybrid", "tiny").path
    model = DPTForDepthEstimation.from_pretrained(path).eval()
    processor = DPTImageProcessor.from_pretrained(path)
    assert model.config.is_hybrid
    enc = processor(images=[image], return_tensors="pt")
    assert tuple(enc["pixel_values"].shape) == (1, 3, 384, 384)  # squashed, not aspect-kept
    assert float(enc["pixel_values"].min()) >= -1.0 and float(enc["pixel_values"].max()) <= 1.0
    with torch.no_grad():
        out = model(**enc)
    assert tuple(out.predicted_depth.shape) == (1, 384, 384)
    assert float(out.predicted_depth.min()) >= 0.0  # final ReLU, as MiDaS
    (depth,) = processor.post_process_depth_estimation(out, target_sizes=[(240, 320)])
    assert tuple(depth["predicted_depth"].shape) == (240, 320)


def _clip(tiny_root: Path):
    import open_clip

    path = resolve("clip-vit-l14", "tiny").path
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + path)
    return model.eval(), preprocess, open_clip.get_tokenizer("local-dir:" + path)


def test_open_clip_embeds_images_and_text(tiny_root: Path, image: Image.Image):
    from torchvision import transforms as T

    model, preprocess, tokenizer = _clip(tiny_root)
    steps = {type(t): t for t in preprocess.transforms}
    assert steps[T.Resize].size == 224 and steps[T.Resize].interpolation == T.InterpolationMode.BICUBIC
    assert tuple(steps[T.CenterCrop].size) == (224, 224)
    assert tuple(steps[T.Normalize].mean) == CLIP_MEAN and tuple(steps[T.Normalize].std) == CLIP_STD

    with torch.no_grad():
        image_features = model.encode_image(preprocess(image).unsqueeze(0))
        text_features = model.encode_text(tokenizer(["a photo of a person"]))
    assert tuple(image_features.shape) == (1, TINY_CLIP_EMBED_DIM)
    assert tuple(text_features.shape) == (1, TINY_CLIP_EMBED_DIM)
    config = json.loads((Path(resolve("clip-vit-l14", "tiny").path) / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is True


def test_aesthetic_mlp_scores_a_clip_embedding(tiny_root: Path, image: Image.Image):
    from safetensors.torch import load_file

    from pipelines.stages.aesthetic import load_aesthetic_mlp

    state = load_file(str(Path(resolve("aesthetic-mlp", "tiny").path) / "model.safetensors"))
    # the LAION predictor's layers and widths (768 -> 1024 -> 128 -> 64 -> 16 -> 1), on the tiny CLIP width
    widths = [TINY_CLIP_EMBED_DIM, 1024, 128, 64, 16, 1]
    assert {k: tuple(v.shape) for k, v in state.items() if k.endswith("weight")} == {
        f"layers.{i}.weight": (widths[n + 1], widths[n]) for n, i in enumerate((0, 2, 4, 6, 7))}
    assert set(state) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    mlp = load_aesthetic_mlp(resolve("aesthetic-mlp", "tiny"))  # what the aesthetic stage scores with

    model, preprocess, _ = _clip(tiny_root)
    with torch.no_grad():
        embedding = model.encode_image(preprocess(image).unsqueeze(0))
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        score = mlp.layers.eval()(embedding)
    assert tuple(score.shape) == (1, 1) and torch.isfinite(score).all()


def test_blip2_generates_and_decodes(tiny_root: Path, image: Image.Image):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    path = resolve("blip2-opt-2.7b", "tiny").path
    model = Blip2ForConditionalGeneration.from_pretrained(path).eval()
    processor = Blip2Processor.from_pretrained(path)
    tokenizer = processor.tokenizer
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.image_token_index == image_token
    assert processor.num_query_tokens == model.config.num_query_tokens == 32
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.bos_token_id, tokenizer.pad_token_id) == ("</s>", 2, 1)

    inputs = processor(images=image, return_tensors="pt")
    assert list(inputs) == ["pixel_values"] and tuple(inputs["pixel_values"].shape) == (1, 3, 224, 224)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=5)
    assert ids.shape[0] == 1 and ids.shape[1] <= 32 + 1 + 5
    assert ids[0, :32].tolist() == [image_token] * 32 and int(ids[0, 32]) == 2
    (caption,) = processor.batch_decode(ids, skip_special_tokens=True)
    assert isinstance(caption, str) and "<image>" not in caption

    prompted = processor(images=image, text="a photo of", return_tensors="pt")
    assert prompted["input_ids"][0, :32].tolist() == [image_token] * 32
    with torch.no_grad():
        ids = model.generate(**prompted, max_new_tokens=3, num_beams=2)
    assert processor.batch_decode(ids, skip_special_tokens=True)[0].startswith("a photo of")


def test_sd2_inpainting_pipeline_runs(tiny_root: Path, image: Image.Image):
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(resolve("sd2-inpainting", "tiny").path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.use_linear_projection
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert isinstance(pipe.scheduler, PNDMScheduler) and pipe.vae.config.scaling_factor == 0.18215
    assert pipe.vae_scale_factor == 8

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white = repaint
    out = pipe(
        "a person",
        image=image.resize((64, 64)),
        mask_image=mask,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images[0].size == (64, 64) and out.images[0].mode == "RGB"


def test_sd2_base_text_to_latents(tiny_root: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(resolve("sd2-base", "tiny").path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    generator = torch.Generator().manual_seed(0)
    out = pipe("a person", num_inference_steps=2, output_type="latent", generator=generator)
    assert tuple(out.images.shape) == (1, 4, 8, 8)


def test_sdxl_pipeline_runs(tiny_root: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(resolve("sdxl-base", "tiny").path)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet.config
    hidden_1, hidden_2 = pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size
    assert unet.addition_embed_type == "text_time" and unet.cross_attention_dim == hidden_1 + hidden_2
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler) and pipe.vae.config.scaling_factor == 0.13025
    out = pipe("a person", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)


@pytest.mark.parametrize(
    ("name", "scaling", "upcast"), [("sd-vae-ft-mse", 0.18215, True), ("sdxl-vae-fp16-fix", 0.13025, False)]
)
def test_vaes_have_real_latent_geometry(tiny_root: Path, name: str, scaling: float, upcast: bool):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(resolve(name, "tiny").path).eval()
    assert vae.config.scaling_factor == scaling and vae.config.force_upcast is upcast
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
        decoded = vae.decode(latents).sample
    assert tuple(latents.shape) == (1, 4, 8, 8) and tuple(decoded.shape) == (1, 3, 64, 64)


# ---------------------------------------------------------------------------------------------
# preprocessing equals the real checkpoints' (docs/models.md)


def test_processor_configs_match_the_real_checkpoints(tiny_root: Path):
    from transformers import (
        Blip2Processor,
        DPTImageProcessor,
        VitPoseImageProcessor,
        YolosImageProcessor,
    )

    yolos = YolosImageProcessor.from_pretrained(tiny_root / "yolos-tiny")
    assert (yolos.size.shortest_edge, yolos.size.longest_edge) == (512, 1333)
    assert yolos.resample == BILINEAR and yolos.do_pad and yolos.do_normalize
    assert tuple(yolos.image_mean) == IMAGENET_MEAN and tuple(yolos.image_std) == IMAGENET_STD

    vitpose = VitPoseImageProcessor.from_pretrained(tiny_root / "vitpose-wholebody")
    assert (vitpose.size.height, vitpose.size.width) == (256, 192) and vitpose.do_affine_transform
    assert tuple(vitpose.image_mean) == IMAGENET_MEAN and tuple(vitpose.image_std) == IMAGENET_STD

    dpt = DPTImageProcessor.from_pretrained(tiny_root / "midas-dpt-hybrid")
    assert (dpt.size.height, dpt.size.width) == (384, 384)
    assert dpt.keep_aspect_ratio is False and dpt.ensure_multiple_of == 1 and dpt.resample == BILINEAR
    assert tuple(dpt.image_mean) == (0.5, 0.5, 0.5) and tuple(dpt.image_std) == (0.5, 0.5, 0.5)

    blip = Blip2Processor.from_pretrained(tiny_root / "blip2-opt-2.7b").image_processor
    assert (blip.size.height, blip.size.width) == (224, 224) and blip.resample == BICUBIC
    assert blip.do_convert_rgb and tuple(blip.image_mean) == CLIP_MEAN and tuple(blip.image_std) == CLIP_STD

    clip = json.loads((tiny_root / "clip-vit-l14" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert clip["interpolation"] == "bicubic" and clip["resize_mode"] == "shortest" and clip["size"] == 224
    assert tuple(clip["mean"]) == CLIP_MEAN and tuple(clip["std"]) == CLIP_STD


def test_pipeline_tokenizers_and_schedulers_match_the_real_ones(tiny_root: Path):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler
    from transformers import CLIPTokenizer

    for name in ("sd2-base", "sd2-inpainting"):
        scheduler = PNDMScheduler.from_pretrained(tiny_root / name, subfolder="scheduler")
        assert scheduler.config.skip_prk_steps and scheduler.config.steps_offset == 1
        assert scheduler.config.prediction_type == "epsilon" and scheduler.config.set_alpha_to_one is False
    euler = EulerDiscreteScheduler.from_pretrained(tiny_root / "sdxl-base", subfolder="scheduler")
    assert euler.config.timestep_spacing == "leading" and euler.config.prediction_type == "epsilon"

    tok = CLIPTokenizer.from_pretrained(tiny_root / "sdxl-base", subfolder="tokenizer")
    tok_2 = CLIPTokenizer.from_pretrained(tiny_root / "sdxl-base", subfolder="tokenizer_2")
    assert (tok.pad_token, tok_2.pad_token) == ("<|endoftext|>", "!")
    ids = tok("A Photo of a PERSON", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a person"  # CLIP lower-cases
    assert tok.convert_ids_to_tokens(0) == "!"  # the real byte-level order


# ---------------------------------------------------------------------------------------------
# config fidelity: every tiny model is its real config with only the declared size fields changed


def _tiny_saved_sections(root: Path) -> dict[tuple[str, str], dict]:
    """(entry, component) -> the configuration the tiny model on disk actually carries."""

    def js(*parts: str) -> dict:
        return json.loads(root.joinpath(*parts).read_text())

    def processor(entry: str) -> dict:
        folder = root / entry
        if (folder / "preprocessor_config.json").is_file():
            return js(entry, "preprocessor_config.json")
        return js(entry, "processor_config.json")["image_processor"]

    from safetensors.torch import load_file

    mlp = load_file(str(root / "aesthetic-mlp" / "model.safetensors"))
    keys = sorted({k.rsplit(".", 1)[0] for k in mlp}, key=lambda k: int(k.split(".")[1]))
    vit, dpt, blip, clip = (js(e, "config.json") for e in ("vitpose-wholebody", "midas-dpt-hybrid",
                                                            "blip2-opt-2.7b", "yolos-tiny"))
    oc = js("clip-vit-l14", "open_clip_config.json")
    out = {
        ("yolos-tiny", "model"): {**clip, "num_labels": len(clip["id2label"])},
        ("yolos-tiny", "processor"): processor("yolos-tiny"),
        ("vitpose-wholebody", "backbone"): vit["backbone_config"],
        ("vitpose-wholebody", "model"): {**vit, "num_labels": len(vit["id2label"])},
        ("vitpose-wholebody", "processor"): processor("vitpose-wholebody"),
        ("vitpose-wholebody", "decoding"): js("vitpose-wholebody", "pose_decoding.json"),
        ("midas-dpt-hybrid", "model"): dpt,
        ("midas-dpt-hybrid", "backbone"): dpt["backbone_config"],
        ("midas-dpt-hybrid", "processor"): processor("midas-dpt-hybrid"),
        ("clip-vit-l14", "model_cfg"): oc["model_cfg"],
        ("clip-vit-l14", "vision_cfg"): oc["model_cfg"]["vision_cfg"],
        ("clip-vit-l14", "text_cfg"): oc["model_cfg"]["text_cfg"],
        ("clip-vit-l14", "preprocess_cfg"): oc["preprocess_cfg"],
        ("aesthetic-mlp", "mlp"): {
            "input_size": mlp["layers.0.weight"].shape[1],
            "widths": [mlp[f"{k}.weight"].shape[0] for k in keys],
            "dropouts": [0.2, 0.2, 0.1],  # not stored; the builder reads them from the same data
            "keys": keys,
        },
        ("blip2-opt-2.7b", "model"): blip,
        ("blip2-opt-2.7b", "vision"): blip["vision_config"],
        ("blip2-opt-2.7b", "qformer"): blip["qformer_config"],
        ("blip2-opt-2.7b", "text"): blip["text_config"],
        ("blip2-opt-2.7b", "processor"): processor("blip2-opt-2.7b"),
        ("sd-vae-ft-mse", "vae"): js("sd-vae-ft-mse", "config.json"),
        ("sdxl-vae-fp16-fix", "vae"): js("sdxl-vae-fp16-fix", "config.json"),
    }
    for entry in ("sd2-base", "sd2-inpainting", "sdxl-base"):
        for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
            if (root / entry / part / "config.json").is_file():
                out[(entry, part)] = js(entry, part, "config.json")
        out[(entry, "scheduler")] = js(entry, "scheduler", "scheduler_config.json")
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(1, abs(a))
    return a == b


def test_tiny_models_keep_every_non_size_field_of_the_real_configs(tiny_root: Path):
    """The real configs are data (humanverse/configs); a tiny model may differ from its real model
    only in the fields that data declares as sizes (widths, depths, heads...): activations,
    epsilons (ViTPose: 1e-6), head sizes, processor sizes, mean/std and decoding are the real ones."""
    from humanverse.configs import SIZE_FIELDS_KEY, config_names, real_config, section

    saved = _tiny_saved_sections(tiny_root)
    covered = {entry for entry, _ in saved}
    assert covered == set(config_names())
    checked = 0
    for entry in config_names():
        for part, data in real_config(entry).items():
            if part.startswith("_"):
                continue
            assert (entry, part) in saved, (entry, part)
            sizes = set(data[SIZE_FIELDS_KEY])
            for key, real in section(entry, part).items():
                if key in sizes:
                    continue
                assert key in saved[(entry, part)], (entry, part, key)
                assert _same(saved[(entry, part)][key], real), (entry, part, key, saved[(entry, part)][key], real)
                checked += 1
    assert checked > 150
    assert saved[("vitpose-wholebody", "backbone")]["layer_norm_eps"] == 1e-6


def test_shrinking_only_allows_declared_size_fields():
    from humanverse.configs import shrunk

    assert shrunk("vitpose-wholebody", "backbone", hidden_size=32)["layer_norm_eps"] == 1e-6
    with pytest.raises(ValueError, match=r"\['layer_norm_eps'\] are not size fields"):
        shrunk("vitpose-wholebody", "backbone", layer_norm_eps=1e-12)


# ---------------------------------------------------------------------------------------------
# zoo prepare, and what a load failure says


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``humanverse zoo ARGS`` in this process: (exit code, stdout, the logged error lines)."""
    from humanverse.cli import main

    capsys.readouterr()
    code = main(["zoo", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prepare_dry_run_lists_every_file_with_its_pin(tmp_path: Path, capsys):
    code, out, _ = _cli(capsys, "prepare", str(tmp_path / "models"), "--dry-run")
    assert code == 0
    lines = out.splitlines()
    for entry in ZOO.values():
        if not entry.paper:
            assert not any(line.split()[:1] == [entry.name] for line in lines)
            continue
        rows = [line for line in lines if line.split()[:1] == [entry.name]]
        assert len(rows) == len(entry.files), entry.name
        for f in entry.files:
            row = next(r for r in rows if f"  {f}  " in r)
            assert (entry.revision or entry.hub_id) in row and zoo.pin_status(entry) in row
    assert "non-commercial" in out and "convert-vitpose" in out
    assert "dry run: nothing fetched." in out and not (tmp_path / "models").exists()


def test_prepare_offline_says_what_it_would_fetch_and_needs_the_licence(
    tmp_path: Path, capsys, caplog, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    only = ("--only", "yolos-tiny,omnidata-normal")
    code, _, _ = _cli(capsys, "prepare", str(tmp_path / "m"), *only)
    assert code == 2 and "--accept-omnidata-licence" in caplog.text
    caplog.clear()
    code, out, _ = _cli(capsys, "prepare", str(tmp_path / "m"), *only, "--accept-omnidata-licence")
    assert code == 2
    assert "nothing was fetched: the 4 files listed above are what `zoo prepare` would fetch" in caplog.text
    assert "hustvl/yolos-tiny@95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de  model.safetensors" in out
    assert "zenodo.org/records/10447888/files/omnidata_dpt_normal_v2.ckpt" in out
    assert not (tmp_path / "m").exists()
    assert _cli(capsys, "prepare", str(tmp_path / "m"), "--only", "lsdm", "--dry-run")[0] == 2


def test_an_offline_load_of_a_missing_model_names_entry_pin_and_zoo_prepare(tmp_path: Path):
    """Issue 21: a model that is not there says which zoo entry, where from, at which pin, and how
    to fetch it, in one sentence (exit code 2 through the CLI plumbing)."""
    code = (
        "from transformers import YolosForObjectDetection, YolosImageProcessor\n"
        "from pipelines.stages.detect import DetectConfig\n"
        "from pipelines.stages.loading import load_pretrained\n"
        "load_pretrained('yolos-tiny', DetectConfig(device='cpu'), 'paper', YolosForObjectDetection,\n"
        "                processor_class=YolosImageProcessor)\n"
    )
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: Cannot load hustvl/yolos-tiny@95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de (")
    assert "zoo entry 'yolos-tiny' (hustvl/yolos-tiny@95a90f3c189fbfca3bcfc6d7315b9e84d95dc2de)" in last
    assert "`humanverse zoo prepare DIR`" in last and "--models DIR" in last


@pytest.mark.slow
def test_the_real_configs_give_the_published_parameter_counts():
    """Built at full size on the meta device (no memory, no weights), the recorded configurations
    give the published models' parameter counts: the data describes the real architectures."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        BitConfig,
        Blip2Config,
        Blip2ForConditionalGeneration,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        DPTConfig,
        DPTForDepthEstimation,
        OPTConfig,
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        YolosConfig,
        YolosForObjectDetection,
    )

    from humanverse.configs import section

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        vitpose = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**section("vitpose-wholebody", "backbone")),
                                **section("vitpose-wholebody", "model"))  # fmt: skip
        blip = Blip2Config(vision_config=section("blip2-opt-2.7b", "vision"),
                           qformer_config=section("blip2-opt-2.7b", "qformer"),
                           text_config=OPTConfig(**section("blip2-opt-2.7b", "text")).to_dict(),
                           **section("blip2-opt-2.7b", "model"))  # fmt: skip
        counts = {
            "yolos-tiny": count(YolosForObjectDetection(YolosConfig(**section("yolos-tiny", "model")))),
            "vitpose-h-wholebody": count(VitPoseForPoseEstimation(vitpose)),
            "dpt-hybrid": count(DPTForDepthEstimation(DPTConfig(
                backbone_config=BitConfig(**section("midas-dpt-hybrid", "backbone")),
                **section("midas-dpt-hybrid", "model")))),
            "clip-vit-l14": count(open_clip.CLIP(**section("clip-vit-l14", "model_cfg"),
                                                 vision_cfg=section("clip-vit-l14", "vision_cfg"),
                                                 text_cfg=section("clip-vit-l14", "text_cfg"))),
            "blip2-opt-2.7b": count(Blip2ForConditionalGeneration(blip)),
            "sd2-unet": count(UNet2DConditionModel(**section("sd2-base", "unet"))),
            "sd2-text": count(CLIPTextModel(CLIPTextConfig(**section("sd2-base", "text_encoder")))),
            "sd-vae": count(AutoencoderKL(**section("sd-vae-ft-mse", "vae"))),
            "sdxl-unet": count(UNet2DConditionModel(**section("sdxl-base", "unet"))),
            "sdxl-text": count(CLIPTextModel(CLIPTextConfig(**section("sdxl-base", "text_encoder")))),
            "sdxl-text-2": count(CLIPTextModelWithProjection(CLIPTextConfig(**section("sdxl-base", "text_encoder_2")))),
        }  # fmt: skip
    assert counts == {
        "yolos-tiny": 6_488_736,
        "vitpose-h-wholebody": 637_238_661,  # ViT-H 1280 x 32 + two 256 deconvolutions + 133 outputs
        "dpt-hybrid": 122_377_985,
        "clip-vit-l14": 427_616_513,
        "blip2-opt-2.7b": 3_744_761_856,
        "sd2-unet": 865_910_724,
        "sd2-text": 340_387_840,
        "sd-vae": 83_653_863,
        "sdxl-unet": 2_567_463_684,
        "sdxl-text": 123_060_480,
        "sdxl-text-2": 694_659_840,
    }


def test_the_trainers_models_name_their_zoo_entry_when_missing(tmp_path: Path):
    """The trainer's frozen SD-2 parts (and every loader wrapped in humanverse.zoo.loading) fail
    offline with the same one sentence: entry, hub id at its pin, and zoo prepare."""
    import os

    code = ("import torch\nfrom model.models.sd2 import load_frozen_parts\n"
            "load_frozen_parts('paper', 'cpu')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: Cannot load stabilityai/stable-diffusion-2-base@d6f5d3ef"), last
    assert "zoo entry 'sd2-base'" in last and "`humanverse zoo prepare DIR`" in last
