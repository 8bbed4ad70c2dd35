"""The hand generator's network: conv_in widened to 4 + 11 channels, the mask head on the decoder, c_p."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from PIL import Image

from handsynth.errors import HandsynthError
from handsynth.twostage.data.heatmaps import finger_heatmaps
from handsynth.twostage.handgen.model import (
    HandGenerator,
    MaskHead,
    build_mask_head,
    condition_tensor,
    mask_feature_module,
    widen_conv_in,
)

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json (the architecture keys).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


@pytest.fixture()
def tiny_unet(tiny_sd_path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()


def unet_inputs(batch: int = 2, latent: int = 32, text_dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, latent, latent, generator=g),
        torch.tensor([10, 700][:batch]),
        torch.randn(batch, 77, text_dim, generator=g),
    )


def test_widening_keeps_the_pretrained_weights_and_bias_and_with_zero_condition_the_output(
    tiny_unet, tmp_path
):
    original = copy.deepcopy(tiny_unet)
    old = original.conv_in
    widened = widen_conv_in(tiny_unet, generator=torch.Generator().manual_seed(0))
    new = widened.conv_in
    assert new.in_channels == 15 and widened.config.in_channels == 15
    assert torch.equal(new.weight[:, :4], old.weight)
    assert torch.equal(new.bias, old.bias)
    # the new channels: random, at 1% of the pretrained weights' RMS
    rms = old.weight.pow(2).mean().sqrt()
    added = new.weight[:, 4:]
    assert added.abs().min() > 0
    assert added.std().item() == pytest.approx(0.01 * rms.item(), rel=0.1)

    x, t, e = unet_inputs()
    with torch.no_grad():
        expected = original(x, t, encoder_hidden_states=e).sample
        zeros = widened(torch.cat([x, torch.zeros(2, 11, 32, 32)], 1), t, encoder_hidden_states=e).sample
        ones = widened(torch.cat([x, torch.ones(2, 11, 32, 32)], 1), t, encoder_hidden_states=e).sample
    assert (zeros - expected).abs().max().item() < 1e-6
    assert (ones - expected).abs().max().item() > 1e-4  # the new channels are wired in

    # plain diffusers round trip
    widened.save_pretrained(tmp_path / "unet")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.config.in_channels == 15
    assert torch.equal(loaded.conv_in.weight, new.weight) and torch.equal(loaded.conv_in.bias, new.bias)


def test_a_unet_that_does_not_take_4_channels_is_refused(tiny_unet):
    widen_conv_in(tiny_unet)
    with pytest.raises(HandsynthError, match="takes 15 input channels"):
        widen_conv_in(tiny_unet)


def test_the_mask_head_reads_the_last_upsampler_input_and_outputs_image_resolution_on_the_tiny_model(
    tiny_unet,
):
    unet = widen_conv_in(tiny_unet)
    head = build_mask_head(unet, vae_scale=2)  # the tiny VAE halves: 64 px images, 32² latents
    layers = list(head.layers)
    assert [type(m).__name__ for m in layers] == ["ConvTranspose2d", "SiLU", "ConvTranspose2d"]
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in layers[::2])
    model = HandGenerator(unet, head).eval()
    seen = []
    mask_feature_module(unet).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x, t, e = unet_inputs()
    condition = torch.rand(2, 11, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        noise_pred, mask = model(x, t, e, condition)
    assert noise_pred.shape == (2, 4, 32, 32)
    assert mask.shape == (2, 1, 64, 64)
    assert seen[0].shape == (2, 64, 16, 16)  # 64 channels at latent / 2
    with torch.no_grad():
        assert torch.equal(mask, torch.sigmoid(head.layers(seen[0])))
    assert 0 < mask.min() and mask.max() < 1


def test_the_mask_head_outputs_512_for_an_sd15_unet_on_the_meta_device():
    with init_empty_weights():
        unet = widen_conv_in(UNet2DConditionModel(**SD15_UNET))
        head = build_mask_head(unet, vae_scale=8)
    assert head.config.in_channels == 640 and head.config.num_layers == 4
    assert [m.out_channels for m in head.layers[::2]] == [320, 160, 80, 1]
    model = HandGenerator(unet, head).to("meta")
    for latent in (64, 96):  # 512 and 768 px
        noise_pred, mask = model(
            torch.zeros(1, 4, latent, latent, device="meta"),
            torch.tensor([500], device="meta"),
            torch.zeros(1, 77, 768, device="meta"),
            torch.zeros(1, 11, latent, latent, device="meta"),
        )
        assert noise_pred.shape == (1, 4, latent, latent)
        assert mask.shape == (1, 1, 8 * latent, 8 * latent)


def test_the_mask_head_saves_and_loads_with_diffusers(tmp_path):
    torch.manual_seed(0)
    head = MaskHead(in_channels=64, num_layers=2)
    head.save_pretrained(tmp_path / "mask_head")
    assert (tmp_path / "mask_head" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MaskHead.from_pretrained(tmp_path / "mask_head")
    assert loaded.config.in_channels == 64 and loaded.config.num_layers == 2
    feature = torch.randn(1, 64, 4, 4)
    assert torch.equal(loaded(feature), head(feature))


def test_the_condition_is_the_heatmaps_and_mask_resized_as_pil_bilinear():
    rng = np.random.default_rng(0)
    hands = np.zeros((42, 3), np.float32)
    hands[21:, :2] = rng.uniform(100, 400, (21, 2))
    hands[21:, 2] = 2
    maps = finger_heatmaps(hands, 512)
    mask = (rng.uniform(size=(512, 512)) > 0.5).astype(np.float32)
    got = condition_tensor(torch.from_numpy(maps)[None], torch.from_numpy(mask)[None, None], (64, 64))[0]
    expected = np.stack(
        [np.asarray(Image.fromarray(m).resize((64, 64), Image.Resampling.BILINEAR)) for m in [*maps, mask]]
    )
    assert got.shape == (11, 64, 64)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert got[:5].abs().max() == 0 and got[5:10].max() > 0.5  # the left hand is absent
    no_mask = condition_tensor(torch.from_numpy(maps)[None], None, (64, 64))[0]
    assert torch.equal(no_mask[:10], got[:10]) and no_mask[10].abs().max() == 0
