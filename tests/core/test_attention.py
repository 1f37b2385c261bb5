"""Head taps of third-party attentions (METHODS.md §2, §7): the swapped nn.MultiheadAttention
equals the original; torchvision and timm ViTs keep their weights and outputs, gain head taps,
import and export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from model_defs._blocks import HeadOutputs
from snptool.analysis.layers import discover_layers
from snptool.config import ExportConfig, ImportConfig, InputSpec
from snptool.core.architectures import build_model, cut_after
from snptool.core.attention import HeadedMultiheadAttention, expose_heads
from snptool.core.checkpoint import read_checkpoint
from snptool.core.taps import TapRecorder, resolve_taps
from snptool.deploy.export import run_export
from snptool.training.importer import run_import
from snptool.training.train import TrainResult
from tests.conftest import invoke

Arch = tuple[str, dict]
SPEC = InputSpec()  # 3×32×32


def vit_block(model: nn.Module, index: int) -> nn.Module:
    return model.encoder.layers[index]


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def original_vit(tiny_vit: Arch) -> nn.Module:
    """The tiny ViT as torchvision builds it, with torch's own nn.MultiheadAttention."""
    torch.manual_seed(0)
    return torchvision.models.vision_transformer.VisionTransformer(
        **tiny_vit[1], num_classes=10
    ).eval()


# --- HeadedMultiheadAttention ≡ nn.MultiheadAttention -------------------------------------------

VARIANTS = {
    "torchvision": {"batch_first": True},
    "sequence_first": {},
    "no_bias": {"bias": False, "batch_first": True},
    "bias_kv_zero_attn": {"add_bias_kv": True, "add_zero_attn": True},
    "separate_qkv": {"kdim": 6, "vdim": 5, "batch_first": True},
}


def attention_inputs(module: nn.MultiheadAttention, batch: int = 3, length: int = 5, keys: int = 4):
    generator = torch.Generator().manual_seed(2)
    shapes = [(batch, length, 8), (batch, keys, module.kdim), (batch, keys, module.vdim)]
    q, k, v = (torch.randn(s, generator=generator) for s in shapes)
    if not module.batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    padding = torch.zeros(batch, keys, dtype=torch.bool)
    padding[0, -1] = True
    masks = [
        {},
        {"key_padding_mask": padding},
        {"attn_mask": torch.ones(length, keys, dtype=torch.bool).triu(1)},
        {"attn_mask": torch.randn((batch * 2, length, keys), generator=generator)},
        {"attn_mask": torch.ones(length, keys).triu(1) * -1e4, "key_padding_mask": -1e4 * padding},
    ]
    return (q, k, v), masks


@pytest.mark.parametrize("variant", VARIANTS)
def test_headed_attention_equals_nn_multihead_attention(variant: str) -> None:
    torch.manual_seed(0)
    original = nn.MultiheadAttention(8, 2, **VARIANTS[variant]).eval()
    headed = HeadedMultiheadAttention.from_module(original)
    assert list(headed.state_dict()) == list(original.state_dict())
    for name, parameter in original.named_parameters():
        assert headed.get_parameter(name) is parameter  # shared, not copied
    assert isinstance(headed.heads, HeadOutputs) and headed.heads.num_heads == 2
    (q, k, v), masks = attention_inputs(original)
    for mask in masks:
        for need_weights, average in [(False, True), (True, True), (True, False)]:
            options = {"need_weights": need_weights, "average_attn_weights": average, **mask}
            expected, expected_weights = original(q, k, v, **options)
            found, weights = headed(q, k, v, **options)
            torch.testing.assert_close(found, expected, rtol=0, atol=1e-5)
            if need_weights:
                torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-5)
            else:
                assert weights is None and expected_weights is None


def test_unbatched_input_and_training_mode() -> None:
    torch.manual_seed(0)
    original = nn.MultiheadAttention(8, 2, batch_first=True)
    headed = HeadedMultiheadAttention.from_module(original)
    assert headed.training
    x = torch.randn(5, 8)  # (L, E): no batch dimension
    expected, expected_weights = original(x, x, x)
    found, weights = headed(x, x, x)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-5)
    found.sum().backward()  # gradients reach the shared parameters
    assert original.in_proj_weight.grad is not None and original.out_proj.weight.grad is not None


class TinyTransformer(nn.Module):
    """Patches → nn.TransformerEncoder (2 layers, 2 heads) → mean of the tokens → 3 labels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, T, D)
        return self.head(self.encoder(tokens).mean(1))


def test_tapping_a_transformer_encoder_layer_leaves_its_fused_fast_path() -> None:
    # In eval without grad, nn.TransformerEncoderLayer calls a fused kernel with self_attn's
    # weights; a hook anywhere inside the layer (the head tap) makes it run the modules.
    torch.manual_seed(0)
    original, model = TinyTransformer().eval(), TinyTransformer()
    model.load_state_dict(original.state_dict())
    assert expose_heads(model) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    model.eval()
    recorder = TapRecorder(model, ["encoder.layers.1.self_attn.heads:head"], SPEC)
    with torch.no_grad():
        outputs, logits = recorder.run(images(), full=True)
        torch.testing.assert_close(logits, original(images()), rtol=0, atol=1e-5)
    assert outputs["encoder.layers.1.self_attn.heads:head"].shape == (4, 2, 16 * 8)


# --- torchvision ViT ----------------------------------------------------------------------------


def test_a_built_vit_gets_head_taps_and_keeps_its_outputs(tiny_vit: Arch) -> None:
    original = original_vit(tiny_vit)
    model, _ = build_model(*tiny_vit, num_classes=10)
    attentions = [vit_block(model, i).self_attention for i in range(2)]
    assert all(type(a) is HeadedMultiheadAttention for a in attentions)
    assert list(model.state_dict()) == list(original.state_dict())
    model.load_state_dict(original.state_dict())  # weights saved before the swap, strictly
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()), original(images()), rtol=0, atol=1e-5)
    assert expose_heads(model) == []  # nothing left to swap


def test_the_head_tap_holds_each_heads_output_token_major(tiny_vit: Arch) -> None:
    torch.manual_seed(0)
    model, _ = build_model(*tiny_vit, num_classes=10)
    model.eval()
    block = "encoder.layers.encoder_layer_1"
    recorder = TapRecorder(model, [f"{block}.ln_1", f"{block}.self_attention.heads:head"], SPEC)
    (head,) = [t for t in recorder.taps if t.unit == "head"]
    assert (head.name, head.units, head.positions) == (f"{block}.self_attention.heads:head", 2, 136)
    outputs, _ = recorder.run(images())
    tokens = outputs[f"{block}.ln_1"].transpose(1, 2)  # feature view (N, D, T) → (N, T, D)
    attention = vit_block(model, 1).self_attention
    q, k, v = (tokens @ attention.in_proj_weight.T + attention.in_proj_bias).chunk(3, dim=-1)
    for h in range(2):
        columns = slice(8 * h, 8 * h + 8)  # head h: features h·d … h·d + d − 1
        scores = q[..., columns] @ k[..., columns].transpose(1, 2) / math.sqrt(8)
        expected = torch.softmax(scores, dim=-1) @ v[..., columns]  # (N, T, d)
        found = outputs[head.name][:, h, :]  # (N, T·d), p = t·d + j
        torch.testing.assert_close(found, expected.reshape(4, -1), rtol=0, atol=1e-5)


def test_torch_saved_torchvision_weights_import_into_the_swapped_vit(
    tiny_vit: Arch, tmp_path: Path
) -> None:
    original = original_vit(tiny_vit)
    weights = tmp_path / "vit.pth"
    torch.save(original.state_dict(), weights)
    config = ImportConfig(arch=tiny_vit[0], arch_kwargs=tiny_vit[1], num_classes=10)
    result = run_import(weights, tmp_path / "vit.safetensors", config)
    assert (result.num_classes, result.missing, result.unexpected) == (10, [], [])
    model = read_checkpoint(tmp_path / "vit.safetensors").model
    assert type(vit_block(model, 0).self_attention) is HeadedMultiheadAttention
    with torch.no_grad():
        torch.testing.assert_close(model(images()), original(images()), rtol=0, atol=1e-5)


def test_layers_lists_the_head_and_the_feature_reading(trained_vit: TrainResult) -> None:
    result = invoke("layers", trained_vit.output, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    heads = [row for row in rows if row["module"] == "HeadOutputs"]
    assert [(r["layer"], r["unit"], r["units"], r["positions"], r["shape"]) for r in heads] == [
        (f"encoder.layers.encoder_layer_{i}.self_attention.heads", unit, units, positions, [17, 16])
        for i in range(2)
        for unit, units, positions in [("feature", 16, 17), ("head", 2, 17 * 8)]
    ]
    assert sum(row["unit"] == "head" for row in rows) == 2  # only HeadOutputs read as heads
    # every row names the exact --layer string that reads its units
    checkpoint = read_checkpoint(trained_vit.output)
    taps = resolve_taps(checkpoint.model, [row["tap"] for row in rows], checkpoint.input_spec)
    assert [(t.name, t.layer, t.unit) for t in taps] == [
        (r["tap"], r["layer"], r["unit"]) for r in rows
    ]
    assert heads[1]["tap"] == heads[1]["layer"] + ":head"


def test_the_trained_vit_exports_to_onnx(trained_vit: TrainResult, tmp_path: Path) -> None:
    output = tmp_path / "vit.onnx"
    result = run_export(trained_vit.output, output, ExportConfig(parity_samples=16))
    assert output.is_file()
    assert result.max_abs_diff <= 1e-4 and result.argmax_agreement == 1.0


def test_cutting_a_vit_traces_the_attention_as_a_leaf(tiny_vit: Arch) -> None:
    torch.manual_seed(0)
    model, _ = build_model(*tiny_vit, num_classes=10)
    model.eval()
    body = cut_after(model, "encoder.layers.encoder_layer_0.ln_2")
    outputs, _ = TapRecorder(model, ["encoder.layers.encoder_layer_0.ln_2"], SPEC).run(images())
    with torch.no_grad():
        torch.testing.assert_close(
            body(images()).transpose(1, 2), outputs["encoder.layers.encoder_layer_0.ln_2"]
        )


def test_vit_b_16_has_twelve_head_taps() -> None:
    model, _ = build_model("torchvision:vit_b_16")
    assert sum(type(m) is HeadedMultiheadAttention for m in model.modules()) == 12
    assert not any(type(m) is nn.MultiheadAttention for m in model.modules())
    layers = discover_layers(model, InputSpec(height=224, width=224))
    heads = [(x.layer, x.units, x.positions) for x in layers if x.unit == "head"]
    assert heads == [
        (f"encoder.layers.encoder_layer_{i}.self_attention.heads", 12, 197 * 64) for i in range(12)
    ]


# --- timm ---------------------------------------------------------------------------------------

TIMM_VIT = ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1})


def test_a_timm_vit_gets_head_taps_with_its_weights_and_outputs() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    original = timm.create_model(TIMM_VIT[0][5:], pretrained=False, num_classes=10, **TIMM_VIT[1])
    model, _ = build_model(*TIMM_VIT, num_classes=10)
    attention = model.blocks[0].attn
    assert isinstance(attention.norm, HeadOutputs) and attention.norm.num_heads == 3
    model.load_state_dict(original.state_dict())  # same keys, strictly
    model.eval(), original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()), original(images()), rtol=0, atol=0)
    readings = [(x.unit, x.units, x.positions) for x in discover_layers(model, SPEC)]
    assert ("head", 3, 17 * 64) in readings
    recorder = TapRecorder(model, ["blocks.0.attn.norm:head"], SPEC)
    read = []
    attention.proj.register_forward_pre_hook(lambda module, args: read.append(args[0]))
    outputs, _ = recorder.run(images(), full=True)
    heads = read[0].reshape(4, 17, 3, 64).transpose(1, 2).reshape(4, 3, -1)  # proj's input
    torch.testing.assert_close(outputs["blocks.0.attn.norm:head"], heads, rtol=0, atol=0)


def test_a_timm_attention_with_a_norm_before_proj_keeps_no_head_tap() -> None:
    timm = pytest.importorskip("timm")
    attention = timm.layers.attention.Attention(16, 2, scale_norm=True, norm_layer=nn.LayerNorm)
    model = nn.Sequential(attention)
    assert expose_heads(model) == []
    assert type(attention.norm) is nn.LayerNorm
