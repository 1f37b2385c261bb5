"""The prune method table: one row per method, checked before anything loads."""

from __future__ import annotations

import pytest

from snptool.config import PRUNE_METHODS, ConnectionConfig, PruneConfig, RemovalConfig
from snptool.errors import UsageError
from snptool.pruning.methods import METHODS, PrunePlan


def test_every_method_has_one_row_in_config_order():
    assert tuple(METHODS) == PRUNE_METHODS
    assert all(callable(method.plan) and callable(method.label_sets) for method in METHODS.values())


def test_the_rows_say_what_each_method_needs():
    weights = {"magnitude-channels", "taylor", "lamp", "group-norm", "random-channels"}
    assert {n for n, m in METHODS.items() if not m.needs_clusters} == weights
    assert {n for n, m in METHODS.items() if m.needs_batches} == {"taylor"}
    assert {n for n, m in METHODS.items() if m.removes_channels} == weights | {"units"}
    assert {n for n, m in METHODS.items() if m.keeps_classifier} == weights | {"units", "heads"}


@pytest.mark.parametrize("name", ["afcc", "andc", "heads", "units"])
def test_a_method_that_reads_label_sets_needs_the_clusters_file(name):
    with pytest.raises(UsageError, match=f"--method {name} reads the units' label sets"):
        METHODS[name].check(PruneConfig(method=name), None)


@pytest.mark.parametrize("name", ["heads", "units", "lamp"])
def test_a_method_that_keeps_the_classifier_refuses_the_probe_classifier(name):
    config = PruneConfig(method=name, connections=ConnectionConfig(classifier="probe"))
    with pytest.raises(UsageError, match="keeps the model's classifier"):
        METHODS[name].check(config, "clusters.h5")


@pytest.mark.parametrize("name", ["afcc", "afcc-grouped", "magnitude", "heads"])
def test_a_method_that_does_not_remove_channels_refuses_a_mac_target(name):
    config = PruneConfig(method=name, removal=RemovalConfig(target_macs=0.5))
    with pytest.raises(UsageError, match=f"--method {name} is sized by its own rule"):
        METHODS[name].check(config, "clusters.h5")
    METHODS["units"].check(PruneConfig(method="units", removal=config.removal), "clusters.h5")


def test_a_plan_names_its_parts():
    fields = [f for f in PrunePlan.__dataclass_fields__]
    assert fields == ["model", "arch", "masks", "connections", "layers", "record"]
