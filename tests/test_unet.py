"""The conditional UNet: shapes for every preset, the paper's size, and its conditioning."""

import pytest
import torch

from patronus import Patronus
from patronus.models import PatronusUNet, UNetConfig
from patronus.models.presets import PRESETS
from patronus.nn import PrototypeTokens


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_predicts_noise_of_image_shape(name):
    config = PRESETS[name].model
    model = Patronus(config).eval()
    x = torch.randn(1, *config.image_shape)
    with torch.no_grad():
        s = model.encode(x)
        eps = model(x, torch.tensor([config.diffusion.timesteps - 1]), s)
    assert s.shape == (1, config.num_prototypes)
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_paper_model_has_about_25_1_million_parameters():
    unet = Patronus(PRESETS["fmnist32"].model).unet
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(25.1e6, rel=0.005)


def test_mid_model_weights_ship_under_25_mb(tmp_path):
    """fmnist-mid is meant as a shipped model: its weight file, as save_model writes it, must
    fit the 25 MB the shipped files may take, and it must be larger than fmnist-cpu."""
    from patronus import save_model

    model = Patronus(PRESETS["fmnist-mid"].model)
    save_model(model, tmp_path / "mid")
    files = list((tmp_path / "mid").glob("*.safetensors"))
    assert files and all(f.stat().st_size < 25e6 for f in files)
    small = sum(p.numel() for p in Patronus(PRESETS["fmnist-cpu"].model).parameters())
    assert sum(p.numel() for p in model.parameters()) > 4 * small


@pytest.mark.parametrize("conditioning", ["bias", "scale_shift", "cross_attention"])
def test_conditioning_on_time_and_prototypes_changes_the_output(conditioning):
    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=16,
        channel_mults=(1, 2),
        attention=(False, True),
        dropout=0,
        prototype_conditioning=conditioning,
    )
    unet = PatronusUNet(config, image_channels=3, num_prototypes=5, timesteps=100).eval()
    for module in unet.modules():  # non-zero biases so every path matters
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.bias)
    x = torch.randn(2, 3, 8, 8)
    s = torch.randn(2, 5)
    t = torch.tensor([3, 3])
    base = unet(x, t, s)
    assert not torch.allclose(base, unet(x, torch.tensor([50, 50]), s))
    assert not torch.allclose(base, unet(x, t, s + 1))
    # samples do not interact (no batch-dependent layers)
    torch.testing.assert_close(unet(x[:1], t[:1], s[:1]), base[:1], atol=1e-5, rtol=1e-5)


def test_scale_shift_conditioning_scales_the_normalised_features():
    """GN(h) * (1 + scale) + shift after the second norm, in place of the paper's bias before it;
    the two layouts' weights do not load into each other."""
    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=8,
        channel_mults=(1,),
        attention=(False,),
        prototype_conditioning="scale_shift",
    )
    unet = PatronusUNet(config, image_channels=1, num_prototypes=3, timesteps=10).eval()
    block = unet.encoder_blocks[0]
    assert not hasattr(block, "prototype_bias")
    x, time_emb, proto_emb = torch.randn(2, 8, 6, 6), torch.randn(2, 32), torch.randn(2, 32)
    inner = (
        block.conv1(block.act(block.norm1(x)))
        + block.time_bias(block.act(time_emb))[..., None, None]
    )
    scale, shift = block.prototype_scale_shift(block.act(proto_emb)).chunk(2, dim=1)
    h = block.norm2(inner) * (1 + scale[..., None, None]) + shift[..., None, None]
    expected = block.conv2(block.act(h)) + x
    torch.testing.assert_close(block(x, time_emb, proto_emb), expected)
    paper = PatronusUNet(
        UNetConfig(base_channels=8, channel_mults=(1,), attention=(False,)), 1, 3, 10
    )
    with pytest.raises(RuntimeError, match="prototype_scale_shift"):
        paper.load_state_dict(unet.state_dict())


def test_prototype_tokens_change_only_the_token_of_the_changed_activation():
    torch.manual_seed(0)
    tokens = PrototypeTokens(num_prototypes=6, out_dim=16)
    s = torch.randn(3, 6)
    edited = s.clone()
    edited[:, 4] += 2.0
    before, after = tokens(s), tokens(edited)
    assert before.shape == (3, 6, 16)
    torch.testing.assert_close(after[:, [0, 1, 2, 3, 5]], before[:, [0, 1, 2, 3, 5]])
    assert (after[:, 4] - before[:, 4]).abs().amax() > 1e-3
    # prototypes with equal activations still get different tokens (their identities)
    same = tokens(torch.zeros(1, 6))
    assert (same[0, 0] - same[0, 1]).abs().amax() > 1e-3


def test_cross_attention_block_matches_a_float64_softmax_attention():
    """The positions (queries, from the group-normalised features) attend to the prototype
    tokens (keys and values of another width); the result is added to the block's output."""
    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=8,
        channel_mults=(1,),
        attention=(False,),
        attention_heads=2,
        prototype_conditioning="cross_attention",
    )
    unet = PatronusUNet(config, image_channels=1, num_prototypes=5, timesteps=10).double().eval()
    block = unet.encoder_blocks[0]
    assert not hasattr(block, "prototype_bias")
    x, time_emb = torch.randn(2, 8, 5, 7).double(), torch.randn(2, 32).double()
    tokens = torch.randn(2, 5, 32).double()
    inner = (
        block.conv1(block.act(block.norm1(x)))
        + block.time_bias(block.act(time_emb))[..., None, None]
    )
    h = block.conv2(block.act(block.norm2(inner))) + x
    attention = block.prototype_attention.attention
    queries = block.prototype_attention.norm(h).flatten(2).transpose(1, 2)  # (B, 35, 8)
    q = queries @ attention.q_proj_weight.T + attention.in_proj_bias[:8]
    k = tokens @ attention.k_proj_weight.T + attention.in_proj_bias[8:16]
    v = tokens @ attention.v_proj_weight.T + attention.in_proj_bias[16:]
    heads = []
    for head in range(2):
        part = slice(4 * head, 4 * head + 4)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / 2.0, dim=-1)
        heads.append(weights @ v[..., part])
    attended = attention.out_proj(torch.cat(heads, dim=-1))
    expected = h + attended.transpose(1, 2).reshape(h.shape)
    torch.testing.assert_close(block(x, time_emb, tokens), expected)
    paper = PatronusUNet(
        UNetConfig(base_channels=8, channel_mults=(1,), attention=(False,)), 1, 5, 10
    )
    with pytest.raises(RuntimeError, match="prototype_attention"):
        paper.load_state_dict(unet.state_dict())


def test_attention_levels_and_skips_are_wired_as_configured():
    config = UNetConfig(
        base_channels=8,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        attention=(False, True, False),
        dropout=0.0,
    )
    unet = PatronusUNet(config, image_channels=1, num_prototypes=3, timesteps=10)
    res_blocks = [b for b in unet.encoder_blocks if hasattr(b, "attention")]
    assert [b.attention is not None for b in res_blocks] == [False, False, True, True, False, False]
    assert unet.bottleneck_blocks[0].attention is not None
    assert unet.bottleneck_blocks[1].attention is None
    decoder_res = [b for b in unet.decoder_blocks if hasattr(b, "attention")]
    assert len(decoder_res) == 3 * 3
    # the first decoder block takes [h, skip] of the bottleneck width plus the last encoder output
    assert decoder_res[0].norm1.num_channels == 16 + 16


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="one flag per entry"):
        UNetConfig(channel_mults=(1, 2), attention=(False,))
    with pytest.raises(ValueError, match="divide by norm_groups"):
        UNetConfig(base_channels=12, channel_mults=(1,), attention=(False,))
    with pytest.raises(ValueError, match="prototype_conditioning"):
        UNetConfig(prototype_conditioning="film")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"attention_heads": 0}, "attention_heads must be >= 1"),  # was a ZeroDivisionError
        ({"num_res_blocks": 0}, "num_res_blocks must be >= 1"),  # built a UNet without blocks
        ({"base_channels": 0}, "base_channels must be >= 1"),
        ({"dropout": float("nan")}, r"dropout must be in \[0, 1\)"),
        ({"channel_mults": (), "attention": ()}, "a multiplier >= 1 per level"),
        ({"channel_mults": (1, 0), "attention": (False, False)}, "a multiplier >= 1 per level"),
    ],
)
def test_config_counts_and_rates_are_checked(fields, match):
    base = {"base_channels": 8, "channel_mults": (1,), "attention": (False,)}
    with pytest.raises(ValueError, match=match):
        UNetConfig(**{**base, **fields})


@pytest.mark.parametrize("field", ["channels", "kernel_sizes", "strides", "paddings"])
def test_encoder_config_sizes_are_checked(field):
    from patronus.models.config import EncoderConfig

    base = {"channels": (8,), "kernel_sizes": (3,), "strides": (1,), "paddings": (0,)}
    with pytest.raises(ValueError, match="must be >= 1 and paddings >= 0"):  # torch's errors later
        EncoderConfig(**{**base, field: (-1,)})
