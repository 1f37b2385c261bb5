"""prune: the AFCC rule, its controls, the chain of connections, masked fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import ConnectionConfig, FinetuneConfig, PruneConfig
from snptool.core.checkpoint import masks_of, read_checkpoint, read_tensors
from snptool.core.matrix_file import layer_group, open_matrix_file, read_layer_clusters
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import prepare_batch
from snptool.errors import InputFileError, LayerError, UsageError
from snptool.pruning.connections import connections
from snptool.pruning.finetune import finetune_loss
from snptool.pruning.masks import balanced_random_sets, expand, output_mask, unit_mask
from snptool.pruning.methods import diagonal_label_sets
from snptool.pruning.prune import run_prune
from tests.conftest import invoke

LAYERS = ["features.2", "features.6", "features.10", "classifier.1"]


@pytest.fixture(scope="module")
def clusters_path(checkpoint_path: Path, tiny_probe, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prune")
    run_probe(checkpoint_path, LAYERS, folder / "probes.safetensors", tiny_probe)
    path = folder / "matrices.h5"
    run_matrix(checkpoint_path, folder / "probes.safetensors", path)
    run_clusters(path)
    return path


def label_sets(path: Path) -> dict[str, list[set[int]]]:
    with open_matrix_file(path) as handle:
        return {
            name: read_layer_clusters(layer_group(handle, name)).label_sets() for name in LAYERS
        }


def test_unit_mask_keeps_pairs_whose_label_sets_intersect():
    sources = [{0, 1}, {2}, set()]
    targets = [{1}, {2, 3}, {4}]
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(unit_mask(sources, targets), expected)


def test_output_mask_keeps_the_labels_of_each_unit():
    mask = output_mask([{0, 2}, set(), {1}], classes=3)
    assert mask.tolist() == [[True, False, False], [False, False, True], [True, False, False]]


def test_expand_covers_kernel_slices_and_flattened_positions():
    units = torch.tensor([[True, False]])
    conv = expand(units, torch.zeros(1, 2, 3, 3), 1)
    assert conv[0, 0].all() and not conv[0, 1].any()
    linear = expand(units, torch.zeros(1, 8), 4)  # 2 channels × 4 positions, channel-major
    assert linear.tolist() == [[True] * 4 + [False] * 4]


def test_balanced_random_sets_keep_sizes_and_balance_labels():
    sets = [{0}, {1, 2}, {3, 4, 5}, set(), {6, 7}, {8}] * 5
    drawn = balanced_random_sets(sets, classes=10, rng=np.random.default_rng(0))
    assert [len(s) for s in drawn] == [len(s) for s in sets]
    usage = np.bincount([j for s in drawn for j in s], minlength=10)
    assert usage.max() - usage.min() <= 1


def test_connections_of_tiny_vgg(checkpoint_path: Path):
    checkpoint = read_checkpoint(checkpoint_path)
    chain = connections(checkpoint.model, checkpoint, LAYERS)
    assert [(c.module, c.source, c.target, c.inputs_per_unit) for c in chain] == [
        ("features.4", "features.2", "features.6", 1),
        ("features.8", "features.6", "features.10", 1),
        ("classifier.0", "features.10", "classifier.1", 16),  # 16 channels × 4×4 positions
        ("classifier.2", "classifier.1", None, 1),
    ]


def test_layers_that_are_not_consecutive_are_refused(checkpoint_path: Path):
    checkpoint = read_checkpoint(checkpoint_path)
    with pytest.raises(LayerError, match="not consecutive"):
        connections(checkpoint.model, checkpoint, ["features.2", "features.10"])


def test_afcc_masks_follow_the_rule_and_survive_fine_tuning(
    checkpoint_path, clusters_path, tmp_path
):
    output = tmp_path / "pruned.safetensors"
    result = run_prune(
        checkpoint_path,
        clusters_path,
        output,
        PruneConfig(finetune=FinetuneConfig(epochs=1), device="cpu"),
    )
    sets = label_sets(clusters_path)
    pruned = read_checkpoint(output)
    masks = masks_of(pruned)
    assert set(masks) == {
        "features.4.weight",
        "features.8.weight",
        "classifier.0.weight",
        "classifier.2.weight",
    }
    expected = unit_mask(sets["features.6"], sets["features.10"])
    assert torch.equal(masks["features.8.weight"][:, :, 0, 0], expected)
    assert torch.equal(masks["classifier.2.weight"], output_mask(sets["classifier.1"], 10))
    weights = dict(pruned.model.named_parameters())
    for name, mask in masks.items():
        assert not weights[name][~mask].any(), f"{name} regrew pruned weights while fine-tuning"
    for layer in result.layers:
        mask = masks[layer.module + ".weight"]
        assert layer.dilution == pytest.approx(1 - mask.float().mean().item())
    record = pruned.metadata["pruning"]
    assert record["method"] == "afcc" and record["accuracy_after"] == result.accuracy_after
    assert 0 <= result.accuracy_before <= 1 and result.dense_accuracy > 0.5


def test_controls_match_afcc_dilution(checkpoint_path, clusters_path, tmp_path):
    runs = {
        method: run_prune(
            checkpoint_path,
            clusters_path,
            tmp_path / f"{method}.safetensors",
            PruneConfig(method=method, device="cpu"),
        )
        for method in ("afcc", "random", "magnitude")
    }
    afcc = {layer.module: layer.dilution for layer in runs["afcc"].layers}
    magnitude = {layer.module: layer.dilution for layer in runs["magnitude"].layers}
    assert magnitude == pytest.approx(afcc)
    random = {layer.module: layer.dilution for layer in runs["random"].layers}
    assert random["classifier.2"] == pytest.approx(afcc["classifier.2"])  # same set sizes
    for module in afcc:
        assert abs(random[module] - afcc[module]) <= 0.35


def test_clusters_of_another_checkpoint_are_refused(trained, clusters_path, tmp_path):
    with pytest.raises(InputFileError, match="another checkpoint"):
        run_prune(trained.best_output, clusters_path, tmp_path / "x.safetensors")


def test_cli_prune_json(checkpoint_path, clusters_path, tmp_path):
    output = tmp_path / "cli.safetensors"
    result = invoke(
        "prune",
        str(checkpoint_path),
        "--clusters",
        str(clusters_path),
        "--method",
        "afcc",
        "--layers",
        "features.6,features.10",
        "-o",
        str(output),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {"method", "accuracy_before", "accuracy_after", "layers"} <= set(payload)
    assert [layer["layer"] for layer in payload["layers"]] == ["features.10"]
    assert "dilution" in payload["layers"][0]


def test_cli_prune_unknown_method_is_one_line(checkpoint_path, clusters_path, tmp_path):
    result = invoke(
        "prune",
        str(checkpoint_path),
        "--clusters",
        str(clusters_path),
        "--method",
        "best",
        "-o",
        str(tmp_path / "x.safetensors"),
    )
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown method" in result.stderr


def test_groups_are_equal_and_follow_the_labels():
    from snptool.pruning.masks import assign_groups, label_groups

    groups = label_groups(10, 2)
    assert groups == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    sets = [{0, 1}, {7}, {2, 8, 9}, {3}, set(), {6}]
    assigned = assign_groups(sets, groups, "layer")
    assert np.bincount(assigned).tolist() == [3, 3]
    assert assigned[0] == 0 and assigned[1] == 1 and assigned[2] == 1 and assigned[3] == 0
    with pytest.raises(LayerError, match="equal groups"):
        assign_groups(sets[:5], groups, "layer")


def test_afcc_grouped_masks_are_block_diagonal(checkpoint_path, clusters_path, tmp_path):
    output = tmp_path / "grouped.safetensors"
    result = run_prune(
        checkpoint_path,
        clusters_path,
        output,
        PruneConfig(method="afcc-grouped", connections=ConnectionConfig(groups=2), device="cpu"),
    )
    pruned = read_checkpoint(output)
    grouping = pruned.metadata["pruning"]["groups"]
    units = {tap: torch.tensor(u) for tap, u in grouping["units"].items()}
    masks = masks_of(pruned)
    conv = masks["features.8.weight"][:, :, 0, 0]
    assert torch.equal(conv, units["features.10"][:, None] == units["features.6"][None, :])
    output_mask_ = masks["classifier.2.weight"]
    for unit, group in enumerate(units["classifier.1"].tolist()):
        assert output_mask_[:, unit].nonzero().flatten().tolist() == grouping["labels"][group]
    assert all(layer.dilution == pytest.approx(0.5) for layer in result.layers)


def test_probe_classifier_replaces_the_head_and_rebuilds_from_the_file(
    checkpoint_path, clusters_path, tmp_path
):
    probes = clusters_path.parent / "probes.safetensors"
    output = tmp_path / "probe-head.safetensors"
    result = run_prune(
        checkpoint_path,
        clusters_path,
        output,
        PruneConfig(connections=ConnectionConfig(classifier="probe"), device="cpu"),
        layers=["features.6", "features.10"],
        probes_path=probes,
    )
    assert [layer.module for layer in result.layers] == ["body.features.8", "head"]
    pruned = read_checkpoint(output)  # rebuilt from the checkpoint alone
    assert pruned.metadata["arch"]["head"]["tap"] == "features.10"
    head = pruned.model.head.weight
    sets = label_sets(clusters_path)["features.10"]
    expected = output_mask(sets, 10).repeat_interleave(64, dim=1)  # 16 channels × 8×8 positions
    assert torch.equal(masks_of(pruned)["head.weight"], expected)
    assert not head[~expected].any()
    probe = read_tensors(probes)["probe/features.10"].reshape(10, -1)
    torch.testing.assert_close(head[expected], probe[expected])


def test_probe_classifier_needs_the_probe_file(checkpoint_path, clusters_path, tmp_path):
    with pytest.raises(UsageError, match="--probes"):
        run_prune(
            checkpoint_path,
            clusters_path,
            tmp_path / "x.safetensors",
            PruneConfig(connections=ConnectionConfig(classifier="probe")),
        )


def test_cooccurrence_groups_put_labels_served_together_in_one_group():
    from snptool.pruning.masks import cooccurrence_groups

    sets = {"a": [{0, 3}, {0, 3}, {1, 2}, {1, 2}, {0}, {2}, {3, 0}, {2, 1}]}
    assert cooccurrence_groups(sets, classes=4, groups=2, seed=0) == [[0, 3], [1, 2]]


def test_finetune_loss_mixes_cross_entropy_and_distillation():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 5, generator=generator)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    ce = torch.nn.functional.cross_entropy(student, labels)
    plain = FinetuneConfig()
    assert finetune_loss(student, labels, teacher, plain) == pytest.approx(ce.item())
    config = FinetuneConfig(distill=0.25, distill_temperature=2.0)
    p_teacher = np.exp(teacher.numpy() / 2) / np.exp(teacher.numpy() / 2).sum(1, keepdims=True)
    p_student = np.exp(student.numpy() / 2) / np.exp(student.numpy() / 2).sum(1, keepdims=True)
    kl = (p_teacher * np.log(p_teacher / p_student)).sum(1).mean()
    expected = 0.75 * ce.item() + 0.25 * 4 * kl
    assert finetune_loss(student, labels, teacher, config).item() == pytest.approx(expected, 1e-5)
    assert finetune_loss(teacher, labels, teacher, FinetuneConfig(distill=1.0)).item() == (
        pytest.approx(0.0, abs=1e-6)
    )


def mean_kl_to_dense(dense_path: Path, pruned_path: Path) -> float:
    """KL(dense ‖ pruned) of the softmax outputs, averaged over the train split."""
    dense, pruned = read_checkpoint(dense_path), read_checkpoint(pruned_path)
    data = load_checkpoint_data(dense, None, "train", None)
    total, count = 0.0, 0
    with torch.no_grad():
        for images, _ in data.batches(dense.input_spec, 256):
            x = prepare_batch(images, dense.input_spec)
            log_p = torch.log_softmax(dense.model.eval()(x), 1)
            log_q = torch.log_softmax(pruned.model.eval()(x), 1)
            total += float((log_p.exp() * (log_p - log_q)).sum())
            count += len(x)
    return total / count


def test_distillation_pulls_the_pruned_model_towards_the_dense_one(
    checkpoint_path, clusters_path, tmp_path
):
    kl = {}
    for name, distill in (("cross_entropy", 0.0), ("distilled", 1.0)):
        output = tmp_path / f"{name}.safetensors"
        config = PruneConfig(
            method="afcc-grouped",
            connections=ConnectionConfig(groups=2),
            finetune=FinetuneConfig(
                epochs=2, learning_rate=0.02, distill=distill, distill_temperature=2.0
            ),
            device="cpu",
        )
        run_prune(checkpoint_path, clusters_path, output, config, layers=LAYERS[1:])
        kl[name] = mean_kl_to_dense(checkpoint_path, output)
    assert kl["distilled"] < 0.5 * kl["cross_entropy"], kl
    distilled = read_checkpoint(tmp_path / "distilled.safetensors")
    record = distilled.metadata["pruning"]["config"]["finetune"]
    assert record["distill"] == 1.0 and record["distill_temperature"] == 2.0
    weights = dict(distilled.model.named_parameters())
    for name, mask in masks_of(distilled).items():
        assert not weights[name][~mask].any(), f"{name} regrew pruned weights while distilling"


def test_bf16_fine_tuning_keeps_fp32_weights_and_the_masks(
    checkpoint_path, clusters_path, tmp_path
):
    output = tmp_path / "bf16.safetensors"
    config = PruneConfig(
        method="afcc-grouped",
        connections=ConnectionConfig(groups=2),
        finetune=FinetuneConfig(epochs=2, learning_rate=0.02, amp="bf16"),
        device="cpu",
    )
    result = run_prune(checkpoint_path, clusters_path, output, config, layers=LAYERS[1:])
    assert result.accuracy_after > result.accuracy_before  # it trained under autocast
    pruned = read_checkpoint(output)
    assert pruned.metadata["pruning"]["config"]["finetune"]["amp"] == "bf16"
    weights = dict(pruned.model.named_parameters())
    assert {w.dtype for w in weights.values()} == {torch.float32}
    for name, mask in masks_of(pruned).items():
        assert not weights[name][~mask].any(), f"{name} regrew pruned weights under bf16"


def test_fp16_fine_tuning_on_cpu_is_one_line(checkpoint_path, clusters_path, tmp_path):
    output = tmp_path / "fp16.safetensors"
    result = invoke(
        "prune",
        str(checkpoint_path),
        "--clusters",
        str(clusters_path),
        "--finetune-epochs",
        "1",
        "--finetune-amp",
        "fp16",
        "--device",
        "cpu",
        "-o",
        str(output),
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --finetune-amp fp16 needs a CUDA device, not cpu; use --finetune-amp bf16."
    )
    assert not output.exists()


def test_train_layers_are_named_as_in_the_original_network(
    checkpoint_path, clusters_path, tmp_path
):
    probes = clusters_path.parent / "probes.safetensors"
    output = tmp_path / "probe-head.safetensors"
    config = PruneConfig(
        connections=ConnectionConfig(classifier="probe"),
        finetune=FinetuneConfig(epochs=1, train_layers=("features.0", "head"), learning_rate=0.05),
        device="cpu",
    )
    run_prune(
        checkpoint_path,
        clusters_path,
        output,
        config,
        layers=["features.6", "features.10"],
        probes_path=probes,
    )
    dense, pruned = read_tensors(checkpoint_path), read_tensors(output)
    assert not torch.equal(pruned["body.features.0.weight"], dense["features.0.weight"])
    assert torch.equal(pruned["body.features.4.weight"], dense["features.4.weight"])
    probe = read_tensors(probes)["probe/features.10"].reshape(10, -1)
    masked = probe * masks_of(read_checkpoint(output))["head.weight"]
    assert not torch.equal(pruned["head.weight"], masked), "the probe head was not fine-tuned"


def test_unknown_train_layers_are_refused(checkpoint_path, clusters_path, tmp_path):
    config = PruneConfig(
        finetune=FinetuneConfig(epochs=1, train_layers=("features.99",)), device="cpu"
    )
    with pytest.raises(LayerError, match="features.99 names no module"):
        run_prune(checkpoint_path, clusters_path, tmp_path / "x.safetensors", config)


def test_train_layers_all_fine_tunes_every_module(checkpoint_path, clusters_path, tmp_path):
    output = tmp_path / "all.safetensors"
    config = PruneConfig(finetune=FinetuneConfig(epochs=1, train_layers=("all",)), device="cpu")
    run_prune(checkpoint_path, clusters_path, output, config, layers=["features.6", "features.10"])
    dense, pruned = read_tensors(checkpoint_path), read_tensors(output)
    for name in ("features.0.weight", "features.4.weight", "classifier.2.weight"):
        assert not torch.equal(pruned[name], dense[name]), f"{name} was not fine-tuned"


def test_andc_label_sets_are_the_marked_diagonal(make_matrix_file):
    matrices = np.array(
        [
            [[1.0, 0.9, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.5]],  # diagonal 1, .2, .5 of max 1
            [[-1.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, -0.5]],  # maximum ≤ 0: serves none
            [[0.1, 0.0, 0.0], [0.0, 0.1, 4.0], [0.0, 0.0, 2.0]],  # the maximum is off-diagonal
        ],
        dtype=np.float32,
    )
    path = make_matrix_file({"layer": matrices}, ["a", "b", "c"])
    with open_matrix_file(path) as handle:
        group = layer_group(handle, "layer")
        assert diagonal_label_sets(group, 0.3) == [{0, 2}, set(), {2}]
        assert diagonal_label_sets(group, 0.5) == [{0}, set(), set()]  # strictly above
        assert diagonal_label_sets(group, None) == [{0, 2}, set(), {2}]  # no clusters: 0.3


def test_andc_equals_afcc_at_the_clusters_threshold_and_follows_its_own(
    checkpoint_path, clusters_path, tmp_path
):
    masks = {}
    for name, config in {
        "afcc": PruneConfig(device="cpu"),
        "andc": PruneConfig(method="andc", device="cpu"),
        "andc6": PruneConfig(
            method="andc", connections=ConnectionConfig(andc_threshold=0.6), device="cpu"
        ),
    }.items():
        run_prune(checkpoint_path, clusters_path, tmp_path / f"{name}.safetensors", config)
        masks[name] = masks_of(read_checkpoint(tmp_path / f"{name}.safetensors"))
    assert masks["andc"].keys() == masks["afcc"].keys()
    for name, mask in masks["afcc"].items():
        assert torch.equal(masks["andc"][name], mask)
    with open_matrix_file(clusters_path) as handle:
        sets = {name: diagonal_label_sets(layer_group(handle, name), 0.6) for name in LAYERS}
    assert torch.equal(
        masks["andc6"]["features.8.weight"][:, :, 0, 0],
        unit_mask(sets["features.6"], sets["features.10"]),
    )
    assert torch.equal(masks["andc6"]["classifier.2.weight"], output_mask(sets["classifier.1"], 10))
    kept = {name: int(mask.sum()) for name, mask in masks["andc6"].items()}
    assert all(kept[name] <= int(masks["afcc"][name].sum()) for name in kept)
    assert sum(kept.values()) < sum(int(m.sum()) for m in masks["afcc"].values())
