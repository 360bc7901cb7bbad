"""GPU check: every model class at its real size, random weights, on one GPU. Prints one JSON object.

Built from the real configurations kept as data (``humanverse/configs``, Omnidata's
``OmnidataConfig()``), so no weights are needed; nothing is downloaded. Measures, in bf16 on a GPU:

* ``stages``: images/s of each builder model stage's network at the batch sizes of the GPU preset
  (``pipelines/presets/gpu-node.yaml``), on inputs of the shapes its processor makes (detect:
  YOLOS at 512 x 672; pose: ViTPose-H on 256 x 192 crops; depth: DPT-Hybrid and normal: Omnidata
  at 384 x 384; aesthetic: CLIP ViT-L/14 + the MLP at 224; caption: BLIP-2 OPT-2.7b generating
  30 tokens with 5 beams; outpaint: the SD-2 inpainting UNet for the preset's steps with
  classifier-free guidance plus the VAE encode/decode at 512). Pre/post-processing on the CPU and
  text encoding are not included.
* ``train_stage1`` / ``train_stage2``: one optimizer step of the LSDM (from the SD-2-base UNet
  config, 512 px) and of the structure-guided refiner (ControlNet copy of the SDXL UNet plus the
  frozen SDXL UNet, 1024 px): step time, peak memory, and MFU from a FLOP count
  (``torch.utils.flop_counter``) against the card's dense bf16 peak.
* ``sample_stage1``: stage-1 sampling (50 steps, CFG, the three VAE decodes) seconds per image.
* ``checks``: the LSDM's SD-2 identity at full size (fp32; same latent in the three branches ->
  three copies of SD-2's output) and finite outputs of every model in bf16.

``--reduced`` (automatic without CUDA) runs the same code with the configs shrunk the way the
tiny stand-ins are and small inputs, on the CPU in float32, so CI keeps it working
(``tests/test_gpu_check.py``). A section that fails is recorded under ``errors`` and the others
still run; ``--budget-s`` skips what would start after the budget.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: Dense bf16 peaks (TFLOP/s) used for MFU, by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

def reduced_sizes() -> dict[tuple[str, str], dict[str, Any]]:
    """How the reduced mode shrinks each real component: the tiny stand-ins' sizes
    (:data:`humanverse.testing.tiny_models.TINY_SIZES`), plus the sizes the tiny builders take from
    other parts (a tokenizer's vocabulary, the text encoders' widths)."""
    from humanverse.testing.tiny_models import TINY_SIZES

    sizes = {key: dict(value) for key, value in TINY_SIZES.items()}
    sizes["blip2-opt-2.7b", "text"] |= {"vocab_size": 1000, "eos_token_id": 2}
    for entry in ("sd2-inpainting", "sd2-base"):
        sizes[entry, "unet"]["cross_attention_dim"] = TINY_SIZES["sd2-base", "text_encoder"]["hidden_size"]
    widths = [TINY_SIZES["sdxl-base", part]["hidden_size"] for part in ("text_encoder", "text_encoder_2")]
    sdxl = sizes["sdxl-base", "unet"]
    sdxl["cross_attention_dim"] = sum(widths)
    sdxl["projection_class_embeddings_input_dim"] = 6 * sdxl["addition_time_embed_dim"] + widths[1]
    return sizes


class Check:
    """Shared state: device, dtype, sizes, the budget, and the report being filled."""

    def __init__(self, reduced: bool, budget_s: float, peak_tflops: float | None):
        import torch

        self.torch = torch
        self.reduced = reduced
        self.sizes = reduced_sizes() if reduced else {}
        self.device = torch.device("cuda" if torch.cuda.is_available() and not reduced else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else None
        self.peak = peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if name and k in name), None)
        self.report: dict[str, Any] = {
            "benchmark": "gpu_check", "reduced": reduced, "device": str(self.device), "gpu": name,
            "dtype": str(self.dtype).removeprefix("torch."), "peak_bf16_tflops": self.peak,
            "stages": {}, "checks": {}, "errors": {}, "skipped": [],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        }  # fmt: skip
        if reduced:
            self.report["note"] = "REDUCED SIZE on the CPU: proves the code runs, not the speed of the real models"

    def cfg(self, entry: str, part: str) -> dict[str, Any]:
        """A real config component, shrunk in reduced mode."""
        from humanverse.configs import section, shrunk

        sizes = self.sizes.get((entry, part))
        return section(entry, part) if sizes is None else shrunk(entry, part, **sizes)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    @contextlib.contextmanager
    def building(self):
        """Construct modules directly on the device (random init there: fast at full size)."""
        with self.torch.device(self.device):
            yield

    def timed(self, fn, repeats: int, warmup: bool = True) -> float:
        """Median seconds of ``fn()`` (after one warm-up call on a GPU, where the first call
        compiles kernels and autotunes; the reduced CPU run skips it)."""
        if warmup and not self.reduced:
            fn()
            self.sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    def section(self, name: str, fn) -> None:
        """Run one section; record its error (and go on) or skip it past the budget."""
        if time.perf_counter() - self.t0 > self.budget_s:
            self.report["skipped"].append(name)
            return
        start = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a failing section is reported, the others still run
            self.report["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            traceback.print_exc(file=sys.stderr)
        finally:
            self.report.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 1)
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()

    def finite(self, name: str, *tensors) -> None:
        ok = all(bool(self.torch.isfinite(t.float()).all()) for t in tensors)
        self.report["checks"].setdefault("finite_outputs", {})[name] = ok


def preset_batches() -> dict[str, int]:
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "pipelines/presets/gpu-node.yaml").read_text())
    resources = data.get("resources", data)
    return {k: int(v["batch_size"]) for k, v in resources.items() if isinstance(v, dict) and "batch_size" in v}


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# builder stages


def stage_models(c: Check, batches: dict[str, int]) -> None:
    torch = c.torch
    small = c.reduced
    rep = 1 if small else 3
    bs = (lambda name: 2) if small else (lambda name: batches.get(name, 8))

    def record(name, model, batch, seconds, **extra):
        c.report["stages"][name] = {"batch": batch, "params": params(model), "s_per_batch": round(seconds, 4),
                                    "images_per_s": round(batch / seconds, 2), **extra}

    def run_vision(name, model, x, call):
        model.eval()
        with torch.inference_mode():
            out = call(x)
            c.finite(name, *(out if isinstance(out, tuple) else (out,)))
            seconds = c.timed(lambda: call(x), rep)
        record(name, model, x.shape[0], seconds, input=list(x.shape[1:]))

    def detect():
        from transformers import YolosConfig, YolosForObjectDetection

        with c.building():
            m = YolosForObjectDetection(YolosConfig(**c.cfg("yolos-tiny", "model"))).to(c.dtype)
        h, w = (64, 96) if small else (512, 672)
        x = torch.randn(bs("detect"), 3, h, w, device=c.device, dtype=c.dtype)
        run_vision("detect", m, x, lambda x: m(pixel_values=x).logits)

    def pose():
        from transformers import (
            VitPoseBackboneConfig,
            VitPoseConfig,
            VitPoseForPoseEstimation,
        )

        model_cfg = c.cfg("vitpose-wholebody", "model")
        with c.building():
            cfg = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**c.cfg("vitpose-wholebody", "backbone")),
                                use_simple_decoder=model_cfg["use_simple_decoder"], scale_factor=model_cfg["scale_factor"],
                                num_labels=model_cfg["num_labels"])  # fmt: skip
            m = VitPoseForPoseEstimation(cfg).to(c.dtype)
        x = torch.randn(2 if small else 32, 3, 256, 192, device=c.device, dtype=c.dtype)  # crops per forward
        run_vision("pose", m, x, lambda x: m(pixel_values=x).heatmaps)

    def depth():
        from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

        with c.building():
            m = DPTForDepthEstimation(DPTConfig(backbone_config=BitConfig(**c.cfg("midas-dpt-hybrid", "backbone")),
                                                **c.cfg("midas-dpt-hybrid", "model"))).to(c.dtype)
        x = torch.randn(bs("depth"), 3, 384, 384, device=c.device, dtype=c.dtype)
        run_vision("depth", m, x, lambda x: m(pixel_values=x).predicted_depth)

    def normal():
        from pipelines.annotators.omnidata import OmnidataConfig, OmnidataDPT

        with c.building():
            m = OmnidataDPT(OmnidataConfig.tiny("normal") if small else OmnidataConfig(task="normal")).to(c.dtype)
        size = 64 if small else 384
        x = torch.rand(bs("normal"), 3, size, size, device=c.device, dtype=c.dtype)
        run_vision("normal", m, x, m)

    def aesthetic():
        import open_clip

        from humanverse.configs import section

        with c.building():
            clip = open_clip.CLIP(**c.cfg("clip-vit-l14", "model_cfg"), vision_cfg=c.cfg("clip-vit-l14", "vision_cfg"),
                                  text_cfg=c.cfg("clip-vit-l14", "text_cfg")).to(c.dtype)  # fmt: skip
            w = [clip.visual.output_dim, *section("aesthetic-mlp", "mlp")["widths"]]
            mlp = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in itertools.pairwise(w)]).to(c.dtype)

        def call(x):
            e = clip.encode_image(x)
            return mlp(e / e.norm(dim=-1, keepdim=True))

        x = torch.randn(bs("aesthetic"), 3, 224, 224, device=c.device, dtype=c.dtype)
        run_vision("aesthetic", clip, x, call)

    def caption():
        from transformers import (
            Blip2Config,
            Blip2ForConditionalGeneration,
            Blip2QFormerConfig,
            Blip2VisionConfig,
            OPTConfig,
        )

        text = c.cfg("blip2-opt-2.7b", "text")
        image_token = text["vocab_size"] - 1 if small else 50265
        with c.building():
            cfg = Blip2Config(vision_config=Blip2VisionConfig(**c.cfg("blip2-opt-2.7b", "vision")).to_dict(),
                              qformer_config=Blip2QFormerConfig(**c.cfg("blip2-opt-2.7b", "qformer")).to_dict(),
                              text_config=OPTConfig(**text, bos_token_id=2, pad_token_id=1).to_dict(),
                              num_query_tokens=32, image_token_index=image_token)  # fmt: skip
            m = Blip2ForConditionalGeneration(cfg).to(c.dtype).eval()
        b = bs("caption")
        x = torch.randn(b, 3, 224, 224, device=c.device, dtype=c.dtype)
        new_tokens = 4 if small else 30

        def call():
            return m.generate(pixel_values=x, num_beams=5, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False)  # fmt: skip

        with torch.inference_mode():
            ids = call()
            c.report["checks"].setdefault("finite_outputs", {})["caption"] = bool(ids.shape[-1] >= new_tokens)
            seconds = c.timed(call, 1)
        record("caption", m, b, seconds, input=[3, 224, 224], beams=5, new_tokens=new_tokens)

    def outpaint():
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet_cfg = c.cfg("sd2-inpainting", "unet")
        with c.building():
            unet = UNet2DConditionModel(**unet_cfg).to(c.dtype).eval()
            vae = AutoencoderKL(**c.cfg("sd-vae-ft-mse", "vae")).to(c.dtype).eval()
        b, size, steps = bs("outpaint"), 64 if small else 512, 1 if small else 25
        img = torch.rand(b, 3, size, size, device=c.device, dtype=c.dtype) * 2 - 1
        ctx = torch.randn(2 * b, 77, unet_cfg["cross_attention_dim"], device=c.device, dtype=c.dtype)

        def call():
            masked = vae.encode(img).latent_dist.mode() * 0.18215
            z = torch.randn_like(masked)
            mask = torch.ones_like(masked[:, :1])
            for t in range(steps):
                x = torch.cat([z, mask, masked], dim=1).repeat(2, 1, 1, 1)  # classifier-free guidance
                eps = unet(x, 999 - t * 40, encoder_hidden_states=ctx).sample
                c_, u_ = eps.chunk(2)
                z = z - 0.01 * (u_ + 7.5 * (c_ - u_))
            return vae.decode(z / 0.18215).sample

        with torch.inference_mode():
            c.finite("outpaint", call())
            seconds = c.timed(call, 1)
        record("outpaint", unet, b, seconds, input=[3, size, size], steps=steps, guidance="cfg (2x batch)")

    for name, fn in (("detect", detect), ("pose", pose), ("depth", depth), ("normal", normal),
                     ("aesthetic", aesthetic), ("caption", caption), ("outpaint", outpaint)):
        c.section(f"stage.{name}", fn)


# ----------------------------------------------------------------------------------------------
# training steps, sampling, checks


def _sd2_unet(c: Check):
    from diffusers import UNet2DConditionModel

    with c.building():
        return UNet2DConditionModel(**c.cfg("sd2-base", "unet"))


def _train_step_report(c: Check, model, step, batch: int, resolution: int) -> dict[str, Any]:
    torch = c.torch
    from torch.utils.flop_counter import FlopCounterMode

    if c.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    seconds = c.timed(step, 1 if c.reduced else 3, warmup=False)  # the counted step warmed up
    out = {"batch": batch, "resolution": resolution, "trainable_params": sum(p.numel() for p in model.parameters()
                                                                              if p.requires_grad),
           "step_s": round(seconds, 4), "samples_per_s": round(batch / seconds, 3),
           "tflop_per_step": round(flops / 1e12, 3)}  # fmt: skip
    if c.device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if c.peak:
            out["mfu"] = round(flops / seconds / (c.peak * 1e12), 4)
    return out


def train_stage1(c: Check) -> None:
    torch = c.torch
    from model.models.lsdm import LatentStructuralUNet
    from model.schedules import diffusion

    sd2 = _sd2_unet(c)
    with c.building():
        lsdm = LatentStructuralUNet.from_sd2(sd2)
    del sd2
    lsdm.train()
    opt = torch.optim.AdamW(lsdm.parameters(), lr=1e-5, weight_decay=0.01)
    ac = diffusion.alphas_cumprod(diffusion.training_scheduler()).to(c.device)
    b, res = (2, 64) if c.reduced else (8, 512)
    h = res // 8
    ctx_dim = lsdm.config.cross_attention_dim

    def step():
        z = {m: torch.randn(b, 4, h, h, device=c.device) for m in ("rgb", "depth", "normal", "pose")}
        t = torch.randint(0, 1000, (b,), device=c.device)
        ctx = torch.randn(b, 77, ctx_dim, device=c.device)
        noise = {m: torch.randn_like(z[m]) for m in ("rgb", "depth", "normal")}
        noisy = {m: diffusion.add_noise(ac, z[m], noise[m], t) for m in noise}
        with torch.autocast(c.device.type, dtype=c.dtype, enabled=c.device.type == "cuda"):
            out = lsdm(noisy["rgb"], noisy["depth"], noisy["normal"], z["pose"], t, ctx)
        loss = sum(((getattr(out, m).float() - diffusion.velocity(ac, z[m], noise[m], t).float()) ** 2).mean()
                   for m in noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    c.report["train_stage1"] = {**_train_step_report(c, lsdm, step, b, res), "precision": "fp32 weights, bf16 autocast"
                                if c.device.type == "cuda" else "fp32"}


def train_stage2(c: Check) -> None:
    torch = c.torch
    from diffusers import UNet2DConditionModel

    from model.models.refiner import StructureGuidedControlNet

    unet_cfg = c.cfg("sdxl-base", "unet")
    with c.building():
        unet = UNet2DConditionModel(**unet_cfg)
        refiner = StructureGuidedControlNet.from_unet(unet)
    unet.to(c.dtype).requires_grad_(False).eval()
    refiner.train()
    refiner.enable_gradient_checkpointing()  # as at full size, so the reduced run covers it
    unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW([p for p in refiner.parameters() if p.requires_grad], lr=1e-5)
    b, res = (1, 64) if c.reduced else (2, 1024)
    h = res // 8
    pooled = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]

    def step():
        z = torch.randn(b, 4, h, h, device=c.device)
        ctx = torch.randn(b, 77, unet_cfg["cross_attention_dim"], device=c.device)
        added = {"text_embeds": torch.randn(b, pooled, device=c.device),
                 "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * b, device=c.device, dtype=torch.float32)}
        cond = torch.rand(b, refiner.in_channels, res, res, device=c.device)
        t = torch.randint(0, 1000, (b,), device=c.device)
        noise = torch.randn_like(z)
        with torch.autocast(c.device.type, dtype=c.dtype, enabled=c.device.type == "cuda"):
            down, mid = refiner(z, t, ctx, cond, added)
            eps = unet(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid, return_dict=False)[0]  # fmt: skip
        loss = ((eps.float() - noise) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    c.report["train_stage2"] = {**_train_step_report(c, refiner, step, b, res),
                                "frozen_unet_params": params(unet),
                                "precision": "refiner fp32 weights, frozen UNet bf16, bf16 autocast, gradient checkpointing"
                                if c.device.type == "cuda" else "fp32, gradient checkpointing"}  # fmt: skip


def sample_stage1(c: Check) -> None:
    torch = c.torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from humanverse.testing.tiny_tokenizers import CLIP_BOS, CLIP_EOS, clip_bpe
    from model.models.lsdm import LatentStructuralUNet
    from model.models.sd2 import MODALITIES, FrozenParts, LatentStats
    from model.sampling.stage1 import Stage1Sampler

    bpe = clip_bpe()  # an offline tokenizer: token ids only select embedding rows
    tok = CLIPTokenizer(vocab=dict(bpe.vocab), merges=list(bpe.merges), bos_token=CLIP_BOS, eos_token=CLIP_EOS,
                        unk_token=CLIP_EOS, pad_token="!", model_max_length=77)  # fmt: skip
    with c.building():
        te = CLIPTextModel(CLIPTextConfig(**c.cfg("sd2-base", "text_encoder"))).to(c.dtype).eval()
        vae = AutoencoderKL(**c.cfg("sd-vae-ft-mse", "vae")).to(c.dtype).eval()
    sd2 = _sd2_unet(c)
    with c.building():
        lsdm = LatentStructuralUNet.from_sd2(sd2).to(c.dtype).eval()
    del sd2
    stats = LatentStats({m: [0.0] * 4 for m in MODALITIES}, {m: [1.0] * 4 for m in MODALITIES})
    sampler = Stage1Sampler(lsdm, FrozenParts(tok, te, vae), stats)
    b, res, steps = (1, 64, 1) if c.reduced else (4, 512, 50)
    poses = torch.rand(b, 3, res, res) * 2 - 1

    def call():
        return sampler(["a person standing"] * b, poses, steps=steps, guidance_scale=7.5, seed=0)

    out = call()
    seconds = c.timed(call, 1)
    c.report["checks"].setdefault("finite_outputs", {})["sample_stage1"] = all(
        bool(torch.isfinite(torch.as_tensor(a)).all()) for a in (out.depth_maps, out.normal_maps))
    c.report["sample_stage1"] = {"batch": b, "resolution": res, "steps": steps, "guidance": "cfg 7.5",
                                 "s_per_batch": round(seconds, 3), "s_per_image": round(seconds / b, 3)}


def lsdm_identity(c: Check) -> None:
    """HyperHuman §3.2: a fresh LSDM fed one latent in all three branches returns SD-2's output."""
    torch = c.torch
    from model.models.lsdm import LatentStructuralUNet

    sd2 = _sd2_unet(c).eval()  # fp32: the identity is exact up to float rounding
    with c.building():
        lsdm = LatentStructuralUNet.from_sd2(sd2).eval()
    b, h = (1, 8) if c.reduced else (2, 64)
    g = torch.Generator(device=c.device).manual_seed(0)
    z = torch.randn(b, 4, h, h, device=c.device, generator=g)
    pose = torch.randn(b, 4, h, h, device=c.device, generator=g)
    ctx = torch.randn(b, 77, lsdm.config.cross_attention_dim, device=c.device, generator=g)
    t = torch.tensor([500] * b, device=c.device)
    with torch.inference_mode():
        want = sd2(z, t, encoder_hidden_states=ctx).sample
        out = lsdm(z, z, z, pose, t, ctx)
        diff = max(float((getattr(out, m) - want).abs().max()) for m in ("rgb", "depth", "normal"))
        c.report["checks"]["lsdm_sd2_identity_max_abs_diff"] = diff
        c.report["checks"]["lsdm_sd2_identity_ok"] = diff < 1e-3
        c.report["checks"]["lsdm_params"] = params(lsdm)
        lsdm.to(c.dtype)
        low = lsdm(z.to(c.dtype), z.to(c.dtype), z.to(c.dtype), pose.to(c.dtype), t, ctx.to(c.dtype))
        c.finite(f"lsdm_{str(c.dtype).removeprefix('torch.')}", low.rgb, low.depth, low.normal)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="shrunk configs on the CPU (automatic without CUDA)")
    ap.add_argument("--budget-s", type=float, default=280.0, help="skip sections that would start after this")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    ap.add_argument("--only", help="comma-separated sections: stages,train1,train2,sample,identity")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    c = Check(args.reduced or not torch.cuda.is_available(), args.budget_s, args.peak_tflops)
    torch.manual_seed(0)
    wanted = set(args.only.split(",")) if args.only else {"stages", "train1", "train2", "sample", "identity"}
    if "identity" in wanted:
        c.section("checks.lsdm_identity", lambda: lsdm_identity(c))
    if "stages" in wanted:
        stage_models(c, preset_batches())
    if "train1" in wanted:
        c.section("train_stage1", lambda: train_stage1(c))
    if "sample" in wanted:
        c.section("sample_stage1", lambda: sample_stage1(c))
    if "train2" in wanted:
        c.section("train_stage2", lambda: train_stage2(c))
    c.report["wall_s"] = round(time.perf_counter() - c.t0, 1)
    print(json.dumps(c.report, indent=2))
    return c.report


if __name__ == "__main__":
    main()
