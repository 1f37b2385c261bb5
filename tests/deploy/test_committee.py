"""`snptool committee`: the soft committee of tiny digits models, by hand and in onnxruntime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from snptool.config import (
    CommitteeConfig,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    InputSpec,
    TrainConfig,
)
from snptool.core.architectures import build_model
from snptool.core.checkpoint import MASK_PREFIX, make_metadata, read_checkpoint, write_checkpoint
from snptool.core.files import sha256_file
from snptool.data.datasets import load_data, prepare_batch
from snptool.deploy.checked_export import INPUT_NAME, count_graph_macs, export_onnx
from snptool.deploy.committee import OUTPUT_NAME, run_committee
from snptool.errors import DataError, UsageError
from snptool.pruning.connections import connections
from snptool.pruning.finetune import apply_masks
from snptool.training.evaluate import run_evaluate
from snptool.training.train import InputOverrides, TrainResult, run_train
from tests.conftest import assert_one_error, invoke

CPU = CommitteeConfig(device="cpu")
CPU_EVALUATE = EvaluateConfig(device="cpu")
# B's own normalisation: the ONNX committee converts A's input to it inside the graph.
B_INPUTS = InputOverrides(mean=(0.4, 0.45, 0.5), std=(0.25, 0.3, 0.2))


@pytest.fixture(scope="module")
def members(
    trained: TrainResult, tiny_train: TrainConfig, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """A: the trained tiny_vgg fixture; B: tiny_vgg, seed 1, another mean/std; C: tiny_lenet."""
    directory = tmp_path_factory.mktemp("committee")
    b = run_train(
        "tiny_vgg",
        "digits",
        directory / "b.safetensors",
        dataclasses.replace(tiny_train, seed=1),
        inputs=B_INPUTS,
    )
    c = run_train(
        "tiny_lenet", "digits", directory / "c.safetensors", dataclasses.replace(tiny_train, seed=2)
    )
    return [Path(trained.output), Path(b.output), Path(c.output)]


def committee_test_split(first: Path):
    """The test split the committee defaults to: the first member's data and split."""
    return load_data("digits", "test", DataConfig().inherit(read_checkpoint(first).metadata))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


@torch.no_grad()
def member_probabilities(paths: list[Path], images: torch.Tensor) -> np.ndarray:
    """(M, N, L) softmax of each member on raw uint8 images, each with its own input spec."""
    rows = []
    for path in paths:
        checkpoint = read_checkpoint(path)
        logits = checkpoint.model(prepare_batch(images, checkpoint.input_spec))
        rows.append(softmax(logits.double().numpy()))
    return np.stack(rows)


def all_images(data) -> tuple[torch.Tensor, np.ndarray]:
    batches = list(data.batches(InputSpec(), 10_000))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).numpy()


def test_committee_accuracy_equals_a_hand_computation(members: list[Path]) -> None:
    result = run_committee(members, config=CPU)
    images, labels = all_images(committee_test_split(members[0]))
    probabilities = member_probabilities(members, images)  # (M, N, L)
    committee = probabilities.mean(0)
    predicted = committee.argmax(1)
    assert result.samples == len(labels) > 300
    assert result.committee_accuracy == np.mean(predicted == labels)
    assert result.committee_loss == pytest.approx(
        -np.log(committee[np.arange(len(labels)), labels]).mean(), rel=1e-5
    )
    for label, name in enumerate(read_checkpoint(members[0]).class_names):
        chosen = labels == label
        assert result.per_class[name] == np.mean(predicted[chosen] == label)
    votes = probabilities.argmax(2)  # (M, N)
    assert result.agreement == np.mean((votes == votes[0]).all(0))
    for member, path in zip(result.members, members, strict=True):
        alone = run_evaluate(path, config=CPU_EVALUATE)
        assert (member.path, member.sha256) == (str(path), sha256_file(path))
        assert member.accuracy == alone.accuracy
        assert member.per_class == alone.per_class
        assert member.loss == pytest.approx(alone.loss, rel=1e-5)
    best = max(m.accuracy for m in result.members)
    assert result.gain == result.committee_accuracy - best
    summary = result.to_json()
    assert summary["best_member_accuracy"] == best and summary["export"] is None
    assert summary["split"] == "test" and summary["data"] == "digits"
    assert summary["warnings"] == []


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    return probabilities


def test_onnx_committee_matches_the_members_on_their_own_inputs(
    members: list[Path], tmp_path: Path
) -> None:
    output = tmp_path / "committee.onnx"
    result = run_committee(members, config=CPU, output=output)
    graph = onnx.load(str(output))
    onnx.checker.check_model(graph)
    images, _ = all_images(committee_test_split(members[0]))
    first = read_checkpoint(members[0]).input_spec
    expected = member_probabilities(members, images[:37]).mean(0)  # each member's own spec
    for batch in (37, 5):  # a dynamic batch dimension
        actual = run_onnx(output, prepare_batch(images[:batch], first))
        np.testing.assert_allclose(actual, expected[:batch], atol=1e-5, rtol=0)
    exported = result.export
    assert exported is not None and exported.output == str(output)
    assert exported.max_abs_diff <= exported.parity_tolerance and exported.samples == 64
    assert exported.renormalised == [str(members[1])] and exported.compacted == []
    macs = [
        count_graph_macs(
            export_onnx(read_checkpoint(p).model, (3, 32, 32), ExportConfig(), source="")
        )
        for p in members
    ]
    assert exported.macs == exported.dense_macs == sum(macs)
    meta = {p.key: p.value for p in graph.metadata_props}
    document = json.loads(meta["snptool"])
    assert meta["snptool.params"] == str(exported.params)
    assert [m["sha256"] for m in document["members"]] == [sha256_file(p) for p in members]
    assert document["provenance"]["inputs"]["member2"]["sha256"] == sha256_file(members[1])
    assert document["output"]["name"] == OUTPUT_NAME and document["input"]["mean"] == [0.5] * 3


def pruned_copy(path: Path, tmp_path: Path) -> Path:
    """`path` with unit 3 of features.6 cut off from features.8 (compaction removes it)."""
    checkpoint = read_checkpoint(path)
    model = checkpoint.model
    chain = connections(model, checkpoint, ["features.6", "features.10"])  # features.8
    masks = {"features.8.weight": torch.ones_like(model.features[8].weight, dtype=torch.bool)}
    masks["features.8.weight"][:, 3] = False
    apply_masks(model, masks)
    metadata = {**checkpoint.metadata, "pruning": {"connections": [vars(c) for c in chain]}}
    output = tmp_path / "pruned.safetensors"
    extras = {MASK_PREFIX + k: v.to(torch.uint8) for k, v in masks.items()}
    write_checkpoint(output, model, metadata, extras)
    return output


def test_a_pruned_member_exports_compacted(members: list[Path], tmp_path: Path) -> None:
    pruned = pruned_copy(members[0], tmp_path)
    output = tmp_path / "committee.onnx"
    result = run_committee([pruned, members[2]], config=CPU, output=output)
    exported = result.export
    assert exported is not None and exported.compacted == [str(pruned)]
    assert exported.params < exported.dense_params and exported.macs < exported.dense_macs
    images, _ = all_images(committee_test_split(members[0]))
    expected = member_probabilities([pruned, members[2]], images[:20]).mean(0)
    actual = run_onnx(output, prepare_batch(images[:20], read_checkpoint(pruned).input_spec))
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def untrained_member(
    tmp_path: Path, name: str, class_names: list[str], spec: InputSpec, **kwargs
) -> Path:
    """An untrained tiny_vgg checkpoint with the given classes and input spec."""
    torch.manual_seed(0)
    model, record = build_model("tiny_vgg", kwargs, num_classes=len(class_names))
    metadata = make_metadata(
        arch=record, class_names=class_names, input_spec=spec, data="digits", provenance={}
    )
    path = tmp_path / name
    write_checkpoint(path, model.eval(), metadata)
    return path


def test_another_channel_count_is_scored_but_not_exported(
    members: list[Path], tmp_path: Path
) -> None:
    gray = untrained_member(
        tmp_path,
        "gray.safetensors",
        [str(i) for i in range(10)],
        InputSpec(channels=1),
        in_channels=1,
    )
    result = run_committee([members[0], gray], config=CPU)
    assert result.members[1].accuracy == run_evaluate(gray, config=CPU_EVALUATE).accuracy
    output = tmp_path / "committee.onnx"
    with pytest.raises(UsageError, match="takes 1×32×32 inputs but .* takes 3×32×32"):
        run_committee([members[0], gray], config=CPU, output=output)
    assert not output.exists() and not list(tmp_path.glob("*.part"))


def test_a_member_tested_on_another_split_is_named(
    members: list[Path], tiny_train: TrainConfig, tmp_path: Path
) -> None:
    other = run_train(
        "tiny_lenet",
        "digits",
        tmp_path / "other.safetensors",
        dataclasses.replace(tiny_train, epochs=1),
        data_config=DataConfig(split_seed=1),
    )
    result = run_committee([members[0], members[2], other.output], config=CPU)
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(f"{other.output} was tested on digits")
    assert "split seed 1" in result.warnings[0]
    first_decides = run_committee([other.output, members[0]], config=CPU)  # its split now
    assert [w.split(" was tested")[0] for w in first_decides.warnings] == [str(members[0])]


def test_image_files_need_one_input_size(members: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    for label in range(10):
        (tmp_path / "images" / str(label)).mkdir(parents=True)
        for index in range(2):
            pixels = np.full((8, 8, 3), 20 * label + index, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / str(label) / f"{index}.png")
    small = untrained_member(
        tmp_path,
        "small.safetensors",
        [str(i) for i in range(10)],
        InputSpec(height=16, width=16),
        input_size=16,
    )
    data = f"imagefolder:{tmp_path / 'images'}"
    with pytest.raises(DataError, match="holds image files, read once at the first member's"):
        run_committee([members[0], small], data, CPU)
    assert run_committee([members[0], members[1]], data, CPU).samples == 10


def test_cli_json_and_table(members: list[Path], tmp_path: Path) -> None:
    output = tmp_path / "committee.onnx"
    result = invoke("committee", *members, "--device", "cpu", "-o", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [m["path"] for m in summary["members"]] == [str(p) for p in members]
    assert 0 < summary["committee_accuracy"] <= 1 and summary["samples"] > 300
    assert summary["output"] == str(output) and output.is_file()
    assert summary["export"]["max_abs_diff"] <= summary["export"]["parity_tolerance"]
    assert "committee" in result.stderr and "gain" in result.stderr


def test_bad_input_is_one_line(members: list[Path], tmp_path: Path) -> None:
    a = members[0]
    assert_one_error(
        invoke("committee", a), contains="a committee needs at least two checkpoints; got 1"
    )
    assert_one_error(
        invoke("committee", a, tmp_path / "nope.safetensors"), contains="does not exist"
    )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    assert_one_error(invoke("committee", a, corrupt), contains="is not a readable safetensors file")
    names = [str(i) for i in range(10)]
    swapped = untrained_member(
        tmp_path, "swapped.safetensors", [*names[:3], "4", "3", *names[5:]], InputSpec()
    )
    line = assert_one_error(invoke("committee", a, swapped), contains="disagree on the classes")
    assert "label 3 is '3' vs '4'" in line
    three = untrained_member(tmp_path, "three.safetensors", ["a", "b", "c"], InputSpec())
    assert_one_error(invoke("committee", a, three), contains="(10 classes vs 3)")
    assert_one_error(invoke("committee", a, a, "--split", "dev"), contains="unknown split 'dev'")
    assert_one_error(invoke("committee", a, a, "--parity-samples", "0"), contains="parity samples")
    assert not list(tmp_path.glob("*.onnx"))
