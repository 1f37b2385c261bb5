"""A corpus of crafted files whose structure is intact but whose records lie: the right keys
with wrong types, ranges, lengths or hashes (issue 33), by reader, through the real CLI.

test_bad_inputs.py damages bytes and structure; here every file opens, and its metadata is
what is wrong. Every case must end with exit status 2, one `error: …` line naming the file, no
traceback, no output and its inputs unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from snptool.core.checkpoint import METADATA_KEY
from tests.conftest import Inputs, invoke
from tests.test_bad_inputs import digests, edit_h5, edit_metadata, edit_safetensors, first_layer


def meta(change: Callable[[dict], None]) -> Callable:
    """A checkpoint or probe file whose metadata document `change` edits."""
    return edit_metadata(change)


def tensors(change: Callable[[dict], None]) -> Callable:
    """A safetensors file whose tensors `change` edits (metadata kept)."""
    return lambda t, h: change(t)


def scale_weights(factor: float) -> Callable[[dict], None]:
    def change(t: dict) -> None:
        for key, value in t.items():
            if value.is_floating_point() and "running" not in key:
                t[key] = (value * factor).contiguous()

    return change


def set_running_var(value: float) -> Callable[[dict], None]:
    def change(t: dict) -> None:
        key = next(k for k in t if k.endswith("running_var"))
        t[key] = t[key].clone()
        t[key][0] = value

    return change


def set_in(path: str, value) -> Callable[[dict], None]:
    """Set a dotted path of a metadata document ("input.mean"), creating dicts on the way."""

    def change(document: dict) -> None:
        *parents, leaf = path.split(".")
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return change


def drop(path: str) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        *parents, leaf = path.split(".")
        node = document
        for key in parents:
            node = node[key]
        del node[leaf]

    return change


CHECKPOINT_RECORDS = {
    "kwargs_list": meta(set_in("arch.kwargs", [1, 2])),
    "kwargs_string": meta(set_in("arch.kwargs", "num_classes=10")),
    "spec_number": meta(set_in("arch.spec", 3)),
    "mean_string": meta(set_in("input.mean", "a")),
    "mean_scalar": meta(set_in("input.mean", 0.5)),
    "mean_two_of_three": meta(set_in("input.mean", [0.5, 0.5])),
    "mean_text_items": meta(set_in("input.mean", ["a", "b", "c"])),
    "std_zero": meta(set_in("input.std", [0.0])),
    "std_nan": meta(set_in("input.std", [float("nan")])),
    "height_string": meta(set_in("input.height", "32")),
    "height_zero": meta(set_in("input.height", 0)),
    "height_too_small": meta(set_in("input.height", 2)),
    "height_absurd": meta(set_in("input.height", 10**9)),
    "channels_four": meta(set_in("input.channels", 4)),
    "channels_disagree": meta(lambda d: d["input"].update(channels=1, mean=[0.5], std=[0.5])),
    "input_list": meta(set_in("input", [3, 32, 32])),
    "training_list": meta(set_in("training", [1, 2])),
    "training_string": meta(set_in("training", "done")),
    "history_string": meta(set_in("training.history", "epochs")),
    "data_number": meta(set_in("data", 3)),
    "num_classes_string": meta(set_in("num_classes", "10")),
    "class_names_duplicate": meta(lambda d: d.update(class_names=["a"] * 10)),
    "class_name_empty": meta(lambda d: d["class_names"].__setitem__(0, "")),
    "class_name_number": meta(lambda d: d["class_names"].__setitem__(0, 7)),
    "shapes_missing_key": meta(set_in("arch.shapes", {"features.0": {"in": 3}})),
    "shapes_string": meta(set_in("arch.shapes", {"features.0": {"in": "3", "out": 8}})),
    "head_missing_key": meta(set_in("arch.head", {"tap": "features.2"})),
    "channel_map_out_of_range": meta(
        set_in(
            "arch.channel_maps",
            {"features.1": {"in_width": 4, "out_width": 4, "kept_in": [9], "kept_out": [0]}},
        )
    ),
    "resized_absurd": meta(set_in("arch.resized", {"modules": {}, "tensors": {"x": [10**12]}})),
    "absurd_widths": meta(set_in("arch.kwargs.width_factor", 4000)),
    "unknown_kwarg": meta(set_in("arch.kwargs.no_such_argument", 1)),
    "file_factory_without_hash": meta(set_in("arch", {"spec": "model.py:net", "kwargs": {}})),
    "pruning_connections_string": meta(set_in("pruning", {"connections": "all"})),
    "pruning_groups_beyond": meta(
        set_in("pruning", {"groups": {"count": 2, "units": {"features.2": [0, 5]}}})
    ),
    "negative_bn_variance": tensors(set_running_var(-1.0)),
    "infinite_bn_variance": tensors(set_running_var(float("inf"))),
    "weights_scaled_1e38": tensors(scale_weights(1e38)),
}

PROBE_RECORDS = {
    "checkpoint_hash_short": meta(set_in("checkpoint.sha256", "abc")),
    "checkpoint_hash_number": meta(set_in("checkpoint.sha256", 12)),
    "no_checkpoint_hash": meta(drop("checkpoint.sha256")),
    "taps_empty": meta(set_in("taps", [])),
    "tap_units_string": meta(lambda d: d["taps"][0].update(units="8")),
    "tap_accuracy_above_one": meta(lambda d: d["taps"][0].update(test_accuracy=3.0)),
    "tap_named_twice": meta(lambda d: d["taps"].append(dict(d["taps"][0]))),
    "class_names_duplicate": meta(lambda d: d.update(class_names=["a"] * 10)),
    "class_names_other": meta(lambda d: d.update(class_names=[f"c{i}" for i in range(10)])),
    "no_data_record": meta(drop("data")),
    "data_train_number": meta(set_in("data.train", 4)),
}


def root_record(change: Callable[[dict], None]) -> Callable[[h5py.File], None]:
    def edit(handle: h5py.File) -> None:
        record = json.loads(handle.attrs["snptool"])
        change(record)
        handle.attrs["snptool"] = json.dumps(record)

    return edit


def clusters_array(name: str, make: Callable[[np.ndarray], np.ndarray]):
    def edit(handle: h5py.File) -> None:
        group = first_layer(handle)["clusters"]
        value = make(group[name][()])
        del group[name]
        group.create_dataset(name, data=value)

    return edit


def delete_all_layers(handle: h5py.File) -> None:
    for name in list(handle["layers"]):
        del handle["layers"][name]


MATRIX_RECORDS = {
    "checkpoint_hash_short": root_record(set_in("checkpoint.sha256", "abc")),
    "checkpoint_hash_list": root_record(set_in("checkpoint.sha256", [1, 2])),
    "checkpoint_record_string": root_record(set_in("checkpoint", "model.safetensors")),
    "split_unknown": root_record(set_in("split", "dev")),
    "empty_layer_list": delete_all_layers,
    "order_string": lambda h: first_layer(h).attrs.__setitem__("order", "first"),
    "order_negative": lambda h: first_layer(h).attrs.__setitem__("order", -1),
    "units_attribute_wrong": lambda h: first_layer(h)["matrix"].attrs.__setitem__("units", 999),
    "class_names_duplicate": lambda h: h.attrs.__setitem__(
        "class_names", np.array(["a"] * len(h.attrs["class_names"]), dtype=h5py.string_dtype())
    ),
}

CLUSTERED_RECORDS = {
    "negative_unit_offsets": clusters_array("unit_offsets", lambda a: a - 1),
    "negative_cluster_offsets": clusters_array("cluster_offsets", lambda a: -a),
    "members_outside_the_labels": clusters_array("members", lambda a: a + 100),
    "members_as_floats": clusters_array("members", lambda a: a.astype(np.float32) + 0.5),
    "count_too_short": clusters_array("count", lambda a: a[:-1]),
    "maximum_nan": clusters_array("maximum", lambda a: np.full_like(a, np.nan)),
    "no_members": lambda h: first_layer(h)["clusters"].__delitem__("members"),
    "statistics_not_json": lambda h: first_layer(h)["clusters"].attrs.__setitem__(
        "statistics", "{snr: high"
    ),
    "statistics_strings": lambda h: first_layer(h)["clusters"].attrs.__setitem__(
        "statistics", json.dumps({"units": "8", "snr": "high"})
    ),
}


def onnx_metadata(change: Callable[[dict], object]) -> Callable[[Inputs, Path], Path]:
    """The exported graph with its metadata document replaced by what `change` returns."""

    def make(inputs: Inputs, folder: Path) -> Path:
        graph = onnx.load(str(inputs.exported))
        props = {p.key: p.value for p in graph.metadata_props}
        document = json.loads(props[METADATA_KEY])
        replaced = change(document)
        for prop in graph.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = json.dumps(document if replaced is None else replaced)
        path = folder / "bad.onnx"
        onnx.save(graph, str(path))
        return path

    return make


def failing_graph(inputs: Inputs, folder: Path) -> Path:
    """A valid graph that onnxruntime cannot run on its input (a Reshape that cannot fit)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 10])  # 3072 = 10·307.2
    node = helper.make_node("Reshape", ["input", "shape"], ["logits"])
    graph = helper.make_graph([node], "fails", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exported = onnx.load(str(inputs.exported))
    for prop in exported.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    path = folder / "bad.onnx"
    onnx.save(model, str(path))
    return path


ONNX_RECORDS = {
    "metadata_list": onnx_metadata(lambda d: [1, 2]),
    "mean_string": onnx_metadata(lambda d: d["input"].update(mean="a")),
    "input_number": onnx_metadata(lambda d: d.update(input=3)),
    "parity_list": onnx_metadata(lambda d: d.update(parity=[1])),
    "class_names_short": onnx_metadata(lambda d: d.update(class_names=["a", "b"], num_classes=2)),
    "class_names_duplicate": onnx_metadata(lambda d: d.update(class_names=["a"] * 10)),
    "input_size_disagrees": onnx_metadata(lambda d: d["input"].update(height=64, width=64)),
    "parity_data_split_seed_string": onnx_metadata(
        lambda d: d["parity"]["data"].update(split_seed="0")
    ),
}


def json_file(content: object) -> Callable[[Inputs, Path], Path]:
    def make(inputs: Inputs, folder: Path) -> Path:
        path = folder / "bad.json"
        path.write_text(json.dumps(content))
        return path

    return make


LATENCY_ROW = {"path": "a.onnx", "batch": 1, "p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.5}
REPORT_JSON = {
    "latency_p50_string": [{**LATENCY_ROW, "p50_ms": "fast", "ratio": 1.0}],
    "latency_batch_zero": [{**LATENCY_ROW, "batch": 0, "ratio": 1.0}],
    "latency_ratio_missing": [LATENCY_ROW],
    "export_params_string": {"max_abs_diff": 0.0, "macs": 10, "params": "many"},
    "prune_layers_string": {"method": "units", "layers": "all", "accuracy_after": 0.9},
    "committee_members_empty": {"committee_accuracy": 0.9, "members": [], "data": "d"},
    "sweep_fit_string": {"points": [{"d1": 8, "error": 0.1}], "fit": "power law"},
    "heads_labels_number": [{"label_heads": {}, "layer": "x", "heads": 3}],
}


Case = tuple[str, str, Callable[[Inputs, Path], Path]]


def _st(which: str, edit) -> Callable[[Inputs, Path], Path]:
    return lambda i, f: edit_safetensors(getattr(i, which), f / "bad.safetensors", edit)


def _h5(which: str, edit) -> Callable[[Inputs, Path], Path]:
    return lambda i, f: edit_h5(getattr(i, which), f / "bad.h5", edit)


CASES: list[Case] = [
    *(("checkpoint", name, _st("checkpoint", edit)) for name, edit in CHECKPOINT_RECORDS.items()),
    *(("probe_file", name, _st("probes", edit)) for name, edit in PROBE_RECORDS.items()),
    *(("matrix_file", name, _h5("matrices", edit)) for name, edit in MATRIX_RECORDS.items()),
    *(("clustered", name, _h5("clustered", edit)) for name, edit in CLUSTERED_RECORDS.items()),
    *(("onnx_metadata", name, make) for name, make in ONNX_RECORDS.items()),
    ("onnx_metadata", "fails_in_onnxruntime", failing_graph),
    *(("report_json", name, json_file(content)) for name, content in REPORT_JSON.items()),
]


def command(reader: str, bad: Path, inputs: Inputs, output: Path) -> list[str]:
    return [
        str(a)
        for a in {
            "checkpoint": ["evaluate", bad, "--json"],
            "probe_file": ["matrix", inputs.checkpoint, bad, "-o", output],
            "matrix_file": ["clusters", bad, "-o", output],
            "clustered": ["report", bad, "-o", output],
            "onnx_metadata": ["evaluate", bad, "--json"],
            "report_json": ["report", bad, "-o", output],
        }[reader]
    ]


@pytest.mark.parametrize(
    ("reader", "make"), [(c[0], c[2]) for c in CASES], ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_bad_record(reader: str, make: Callable, valid: Inputs, tmp_path: Path) -> None:
    inputs_dir, out_dir = tmp_path / "in", tmp_path / "out"
    inputs_dir.mkdir()
    out_dir.mkdir()
    bad = make(valid, inputs_dir)
    output = out_dir / {"clustered": "out.html", "report_json": "out.html"}.get(reader, "out.h5")
    before = digests(bad)
    result = invoke(*command(reader, bad, valid, output))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert bad.name in lines[0], lines[0]  # the line names the file
    assert "Traceback" not in result.output and result.stdout == ""
    assert list(out_dir.iterdir()) == []
    assert digests(bad) == before


def test_the_valid_files_pass_the_same_commands(valid: Inputs, tmp_path: Path) -> None:
    """Each reader's command on the unchanged file succeeds: the refusals above come from the
    damage alone."""
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps([{**LATENCY_ROW, "ratio": 1.0}]))
    for reader, path in [
        ("checkpoint", valid.checkpoint),
        ("probe_file", valid.probes),
        ("matrix_file", valid.matrices),
        ("clustered", valid.clustered),
        ("onnx_metadata", valid.exported),
        ("report_json", latency),
    ]:
        output = tmp_path / f"{reader}.out"
        result = invoke(*command(reader, path, valid, output))
        assert result.exit_code == 0, (reader, result.stderr[-1500:])


def test_weights_are_still_checked_after_the_scaled_case(valid: Inputs) -> None:
    """The 1e38 case refuses because the logits overflow, not because a weight is infinite."""
    from safetensors import safe_open

    with safe_open(str(valid.checkpoint), framework="pt") as handle:
        weights = [handle.get_tensor(k) for k in handle.keys()]  # noqa: SIM118
    largest = max(float(w.abs().max()) for w in weights if w.is_floating_point())
    assert torch.isfinite(torch.tensor(largest * 1e38, dtype=torch.float32))
