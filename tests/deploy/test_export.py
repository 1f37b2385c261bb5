"""`snptool export`: real ONNX files from tiny checkpoints, checked in real onnxruntime."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import typer.main
from onnx import TensorProto
from torch import nn

from snptool.cli import app
from snptool.config import ExportConfig, ImportConfig, InputSpec
from snptool.core.architectures import build_model
from snptool.core.checkpoint import make_metadata, read_checkpoint, write_checkpoint
from snptool.core.files import sha256_file
from snptool.core.trust import trust_code
from snptool.deploy.checked_export import INPUT_NAME, OUTPUT_NAME, count_graph_macs, count_params
from snptool.deploy.export import ExportResult, run_export
from snptool.errors import ExportError, UsageError
from snptool.training.importer import run_import
from tests.conftest import REPO_ROOT, SHARED_CHECKPOINTS, assert_one_error, invoke

RESNET20 = SHARED_CHECKPOINTS / "akamaster_resnet20-12fca82f.th"


# tiny_vgg on 32×32×3 inputs: conv 3→8 at 32×32, pool, conv 8→16 at 16×16, pool,
# conv 16→16 at 8×8, pool, then Linear 16·4·4 → 16 → 10. MACs per sample, by hand:
TINY_VGG_MACS = (
    32 * 32 * 8 * (3 * 3 * 3)  # conv 1: output elements × C_in × kH × kW
    + 16 * 16 * 16 * (8 * 3 * 3)  # conv 2
    + 8 * 8 * 16 * (16 * 3 * 3)  # conv 3
    + 256 * 16  # fc 1: K × N
    + 16 * 10  # fc 2
)  # = 667,808


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".onnx", ".part", ".data"))


def write_file_arch_checkpoint(
    tmp_path: Path, source: str, factory: str, name: str = "model.safetensors"
) -> Path:
    """A checkpoint (untrained, digits classes) of the model a Python file in tmp_path builds."""
    arch_file = tmp_path / f"{factory}_arch.py"
    arch_file.write_text(textwrap.dedent(source))
    torch.manual_seed(0)
    model, record = build_model(f"{arch_file}:{factory}", num_classes=10)
    metadata = make_metadata(
        arch=record,
        class_names=[str(i) for i in range(10)],
        input_spec=InputSpec(),
        data="digits",
        provenance={},
    )
    path = tmp_path / name
    write_checkpoint(path, model.eval(), metadata)
    return path


@pytest.fixture(scope="module")
def exported(
    checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExportResult, Path]:
    """The trained tiny_vgg fixture exported with the defaults; treat the file as read-only."""
    output = tmp_path_factory.mktemp("export") / "tiny_vgg.onnx"
    return run_export(checkpoint_path, output), output


# --- the file ---------------------------------------------------------------------------------


def test_export_is_one_checked_file_with_every_weight_inside(exported) -> None:
    result, output = exported
    graph = onnx.load(str(output), load_external_data=False)
    onnx.checker.check_model(graph)
    assert leftovers(output.parent) == [output.name]  # no .data file beside it
    assert graph.graph.initializer
    for tensor in graph.graph.initializer:
        assert tensor.data_location == TensorProto.DEFAULT and not tensor.external_data
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert result.output == str(output) and result.opset == 17 and not result.dynamo


def test_batch_dimension_is_dynamic(exported, checkpoint_path: Path) -> None:
    _, output = exported
    graph = onnx.load(str(output))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    model = read_checkpoint(checkpoint_path).model
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        with torch.no_grad():
            expected = model(x)
        assert logits.shape == (batch, 10)
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=1e-4)


def test_parity_on_real_test_images(exported) -> None:
    result, _ = exported
    assert result.samples == 64 and result.data == "digits"
    assert 0 <= result.max_abs_diff <= 1e-4
    assert result.argmax_agreement == 1.0


def test_metadata_describes_the_export(exported, checkpoint_path: Path) -> None:
    result, output = exported
    props = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    document = json.loads(props["snptool"])
    checkpoint = read_checkpoint(checkpoint_path)
    assert document["checkpoint"]["sha256"] == sha256_file(checkpoint_path)
    assert document["arch"]["spec"] == "tiny_vgg"
    assert document["class_names"] == checkpoint.class_names
    spec = document["input"]
    assert (spec["channels"], spec["height"], spec["width"]) == (3, 32, 32)
    assert spec["mean"] == list(checkpoint.input_spec.mean) and spec["name"] == INPUT_NAME
    assert document["provenance"]["inputs"]["checkpoint"]["sha256"] == checkpoint.sha256
    assert document["config"] == dataclasses.asdict(ExportConfig())
    assert document["parity"]["max_abs_diff"] == result.max_abs_diff
    assert document["parity"]["data"]["spec"] == "digits"
    for key in ("params", "macs", "dense_params", "dense_macs"):
        assert document[key] == getattr(result, key)
        assert props[f"snptool.{key}"] == str(getattr(result, key))


# --- parameters and MACs ----------------------------------------------------------------------


def test_macs_of_tiny_vgg_equal_the_hand_count(exported, checkpoint_path: Path) -> None:
    result, output = exported
    convs = [
        m for m in read_checkpoint(checkpoint_path).model.modules() if isinstance(m, nn.Conv2d)
    ]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 8, (3, 3)),
        (8, 16, (3, 3)),
        (16, 16, (3, 3)),
    ]
    assert TINY_VGG_MACS == 667_808
    assert result.macs == result.dense_macs == TINY_VGG_MACS
    assert count_graph_macs(onnx.load(str(output))) == TINY_VGG_MACS


def test_params_are_torch_params_less_the_folded_batchnorm(exported, checkpoint_path) -> None:
    # The TorchScript exporter folds each eval-mode BatchNorm into the conv before it: the
    # conv's weight and bias absorb the BN's scale and shift, so the BN's 2·C affine
    # parameters vanish (its running statistics are buffers, never counted). tiny_vgg's convs
    # have biases, so nothing is added: 8,074 − 2·(8 + 16 + 16) = 7,994.
    result, output = exported
    model = read_checkpoint(checkpoint_path).model
    torch_params = sum(p.numel() for p in model.parameters())
    folded = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert result.torch_params == torch_params == 8_074
    assert result.params == result.dense_params == torch_params - folded == 7_994
    assert count_params(onnx.load(str(output))) == result.params


def test_identical_weights_stored_once_still_count(tmp_path: Path) -> None:
    # Untrained: every folded bias is zero, and the exporter keeps one copy behind Identity nodes.
    torch.manual_seed(0)
    model, record = build_model("tiny_vgg", num_classes=10)
    metadata = make_metadata(
        arch=record,
        class_names=[str(i) for i in range(10)],
        input_spec=InputSpec(),
        data="digits",
        provenance={},
    )
    path = tmp_path / "untrained.safetensors"
    write_checkpoint(path, model.eval(), metadata)
    result = run_export(path, tmp_path / "untrained.onnx")
    graph = onnx.load(str(tmp_path / "untrained.onnx"))
    assert any(node.op_type == "Identity" for node in graph.graph.node)
    assert result.params == 7_994 and result.macs == TINY_VGG_MACS


# --- failures ---------------------------------------------------------------------------------

UNEXPORTABLE = """
    import torch
    from torch import nn


    class Bessel(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.head = nn.Linear(3, num_classes)

        def forward(self, x):
            return self.head(torch.special.i0e(x.mean((2, 3))))  # no ONNX symbolic


    def bessel(num_classes=10):
        return Bessel(num_classes)
"""


EXPORT_AWARE = """
    import torch
    from torch import nn


    class Shifty(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.head = nn.Linear(3, num_classes)

        def forward(self, x):
            logits = self.head(x.mean((2, 3)))
            return logits + 1.0 if torch.onnx.is_in_onnx_export() else logits


    def shifty(num_classes=10):
        return Shifty(num_classes)
"""


def test_an_unexportable_operator_is_one_line_and_writes_nothing(tmp_path: Path, capfd) -> None:
    checkpoint = write_file_arch_checkpoint(tmp_path, UNEXPORTABLE, "bessel")
    output = tmp_path / "bessel.onnx"
    with (
        trust_code(everything=True),
        pytest.raises(ExportError, match=r"cannot export .*aten::special_i0e.*--opset"),
    ):
        run_export(checkpoint, output, ExportConfig(fallback=False))
    assert capfd.readouterr().out == ""  # the exporter's graph dump stays off stdout
    trusted = ("--trust-code",)
    result = invoke("export", checkpoint, "-o", output, "--json", "--no-fallback", *trusted)
    line = assert_one_error(result, contains=f"cannot export {checkpoint} to ONNX: ")
    assert "aten::special_i0e" in line and line.endswith("try another --opset or --dynamo.")
    result = invoke("export", checkpoint, "-o", output, "--json", *trusted)  # both exporters
    line = assert_one_error(
        result, contains=f"cannot export {checkpoint} to ONNX with either exporter"
    )
    assert (
        "(TorchScript: Exporting the operator 'aten::special_i0e'" in line and "; dynamo: " in line
    )
    assert leftovers(tmp_path) == []


def test_a_parity_failure_leaves_the_old_output(tmp_path: Path) -> None:
    checkpoint = write_file_arch_checkpoint(tmp_path, EXPORT_AWARE, "shifty")
    output = tmp_path / "shifty.onnx"
    output.write_bytes(b"previous")
    with (
        trust_code(everything=True),
        pytest.raises(ExportError, match=r"differs from torch by up to 1 on 64 inputs"),
    ):
        run_export(checkpoint, output)
    assert output.read_bytes() == b"previous"
    assert leftovers(tmp_path) == ["shifty.onnx"]


def test_bad_settings_are_refused_before_any_work(checkpoint_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is also an input"):
        run_export(checkpoint_path, checkpoint_path)
    result = invoke("export", checkpoint_path, "-o", tmp_path / "x.onnx", "--device", "cuda")
    assert_one_error(result, contains="export runs on the CPU, not cuda; use --device cpu.")
    with pytest.raises(UsageError, match="parity samples must be at least 1"):
        ExportConfig(parity_samples=0)
    assert leftovers(tmp_path) == []


# --- the command ------------------------------------------------------------------------------


def test_cli_json(checkpoint_path: Path, tmp_path: Path) -> None:
    output = tmp_path / "tiny.onnx"
    result = invoke("export", checkpoint_path, "-o", output, "--parity-samples", 16, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {"max_abs_diff", "params", "macs", "dense_params", "dense_macs"} <= set(payload)
    assert payload["max_abs_diff"] <= 1e-4 and payload["samples"] == 16
    assert (payload["params"], payload["macs"]) == (7_994, TINY_VGG_MACS)
    assert "max |torch − onnxruntime|" in result.stderr and output.is_file()


def test_every_config_field_has_a_flag_with_its_default() -> None:
    params = {p.name: p for p in typer.main.get_command(app).commands["export"].params}
    for field in dataclasses.fields(ExportConfig):
        assert "--" + field.name.replace("_", "-") in params[field.name].opts, field.name
        assert params[field.name].default == field.default, field.name


def test_dynamo_exporter(checkpoint_path: Path, tmp_path: Path) -> None:
    output = tmp_path / "tiny.dynamo.onnx"
    result = run_export(checkpoint_path, output, ExportConfig(dynamo=True, parity_samples=8))
    assert result.dynamo and result.max_abs_diff <= 1e-4
    assert (result.params, result.macs) == (7_994, TINY_VGG_MACS)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        (logits,) = session.run(None, {INPUT_NAME: np.zeros((batch, 3, 32, 32), np.float32)})
        assert logits.shape == (batch, 10)


# --- a real third-party model -----------------------------------------------------------------


def test_resnet20_exports_within_tolerance(cifar_npz: Path, tmp_path: Path) -> None:
    if not RESNET20.is_file():
        pytest.skip(f"third-party checkpoint {RESNET20} not found (see shared/checkpoints)")
    with np.load(cifar_npz) as archive:
        subset = tmp_path / "cifar10_first64.npz"
        np.savez(
            subset,
            images=archive["images"][:64],
            labels=archive["labels"][:64],
            class_names=archive["class_names"],
            test=np.ones(64, bool),
        )
    imported = tmp_path / "resnet20.safetensors"
    spec = InputSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    arch = f"{REPO_ROOT / 'examples' / 'third_party' / 'cifar_resnet.py'}:resnet20"
    run_import(RESNET20, imported, ImportConfig(arch=arch, input=spec, data=f"npz:{subset}"))

    result = run_export(imported, tmp_path / "resnet20.onnx")

    assert result.samples == 64 and result.max_abs_diff <= 1e-4
    assert result.argmax_agreement == 1.0
    # 269,722 torch parameters; 19 convs without bias absorb 19 BatchNorms over 688 channels:
    # −2·688 affine parameters, +688 conv biases.
    assert result.torch_params == 269_722 and result.params == 269_722 - 688
    # conv1, then 3 stages of 6 3×3 convs: each costs 2,359,296 MACs (32·32·16·16·9, and
    # likewise at half the side and twice the width), except the stride-2 first conv of
    # stages 2 and 3, which costs half of that; then the 64 → 10 linear layer.
    per_conv = 32 * 32 * 16 * (16 * 9)
    stages = 6 * per_conv + 2 * (per_conv // 2 + 5 * per_conv)
    assert result.macs == 32 * 32 * 16 * (3 * 9) + stages + 64 * 10 == 40_551_040
