"""diffusers with KRAdapter on a tiny config-built UNet2DConditionModel: add_adapter, a training step,
set_adapters(weights=...), fuse_lora / unfuse_lora, and a save / load round trip (diffusers' save_lora_adapter,
kradapter.diffusers_io.load_adapter, since diffusers' own loader builds a LoraConfig from any adapter file)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from kradapter import KRAdapterConfig  # noqa: E402
from kradapter.diffusers_io import load_adapter  # noqa: E402
from kradapter.methods.kradapter import KRAdapterLayer  # noqa: E402

# attention projections (Linear; d_out < d_in for the cross-attention keys) and the resnets' Conv2d kernels: 4 attention
# blocks x 2 attentions x 4 projections + 8 resnets = 40 layers
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]


def tiny_unet(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 10]), torch.randn(2, 5, 12, generator=g)


def adapted(alpha: float = 0.5, **kwargs):
    unet = tiny_unet()
    unet.add_adapter(KRAdapterConfig(target_modules=TARGETS, init_weights=False, alpha=alpha, **kwargs))
    return unet


def out(unet):
    with torch.no_grad():
        return unet(*inputs()).sample


def test_add_adapter_and_a_training_step_train_only_the_adapter():
    unet = tiny_unet()
    unet.add_adapter(KRAdapterConfig(target_modules=TARGETS))  # U = 0: starts as the base model
    layers = [m for m in unet.modules() if isinstance(m, KRAdapterLayer)]
    assert len(layers) == 40 and any(isinstance(m.base_layer, torch.nn.Conv2d) for m in layers)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all("kradapter_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    x, t, enc = inputs()
    target = torch.randn_like(x)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(unet(x, t, enc).sample, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in unet.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n  # adapters moved, the base did not


def test_set_adapters_weights_scale_each_update():
    unet, half = adapted(alpha=0.5), adapted(alpha=0.25)  # same U, V (same seed): `half` has alpha halved
    unet.set_adapters(["default"], weights=[0.5])
    assert {m.update_scale["default"] for m in unet.modules() if isinstance(m, KRAdapterLayer)} == {0.5}
    torch.testing.assert_close(out(unet), out(half), rtol=1e-6, atol=1e-6)
    unet.set_adapters(["default"], weights=[0.0])
    unet.disable_adapters()
    base = out(unet)
    unet.enable_adapters()
    torch.testing.assert_close(out(unet), base, rtol=0, atol=0)  # weight 0: the base model exactly

    # two adapters at once, each with its weight
    unet.add_adapter(KRAdapterConfig(target_modules=TARGETS, init_weights=False, alpha=0.3), adapter_name="b")
    unet.set_adapters(["default", "b"], weights=[1.0, 0.25])
    layer = next(m for m in unet.modules() if isinstance(m, KRAdapterLayer))
    assert layer.update_scale == {"default": 1.0, "b": 0.25}
    assert layer.active_adapters == ["default", "b"]


def test_fuse_lora_with_a_scale_and_unfuse_lora():
    unet = adapted()
    weights = {n: p.detach().clone() for n, p in unet.named_parameters() if "base_layer" in n}
    unet.set_adapters(["default"], weights=[0.7])
    expected = out(unet)
    unet.set_adapters(["default"], weights=[1.0])
    unet.fuse_lora(lora_scale=0.7)  # diffusers multiplies the scale (scale_layer), then merges
    layers = [m for m in unet.modules() if isinstance(m, KRAdapterLayer)]
    assert all(m.merged for m in layers)
    torch.testing.assert_close(out(unet), expected, rtol=1e-5, atol=1e-5)
    unet.unfuse_lora()
    assert not any(m.merged for m in layers)
    for n, p in unet.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(out(unet), expected, rtol=1e-5, atol=1e-5)  # the scale stays, as for PEFT LoRA


def test_save_lora_adapter_and_load_adapter_round_trip(tmp_path):
    unet = adapted()
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, KRAdapterLayer):
                m.kradapter_U["default"].add_(0.1)  # trained-looking weights, not the seed's
    expected = out(unet)
    unet.save_lora_adapter(tmp_path)

    fresh = tiny_unet()
    base = out(fresh)
    load_adapter(fresh, tmp_path, adapter_name="style")
    assert set(fresh.peft_config) == {"style"} and fresh.peft_config["style"].alpha == 0.5
    torch.testing.assert_close(out(fresh), expected, rtol=0, atol=0)
    fresh.set_adapters(["style"], weights=[0.0])
    torch.testing.assert_close(out(fresh), base, rtol=0, atol=0)

    with pytest.raises(ValueError, match="'style' is already in use"):
        load_adapter(fresh, tmp_path, adapter_name="style")


def test_load_adapter_refuses_a_file_that_does_not_fit(tmp_path):
    adapted(k1=2).save_lora_adapter(tmp_path)  # k1 = 2: U and V of other shapes than the default 'sqrt'
    other = tiny_unet()
    other_out = out(other)
    other.add_adapter(KRAdapterConfig(target_modules=TARGETS), adapter_name="keep")
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        load_adapter(other, tmp_path / "missing")
    # the config in the file rebuilds k1 = 2, so it loads; a file edited to claim k1='sqrt' must be refused
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    file = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(str(file), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    settings = json.loads(header["lora_adapter_metadata"])
    settings["k1"] = "sqrt"
    header["lora_adapter_metadata"] = json.dumps(settings)
    save_file(tensors, str(file), metadata=header)
    with pytest.raises(ValueError, match="do not fit this model"):
        load_adapter(other, tmp_path, adapter_name="bad")
    assert set(other.peft_config) == {"keep"}
    assert all("bad" not in n for n, _ in other.named_parameters())
    torch.testing.assert_close(out(other), other_out, rtol=0, atol=0)  # "keep" starts at zero: still the base
