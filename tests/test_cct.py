"""model_defs/cct.py: shapes, heads, SHI-Labs' layout and counts, conv blocks, fx, CLI, ONNX."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from model_defs import create_model, get_model_entry
from model_defs._blocks import HeadOutputs
from snptool.core.architectures import cut_after
from snptool.core.checkpoint import read_checkpoint

CONV_VARIANT = {"num_blocks": 2, "conv_blocks": 1}  # tiny_cct with its first block a ConvBlock


def _heads(model: nn.Module) -> list[tuple[str, HeadOutputs]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, HeadOutputs)]


def _outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the named submodules in one eval-mode forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda mod, inp, out, name=name: seen.setdefault(name, out)
        )
        for name in names
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return seen


# --- shapes and heads -------------------------------------------------------------------------


def test_tiny_cct_shapes_and_taps(images: torch.Tensor) -> None:
    model = create_model("tiny_cct", num_classes=7)
    assert model.probe_taps == ["tokenizer", "classifier.blocks.0", "classifier.pooled"]
    names = [
        "classifier.blocks.0",
        "classifier.blocks.0.mha_output",
        "classifier.blocks.0.ff_output",
    ]
    out = _outputs(model, ["tokenizer", "classifier.pooled", *names], images)
    assert out["tokenizer"].shape == (2, 16, 16, 16)  # (B, D, H', W'): 32 → pool → 16
    assert out["classifier.pooled"].shape == (2, 16)  # (B, D): sequence pooling
    for name in names:
        assert out[name].shape == (2, 256, 16)  # (B, T, D), T = 16·16
    torch.testing.assert_close(out["classifier.blocks.0"], out["classifier.blocks.0.ff_output"])
    with torch.no_grad():
        assert model(images).shape == (2, 7)


@pytest.mark.parametrize("num_heads", [1, 2, 4, 8])
def test_head_count_splits_a_fixed_embedding(num_heads: int, images: torch.Tensor) -> None:
    # LS-MHA variants: D fixed at 16, d = D / h; the weights do not depend on h.
    model = create_model("tiny_cct", num_heads=num_heads)
    (name, heads), *rest = _heads(model)
    assert not rest and name == "classifier.blocks.0.self_attn.heads"
    assert heads.num_heads == num_heads
    assert model.classifier.blocks[0].self_attn.head_dim == 16 // num_heads
    params = sum(p.numel() for p in model.parameters())
    assert params == sum(p.numel() for p in create_model("tiny_cct").parameters())
    assert _outputs(model, [name], images)[name].shape == (2, 256, 16)  # (B, T, h·d)


def test_head_outputs_hold_each_heads_attention() -> None:
    model = create_model("tiny_cct", attention_dropout=0.0).eval()
    attention = model.classifier.blocks[0].self_attn
    x = torch.randn(2, 256, 16, generator=torch.Generator().manual_seed(1))
    out = _outputs(attention, ["heads"], x)["heads"]
    q, k, v = (x @ attention.qkv.weight.T).chunk(3, dim=-1)  # each (B, T, D), head-major

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (2, 8)).transpose(1, 2)  # (B, h, T, d)

    expected = F.scaled_dot_product_attention(split(q), split(k), split(v))
    for head in range(2):
        torch.testing.assert_close(out[..., head * 8 : (head + 1) * 8], expected[:, head])


def test_block_computes_shi_labs_structure() -> None:
    # Their norm1 sits on the residual stream: x = norm1(x + MHA(pre_norm(x))); x + FF(x).
    block = create_model("tiny_cct", attention_dropout=0.0).eval().classifier.blocks[0]
    x = torch.randn(2, 256, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stream = x + block.self_attn(block.pre_norm(x))
        normed = block.norm1(stream)
        expected = normed + block.linear2(F.gelu(block.linear1(normed)))
    out = _outputs(block, ["mha_output"], x)
    torch.testing.assert_close(out["mha_output"], stream)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


# --- SHI-Labs' presets ------------------------------------------------------------------------


def _shi_labs_keys(blocks: int, dim: int, hidden: int, tokens: int) -> dict[str, tuple]:
    """State-dict names and shapes of SHI-Labs' CCT with one 3×3 tokenizer conv, 10 classes."""
    keys = {
        "tokenizer.conv_layers.0.0.weight": (dim, 3, 3, 3),
        "classifier.positional_emb": (1, tokens, dim),
        "classifier.attention_pool.weight": (1, dim),
        "classifier.attention_pool.bias": (1,),
        "classifier.norm.weight": (dim,),
        "classifier.norm.bias": (dim,),
        "classifier.fc.weight": (10, dim),
        "classifier.fc.bias": (10,),
    }
    for i in range(blocks):
        block = {
            "pre_norm.weight": (dim,),
            "pre_norm.bias": (dim,),
            "self_attn.qkv.weight": (3 * dim, dim),
            "self_attn.proj.weight": (dim, dim),
            "self_attn.proj.bias": (dim,),
            "norm1.weight": (dim,),
            "norm1.bias": (dim,),
            "linear1.weight": (hidden, dim),
            "linear1.bias": (hidden,),
            "linear2.weight": (dim, hidden),
            "linear2.bias": (dim,),
        }
        keys.update({f"classifier.blocks.{i}.{k}": shape for k, shape in block.items()})
    return keys


def test_cct_7_3x1_has_shi_labs_names_and_shapes() -> None:
    model = create_model("cct_7_3x1")
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes == _shi_labs_keys(blocks=7, dim=256, hidden=512, tokens=256)
    assert len(_heads(model)) == 7 and {h.num_heads for _, h in _heads(model)} == {4}
    assert create_model("cct").state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "name, params",
    # SHI-Labs' README (CIFAR-10): CCT-7/3x1 3.760M, CCT-2/3x2 0.284M parameters.
    # By hand, CCT-7/3x1: conv 6,912 + positions 65,536 + 7 × 526,336 per block
    # + norm 512 + pooling 257 + fc 2,570.
    [("cct_7_3x1", 3_760_139), ("cct_2_3x2", 283_723)],
)
def test_preset_parameter_counts_match_shi_labs(name: str, params: int) -> None:
    assert sum(p.numel() for p in create_model(name).parameters()) == params


def test_cct_2_3x2_tokenizer_has_two_convs(images: torch.Tensor) -> None:
    model = create_model("cct_2_3x2")
    convs = [m for m in model.tokenizer.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 128)]
    assert model.classifier.positional_emb.shape == (1, 64, 128)  # 32 → 16 → 8: 64 tokens
    assert _outputs(model, ["tokenizer"], images)["tokenizer"].shape == (2, 128, 8, 8)


def test_stochastic_depth_grows_linearly_over_all_blocks() -> None:
    rates = torch.linspace(0, 0.1, 7).tolist()
    model = create_model("cct_7_3x1")
    assert [b.mha_drop_path.p for b in model.classifier.blocks] == pytest.approx(rates)
    conv = create_model("cct_7_3x1", conv_blocks=2)
    assert [b.drop_path.p for b in conv.conv_blocks] == pytest.approx(rates[:2])
    assert [b.ff_drop_path.p for b in conv.classifier.blocks] == pytest.approx(rates[2:])


# --- conv blocks ------------------------------------------------------------------------------


def test_conv_blocks_replace_the_first_blocks(images: torch.Tensor) -> None:
    model = create_model("tiny_cct", **CONV_VARIANT)
    assert model.probe_taps == [
        "tokenizer",
        "conv_blocks.0",
        "classifier.blocks.0",
        "classifier.pooled",
    ]
    assert len(model.conv_blocks) == 1 and len(model.classifier.blocks) == 1
    assert len(_heads(model)) == 1
    out = _outputs(model, model.probe_taps, images)
    assert out["conv_blocks.0"].shape == (2, 16, 16, 16)  # on the map, before tokens
    assert out["classifier.blocks.0"].shape == (2, 256, 16)
    pure = create_model("tiny_cct", num_blocks=2)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in pure.parameters())
    only_convs = create_model("tiny_cct", num_blocks=2, conv_blocks=2).eval()
    assert not _heads(only_convs)
    with torch.no_grad():
        assert only_convs(images).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 3}, "embed_dim=16 is not divisible by num_heads=3"),
        ({"conv_blocks": 2}, "conv_blocks=2 must be between 0 and num_blocks=1"),
        ({"num_blocks": 0}, "num_blocks=0 must be at least 1"),
        ({"kernel_size": 4}, "kernel_size=4 must be odd"),
        ({"conv_layers": 0}, "conv_layers=0 must be at least 1"),
        ({"mlp_ratio": 0.0}, "mlp_ratio=0.0 leaves no hidden"),
        ({"stochastic_depth_prob": 1.0}, r"stochastic_depth_prob=1.0 must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout=-0.1 must be in \[0, 1\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("tiny_cct", **kwargs)


def test_input_size_and_channels_size_the_tokens() -> None:
    model = create_model("tiny_cct", input_size=16, in_channels=1).eval()
    assert model.classifier.positional_emb.shape == (1, 64, 16)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    wide = create_model("tiny_cct", kernel_size=7)  # stride 2, padding 3: 32 → 16 → 8
    assert wide.classifier.positional_emb.shape == (1, 64, 16)


# --- modes, fx --------------------------------------------------------------------------------


def test_eval_is_deterministic_and_training_is_not(images: torch.Tensor) -> None:
    model = create_model(
        "tiny_cct", num_blocks=3, dropout=0.3, attention_dropout=0.3, stochastic_depth_prob=0.5
    )
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(images), model(images))


@pytest.mark.parametrize("kwargs", [{}, CONV_VARIANT])
def test_fx_traces_and_cuts_after_a_sub_block(kwargs: dict, images: torch.Tensor) -> None:
    model = create_model("tiny_cct", **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"tokenizer.conv_layers.0.0", "classifier.blocks.0.mha_output"} <= targets
    with torch.no_grad():
        torch.testing.assert_close(traced(images), model(images), rtol=0, atol=0)
        cut = cut_after(model, "classifier.blocks.0.mha_output")  # prune --classifier probe
        assert cut(images).shape == (2, 256, 16)
        heads = cut_after(model, "classifier.blocks.0.self_attn.heads")  # a head tap survives fx
        assert heads(images).shape == (2, 256, 16)


# --- CLI: models, layers, export --------------------------------------------------------------


def test_models_lists_the_cct_family(invoke_json) -> None:
    rows = {row["name"]: row for row in invoke_json("models", "--json")}
    for name in ("cct", "cct_7_3x1", "cct_2_3x2", "tiny_cct"):
        assert rows[name]["description"] == get_model_entry(name).description != ""
        assert rows[name]["input_size"] == [3, 32, 32]


def test_layers_lists_the_taps(untrained_checkpoint: Callable[..., Path], invoke_json) -> None:
    path = untrained_checkpoint("tiny_cct", **CONV_VARIANT)
    taps = invoke_json("layers", path, "--taps-only", "--json")
    assert [(x["layer"], x["shape"], x["units"]) for x in taps] == [
        ("tokenizer", [16, 16, 16], 16),
        ("conv_blocks.0", [16, 16, 16], 16),
        ("classifier.blocks.0", [256, 16], 16),
        ("classifier.pooled", [16], 16),
    ]
    layers = {x["layer"]: x for x in invoke_json("layers", path, "--json")}
    assert layers["classifier.blocks.0.self_attn.heads"]["shape"] == [256, 16]  # [T, h·d]
    assert layers["classifier.blocks.0.mha_output"]["shape"] == [256, 16]


def test_import_reads_a_state_dict_in_shi_labs_layout(tmp_path: Path, invoke_json) -> None:
    # A plain .pth state dict with SHI-Labs' names, as their CIFAR checkpoints hold.
    torch.manual_seed(0)
    source = create_model("tiny_cct").eval()
    weights = tmp_path / "cct.pth"
    torch.save(source.state_dict(), weights)
    output = tmp_path / "cct.safetensors"
    result = invoke_json(
        "import", weights, "--arch", "tiny_cct", "--data", "digits", "-o", output, "--json"
    )
    assert (result["missing"], result["unexpected"], result["mismatched"]) == ([], [], [])
    imported = read_checkpoint(output).model.state_dict()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(imported[name], tensor, rtol=0, atol=0)


@pytest.fixture(scope="module")
def exports(
    untrained_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory, invoke_json
) -> dict[str, dict]:
    """`snptool export --json` of tiny_cct, its 2-block version and that with a conv block."""
    results = {}
    for key, kwargs in [("tiny", {}), ("two_blocks", {"num_blocks": 2}), ("conv", CONV_VARIANT)]:
        output = tmp_path_factory.mktemp("onnx") / f"{key}.onnx"
        results[key] = invoke_json(
            "export", untrained_checkpoint("tiny_cct", **kwargs), "-o", output, "--json"
        )
    return results


@pytest.mark.parametrize("key", ["tiny", "two_blocks", "conv"])
def test_export_passes_parity(exports: dict[str, dict], key: str) -> None:
    result = exports[key]
    assert Path(result["output"]).is_file() and result["opset"] == 17
    assert result["samples"] == 64 and result["max_abs_diff"] <= result["parity_tolerance"]
    assert result["argmax_agreement"] == 1.0


def test_conv_block_is_cheaper_than_the_attention_block(exports: dict[str, dict]) -> None:
    pure, conv = exports["two_blocks"], exports["conv"]
    assert conv["macs"] < pure["macs"] and conv["params"] < pure["params"]
    block = pure["macs"] - exports["tiny"]["macs"]  # one encoder block at 256 tokens, D 16
    # the conv block (depthwise 3×3 + pointwise at 16×16) costs less than a tenth of it
    assert pure["macs"] - conv["macs"] > 0.9 * block
