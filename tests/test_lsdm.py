"""LatentStructuralUNet (HyperHuman §3.2): SD-2 initialisation, the SD-2 identity,
branch/trunk wiring, fusion, gradients, serialisation. Real diffusers classes at tiny size."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from safetensors.torch import load_file

from model.models.lsdm import (
    LatentStructuralUNet,
    LSDMOutput,
    fuse_branch_features,
    make_tiny_lsdm,
    match_statistics,
)

# Like humanverse.testing.tiny_models._sd2_unet (the zoo's tiny SD-2), and a 3-level variant shaped like
# SD-2 itself (cross-attention levels, then a plain last down block / first up block).
TINY_SD2 = {
    "two_level": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        layers_per_block=2,
    ),
    "three_level": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4, 4),
        layers_per_block=1,
    ),
}
TEXT_DIM = 32


def tiny_sd2_unet(name: str, seed: int = 0, **overrides) -> UNet2DConditionModel:
    config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=TEXT_DIM,
        use_linear_projection=True,
        norm_num_groups=32,
        **TINY_SD2[name],
    )
    config.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster and does not spin against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(TINY_SD2))
def pair(request):
    """(source SD-2 UNet, freshly converted LSDM), both in eval mode."""
    unet = tiny_sd2_unet(request.param)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        lsdm = LatentStructuralUNet.from_sd2(unet).eval()
    return unet, lsdm


def inputs(seed: int, batch: int = 2, size: tuple[int, int] = (8, 8)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "latent": torch.randn(batch, 4, *size, generator=g),
        "pose": torch.randn(batch, 4, *size, generator=g),
        "timestep": torch.tensor([17, 731][:batch]),
        "text": torch.randn(batch, 5, TEXT_DIM, generator=g),
        "added_cond": torch.tensor([[512.0, 384.0, 0.0, 64.0], [1024.0, 768.0, 32.0, 0.0]][:batch]),
    }


def assert_same_state(module: torch.nn.Module, source: torch.nn.Module) -> None:
    mine, theirs = module.state_dict(), source.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key


# -- initialisation ---------------------------------------------------------------------------------


def test_every_branch_starts_as_sd2_and_trunk_is_sd2(pair):
    unet, lsdm = pair
    assert len(lsdm.branches) == 3
    for branch in lsdm.branches:
        assert torch.equal(branch.conv_in.weight[:, :4], unet.conv_in.weight)
        assert torch.equal(branch.conv_in.weight[:, 4:], torch.zeros_like(branch.conv_in.weight[:, 4:]))
        assert torch.equal(branch.conv_in.bias, unet.conv_in.bias)
        assert_same_state(branch.down_block, unet.down_blocks[0])
        assert_same_state(branch.up_block, unet.up_blocks[-1])
        assert_same_state(branch.conv_norm_out, unet.conv_norm_out)
        assert_same_state(branch.conv_out, unet.conv_out)
    for i, block in enumerate(lsdm.shared_down_blocks):
        assert_same_state(block, unet.down_blocks[i + 1])
    for i, block in enumerate(lsdm.shared_up_blocks):
        assert_same_state(block, unet.up_blocks[i])
    assert_same_state(lsdm.mid_block, unet.mid_block)
    assert_same_state(lsdm.time_embedding, unet.time_embedding)
    assert not lsdm.add_embedding.linear_2.weight.any() and not lsdm.add_embedding.linear_2.bias.any()

    # Copies, not ties: three independent parameter sets.
    ptrs = {b.down_block.resnets[0].conv1.weight.data_ptr() for b in lsdm.branches}
    assert len(ptrs) == 3
    # Parameter count: SD-2 + 2 extra branches + pose channels of all three conv_in + micro-cond.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    pose_params = 4 * unet.conv_in.out_channels * 9
    assert count(lsdm) == count(unet) + 2 * (count(lsdm.branches[0]) - pose_params) + 3 * pose_params + count(
        lsdm.add_embedding
    )


def test_config_round_trips_sd2_structure(pair):
    unet, lsdm = pair
    for key in ("block_out_channels", "down_block_types", "up_block_types", "attention_head_dim"):
        assert list(lsdm.config[key]) == list(unet.config[key]), key
    for key in ("sample_size", "layers_per_block", "cross_attention_dim", "use_linear_projection"):
        assert lsdm.config[key] == unet.config[key], key
    assert lsdm.config.pose_channels == 4 and lsdm.config.num_branches == 3
    assert lsdm.config.addition_time_embed_dim == 256


# -- the SD-2 identity -----------------------------------------------------------------------------


@pytest.mark.parametrize("pose_kind", ["zeros", "random"])
@pytest.mark.parametrize("cond_kind", ["none", "sizes"])
@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_fresh_lsdm_reproduces_sd2(pair, pose_kind, cond_kind, size):
    """Same noisy latent in all three branches -> each branch gives SD-2's output (any pose, any
    micro-conditioning, since both start at zero weight). (6, 10) is not a multiple of 4, which
    exercises the forwarded upsample sizes of the 3-level UNet."""
    unet, lsdm = pair
    x = inputs(0, size=size)
    pose = torch.zeros_like(x["pose"]) if pose_kind == "zeros" else x["pose"]
    added_cond = None if cond_kind == "none" else x["added_cond"]
    with torch.no_grad():
        expected = unet(x["latent"], x["timestep"], x["text"]).sample  # (B, 4, h, w)
        out = lsdm(x["latent"], x["latent"], x["latent"], pose, x["timestep"], x["text"], added_cond=added_cond)
    assert isinstance(out, LSDMOutput)
    for name in ("rgb", "depth", "normal"):
        assert getattr(out, name).shape == expected.shape
        torch.testing.assert_close(getattr(out, name), expected, atol=1e-5, rtol=1e-5)


def test_scalar_timestep_and_tuple_output(pair):
    unet, lsdm = pair
    x = inputs(1)
    with torch.no_grad():
        expected = unet(x["latent"], 250, x["text"]).sample
        rgb, depth, normal = lsdm(
            x["latent"], x["latent"], x["latent"], x["pose"], 250, x["text"], return_dict=False
        )
    torch.testing.assert_close(rgb, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normal, expected, atol=1e-5, rtol=1e-5)


# -- wiring: fusion and skip connections ------------------------------------------------------------


def test_trunk_gets_fused_feature_and_branches_get_their_own_skips(pair):
    """Hooks check the residual bookkeeping: the shared trunk starts from the fused feature, the
    last shared up block's final skip is that fused feature, and each branch's last up block gets
    its own conv_in output and first-down-block resnet outputs."""
    _, lsdm = pair
    seen: dict[str, object] = {}
    hooks = []
    for k, branch in enumerate(lsdm.branches):
        hooks.append(branch.conv_in.register_forward_hook(lambda m, a, out, k=k: seen.__setitem__(f"conv_in{k}", out)))
        hooks.append(
            branch.down_block.register_forward_hook(lambda m, a, kw, out, k=k: seen.__setitem__(f"down{k}", out),
                                                    with_kwargs=True)
        )
        hooks.append(
            branch.up_block.register_forward_pre_hook(
                lambda m, a, kw, k=k: seen.__setitem__(f"up{k}", kw["res_hidden_states_tuple"]), with_kwargs=True
            )
        )
    hooks.append(
        lsdm.shared_down_blocks[0].register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("trunk_in", kw["hidden_states"]), with_kwargs=True
        )
    )
    hooks.append(
        lsdm.shared_up_blocks[-1].register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("last_shared_skips", kw["res_hidden_states_tuple"]), with_kwargs=True
        )
    )
    x = inputs(2)
    g = torch.Generator().manual_seed(3)
    rgb, depth, normal = (torch.randn(2, 4, 8, 8, generator=g) * s for s in (1.0, 3.0, 0.5))
    try:
        with torch.no_grad():
            lsdm(rgb, depth, normal, x["pose"], x["timestep"], x["text"])
    finally:
        for h in hooks:
            h.remove()

    fused = fuse_branch_features([seen[f"down{k}"][0] for k in range(3)])
    torch.testing.assert_close(seen["trunk_in"], fused)
    torch.testing.assert_close(seen["last_shared_skips"][0], fused)
    layers = len(lsdm.branches[0].down_block.resnets)
    for k in range(3):
        hidden, res = seen[f"down{k}"]
        skips = seen[f"up{k}"]
        assert len(skips) == layers + 1 == len(lsdm.branches[k].up_block.resnets)
        assert skips[0] is seen[f"conv_in{k}"]
        for got, want in zip(skips[1:], res[:-1]):
            assert got is want
        assert res[-1] is hidden  # the downsampler output: replaced by the fused feature in the trunk


def test_match_statistics_maps_to_reference_mean_and_std():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 4, 4, generator=g) * torch.tensor([0.1, 5.0, 2.0]).view(3, 1, 1, 1) + torch.tensor(
        [3.0, -2.0, 0.0]
    ).view(3, 1, 1, 1)
    ref = torch.randn(3, 8, 4, 4, generator=g) * torch.tensor([2.0, 0.3, 1.0]).view(3, 1, 1, 1) + torch.tensor(
        [-1.0, 4.0, 0.5]
    ).view(3, 1, 1, 1)
    out = match_statistics(x, ref)
    dims = (1, 2, 3)
    torch.testing.assert_close(out.mean(dims), ref.mean(dims), atol=1e-5, rtol=1e-5)  # per sample
    torch.testing.assert_close(out.std(dims, correction=0), ref.std(dims, correction=0), atol=1e-4, rtol=1e-4)
    # Shape preserved: an affine map of x per sample (correlation 1).
    for b in range(3):
        assert torch.corrcoef(torch.stack([out[b].flatten(), x[b].flatten()]))[0, 1] > 0.9999
    torch.testing.assert_close(match_statistics(ref, ref), ref)
    assert torch.isfinite(match_statistics(torch.ones_like(ref), ref)).all()  # constant input: no 0/0
    assert match_statistics(x.half(), ref).dtype == torch.float16
    with pytest.raises(ValueError, match="equal shapes"):
        match_statistics(x, ref[:2])


def test_fusion_averages_rgb_and_normalised_depth_normal():
    g = torch.Generator().manual_seed(1)
    rgb, depth, normal = (torch.randn(2, 8, 4, 4, generator=g) for _ in range(3))
    fused = fuse_branch_features([rgb, depth, normal])
    torch.testing.assert_close(fused, (rgb + match_statistics(depth, rgb) + match_statistics(normal, rgb)) / 3)
    # Depth/normal enter only through their normalised form: rescaling them changes nothing.
    rescaled = fuse_branch_features([rgb, 7 * depth - 3, 0.5 * normal + 2])
    torch.testing.assert_close(rescaled, fused, atol=1e-5, rtol=1e-4)
    # RGB sets the statistics: the fused feature moves with it.
    assert not torch.allclose(fuse_branch_features([2 * rgb, depth, normal]), fused)
    torch.testing.assert_close(fuse_branch_features([rgb, rgb, rgb]), rgb)


# -- training behaviour ----------------------------------------------------------------------------


def _loss_and_outputs(lsdm, x, g_seed: int = 5):
    g = torch.Generator().manual_seed(g_seed)
    latents = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)]
    targets = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)]
    out = lsdm(*latents, x["pose"], x["timestep"], x["text"], added_cond=x["added_cond"])
    loss = sum(torch.nn.functional.mse_loss(o, t) for o, t in zip(out.to_tuple(), targets))
    return loss, out


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def test_different_inputs_train_every_branch_and_the_trunk(pair):
    _, fresh = pair
    lsdm = copy.deepcopy(fresh).train()
    x = inputs(4)
    loss, out = _loss_and_outputs(lsdm, x)
    assert not torch.allclose(out.rgb, out.depth) and not torch.allclose(out.depth, out.normal)
    loss.backward()
    for branch in lsdm.branches:
        grad = branch.conv_in.weight.grad  # (C0, 4 + 4, 3, 3)
        assert grad[:, :4].abs().sum() > 0
        assert grad[:, 4:].abs().sum() > 0  # pose channels learn although they start at zero
        for part in (branch.down_block, branch.up_block, branch.conv_norm_out, branch.conv_out):
            assert _grad_norm(part) > 0
    for part in (lsdm.shared_down_blocks, lsdm.mid_block, lsdm.shared_up_blocks, lsdm.time_embedding):
        assert _grad_norm(part) > 0
    assert lsdm.add_embedding.linear_2.weight.grad.abs().sum() > 0  # micro-conditioning starts learning

    # One step later the branches are no longer copies: the same input gives three outputs.
    torch.optim.SGD(lsdm.parameters(), lr=1e-2).step()
    with torch.no_grad():
        same = lsdm(*(inputs(6)["latent"],) * 3, x["pose"], x["timestep"], x["text"])
    assert not torch.allclose(same.rgb, same.depth) and not torch.allclose(same.rgb, same.normal)


def test_zero_pose_gives_zero_pose_channel_grads(pair):
    _, fresh = pair
    lsdm = copy.deepcopy(fresh).train()
    x = inputs(4)
    x["pose"] = torch.zeros_like(x["pose"])
    loss, _ = _loss_and_outputs(lsdm, x)
    loss.backward()
    for branch in lsdm.branches:
        assert not branch.conv_in.weight.grad[:, 4:].any()
        assert branch.conv_in.weight.grad[:, :4].abs().sum() > 0


def test_gradient_checkpointing_gives_same_loss_and_grads(pair):
    _, fresh = pair
    plain = copy.deepcopy(fresh).train()
    ckpt = copy.deepcopy(fresh).train()
    ckpt.enable_gradient_checkpointing()
    assert ckpt.is_gradient_checkpointing and ckpt.branches[0].down_block.gradient_checkpointing
    assert ckpt.mid_block.gradient_checkpointing and ckpt.shared_up_blocks[0].gradient_checkpointing
    x = inputs(7)
    losses = []
    for model in (plain, ckpt):
        loss, _ = _loss_and_outputs(model, x)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        if p.grad is None:
            assert grads[name].grad is None, name
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-5, msg=name)


def test_attention_processors_are_settable(pair):
    unet, fresh = pair
    lsdm = copy.deepcopy(fresh)
    per_branch = len([k for k in lsdm.attn_processors if k.startswith("branches.0.")])
    assert len(lsdm.attn_processors) == len(unet.attn_processors) + 2 * per_branch
    x = inputs(8)
    args = (x["latent"], x["latent"], x["latent"], x["pose"], x["timestep"], x["text"])
    with torch.no_grad():
        before = lsdm(*args).rgb
        lsdm.set_attn_processor(AttnProcessor())
        after = lsdm(*args).rgb
    assert all(isinstance(p, AttnProcessor) for p in lsdm.attn_processors.values())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


# -- serialisation and the tiny builder --------------------------------------------------------------


def test_save_pretrained_round_trip(pair, tmp_path):
    _, lsdm = pair
    lsdm.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = LatentStructuralUNet.from_pretrained(tmp_path).eval()
    public = lambda config: {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k[0] != "_"}  # noqa: E731
    assert public(loaded.config) == public(lsdm.config)
    x = inputs(9)
    g = torch.Generator().manual_seed(9)
    latents = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)]
    with torch.no_grad():
        a = lsdm(*latents, x["pose"], x["timestep"], x["text"], added_cond=x["added_cond"])
        b = loaded(*latents, x["pose"], x["timestep"], x["text"], added_cond=x["added_cond"])
    for name in ("rgb", "depth", "normal"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_make_tiny_lsdm_is_deterministic_and_matches_the_tiny_sd2(tmp_path):
    from humanverse.testing.tiny_models import build_sd2_base

    make_tiny_lsdm(tmp_path / "a", seed=0)
    make_tiny_lsdm(tmp_path / "b", seed=0)
    make_tiny_lsdm(tmp_path / "c", seed=1)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    weights_a = load_file(tmp_path / "a" / "diffusion_pytorch_model.safetensors")
    weights_c = load_file(tmp_path / "c" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(weights_a["mid_block.resnets.0.conv1.weight"], weights_c["mid_block.resnets.0.conv1.weight"])

    build_sd2_base(tmp_path / "sd2", 0)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "sd2" / "unet").eval()
    lsdm = LatentStructuralUNet.from_pretrained(tmp_path / "a").eval()
    x = inputs(10)
    with torch.no_grad():
        expected = unet(x["latent"], x["timestep"], x["text"]).sample
        out = lsdm(x["latent"], x["latent"], x["latent"], x["pose"], x["timestep"], x["text"])
    torch.testing.assert_close(out.rgb, expected, atol=1e-5, rtol=1e-5)


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(in_channels=9), "4 latent input and output channels"),
        (dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
        (dict(addition_embed_type="text", encoder_hid_dim=TEXT_DIM), "addition_embed_type='text'"),
        (dict(time_cond_proj_dim=8), "time_cond_proj_dim=8"),
        (
            dict(
                block_out_channels=(32,),
                down_block_types=("CrossAttnDownBlock2D",),
                up_block_types=("CrossAttnUpBlock2D",),
                attention_head_dim=(2,),
            ),
            "at least 2 levels",
        ),
    ],
)
def test_from_sd2_refuses_other_unets(overrides, message):
    unet = tiny_sd2_unet("two_level", **overrides)
    with pytest.raises(ValueError, match=message):
        LatentStructuralUNet.from_sd2(unet)


def test_from_sd2_refuses_a_non_unet():
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        LatentStructuralUNet.from_sd2(torch.nn.Linear(2, 2))


def test_constructor_and_forward_validate(pair):
    with pytest.raises(ValueError, match="num_branches must be 1"):
        LatentStructuralUNet(num_branches=4)
    with pytest.raises(ValueError, match="expert_depth must be one of"):
        LatentStructuralUNet(expert_depth="three")
    with pytest.raises(ValueError, match="not supported"):
        LatentStructuralUNet(down_block_types=("AttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"))
    _, lsdm = pair
    x = inputs(11)
    with pytest.raises(ValueError, match="pose must have shape"):
        lsdm(x["latent"], x["latent"], x["latent"], x["pose"][:, :3], x["timestep"], x["text"])
    with pytest.raises(ValueError, match="depth has shape"):
        lsdm(x["latent"], x["latent"][:1], x["latent"], x["pose"], x["timestep"], x["text"])
    with pytest.raises(ValueError, match="added_cond must have shape"):
        lsdm(x["latent"], x["latent"], x["latent"], x["pose"], x["timestep"], x["text"], added_cond=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="timestep"):
        lsdm(x["latent"], x["latent"], x["latent"], x["pose"], torch.tensor([1, 2, 3]), x["text"])


# -- the Table-2 ablation knobs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd2_for_ablations():
    """3 levels with 2 layers per block: every expert depth ("half" splits 2 layers, "two" needs 3 levels)."""
    return tiny_sd2_unet("three_level", layers_per_block=2)


@pytest.mark.parametrize("num_branches", [1, 2, 3])
@pytest.mark.parametrize("expert_depth", ["half", "one", "two"])
def test_every_ablation_config_keeps_the_sd2_identity(sd2_for_ablations, expert_depth, num_branches, tmp_path):
    """HyperHuman Table 2: expert-branch depth (half a block, one, two down/up blocks) x modalities
    (RGB, RGB + depth, RGB + depth + normal). Each builds from SD-2 and, fed one latent in every
    branch, reproduces SD-2 (also at a size that forces forwarded upsample sizes); the config
    round-trips through save/load."""
    unet = sd2_for_ablations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        lsdm = LatentStructuralUNet.from_sd2(unet, expert_depth=expert_depth, num_branches=num_branches).eval()
    assert lsdm.modalities == ("rgb", "depth", "normal")[:num_branches]
    owned_down = {"half": 0, "one": 1, "two": 2}[expert_depth]
    for branch in lsdm.branches:
        assert len(branch.more_down_blocks) == max(owned_down - 1, 0) == len(branch.more_up_blocks)
    if expert_depth == "half":  # one of the two level-0 layers in the branch, the other in the trunk
        assert len(lsdm.branches[0].down_block.resnets) == 1 and len(lsdm.shared_down_blocks[0].resnets) == 1
        assert len(lsdm.branches[0].up_block.resnets) == 1 and len(lsdm.shared_up_blocks[-1].resnets) == 2
    for size in ((8, 8), (6, 10)):
        x = inputs(3, size=size)
        latents = [x["latent"]] * num_branches + [None] * (3 - num_branches)
        with torch.no_grad():
            expected = unet(x["latent"], x["timestep"], x["text"]).sample
            out = lsdm(*latents, x["pose"], x["timestep"], x["text"], added_cond=x["added_cond"])
        for name in ("rgb", "depth", "normal"):
            if name in lsdm.modalities:
                torch.testing.assert_close(getattr(out, name), expected, atol=1e-5, rtol=1e-5)
            else:
                assert getattr(out, name) is None
    lsdm.save_pretrained(tmp_path / "m")
    back = LatentStructuralUNet.from_pretrained(tmp_path / "m")
    assert back.config.expert_depth == expert_depth and back.config.num_branches == num_branches
    assert_same_state(back, lsdm)


def test_ablation_configs_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match="at least 3 levels"):
        LatentStructuralUNet.from_sd2(tiny_sd2_unet("two_level"), expert_depth="two")
    with pytest.raises(ValueError, match="layers_per_block >= 2"):
        LatentStructuralUNet.from_sd2(tiny_sd2_unet("three_level"), expert_depth="half")
    lsdm = LatentStructuralUNet.from_sd2(tiny_sd2_unet("two_level"), num_branches=2)
    x = inputs(0)
    with pytest.raises(ValueError, match="denoises rgb, depth"):
        lsdm(x["latent"], x["latent"], x["latent"], x["pose"], x["timestep"], x["text"])
