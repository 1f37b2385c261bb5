"""Frozen configuration dataclasses: the one home of every default.

The CLI reads its flag defaults from these classes, and every output records the resolved
config it was made with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from snptool.errors import UsageError

PAPER_MEAN = (0.5,)  # one value: broadcast to every channel, so 1-channel inputs work too
PAPER_STD = (0.5,)


def setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A config field with its command-line help, and its flag where that is not `--field-name`
    (`--name/--no-name` for a switch): the CLI derives the option from it (cli/config_flags.py)."""
    metadata = {"help": help} if flag is None else {"help": help, "flag": flag}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return field(default=default, metadata=metadata)


def settings_class(cls: type) -> type:
    """`@dataclass(frozen=True)`, whose instances first pass the checks every setting shares
    (`check_settings`), then their own `__post_init__`."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        check_settings(self)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    return dataclass(frozen=True)(cls)


MAX_SEED = 2**63 - 1  # what every generator snptool seeds (torch, numpy) accepts


def check_settings(config: Any) -> None:
    """Numbers must be finite, seeds in [0, 2^63), batch sizes at least 1: a flag's value that
    would end in an overflow or a division by zero deep inside a command is refused here."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        flag = item.metadata.get("flag", "--" + item.name.replace("_", "-")).split("/")[0]
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UsageError(f"{flag} must be a finite number, not {value}.")
        integers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if item.name.endswith(("seed", "seeds")) and any(not 0 <= v <= MAX_SEED for v in integers):
            raise UsageError(f"{flag} must be a whole number in [0, 2^63), not {value}.")
        if item.name.endswith(("batch_size", "batch_sizes")) and any(v < 1 for v in integers):
            raise UsageError(f"{flag} must be at least 1, not {value}.")


@settings_class
class InputSpec:
    """What the model expects: applied to pixels scaled to [0, 1], then (x - mean) / std.

    The papers' scaling x·2/255 − 1 is mean = std = 0.5. `resize` (shorter side before a
    centre crop to height × width) applies to data sets of image files; None resizes directly.
    """

    channels: int = 3
    height: int = 32
    width: int = 32
    mean: tuple[float, ...] = PAPER_MEAN
    std: tuple[float, ...] = PAPER_STD
    resize: int | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise UsageError(f"input channels must be 1 or 3, not {self.channels}.")
        if self.height < 1 or self.width < 1:
            raise UsageError(f"input size {self.height}x{self.width} must be positive.")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) == 1:
                values = values * self.channels
            if len(values) != self.channels:
                raise UsageError(
                    f"input {name} has {len(values)} values but the input has "
                    f"{self.channels} channels; give 1 or {self.channels} values."
                )
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.std):
            raise UsageError("input std values must be positive.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0


@settings_class
class DataConfig:
    """How a data spec becomes train and test splits.

    `test_fraction` and `split_seed` set the seeded per-class split of data sets that have no
    test split; None takes the values a checkpoint was trained with (`inherit`), else
    DEFAULT_TEST_FRACTION and DEFAULT_SPLIT_SEED, so every command sees the training split.

    `classes` (names or indices) or `num_classes_subset` (the first N) restrict the data set to
    some of its labels, relabelled 0…k−1 in the data set's own class order; None takes the
    subset a checkpoint was trained on.
    """

    test_fraction: float | None = setting(
        None,
        "Test share where a data set has no test split [default: the checkpoint's, else 0.2].",
    )
    split_seed: int | None = setting(
        None, "Seed of that train/test split [default: the checkpoint's, else 0]."
    )
    root: str | None = setting(
        None,
        "Folder of downloadable data sets (default ~/.cache/snptool/data).",
        flag="--data-root",
    )
    download: bool = setting(
        False, "Fetch a missing torchvision data set (needs network).", flag="--download"
    )
    workers: int = setting(0, "Data-loading worker processes for image folders.")
    classes: tuple[str, ...] | None = setting(
        None,
        "Keep only these labels (names or indices, e.g. airplane,cat,ship), relabelled in the "
        "data set's order [default: the checkpoint's subset, else all].",
    )
    num_classes_subset: int | None = setting(
        None, "Keep only the data set's first N labels (see --classes)."
    )
    ignore_class_names: bool = setting(
        False,
        "Use data whose class names differ from the checkpoint's, label i as its class i.",
        flag="--ignore-class-names",
    )

    def __post_init__(self) -> None:
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 1.0:
            raise UsageError(f"test fraction must lie in (0, 1), not {self.test_fraction}.")
        if self.workers < 0:
            raise UsageError(f"workers must be >= 0, not {self.workers}.")
        if self.classes is not None and self.num_classes_subset is not None:
            raise UsageError("give either --classes or --num-classes-subset, not both.")
        if self.classes is not None and len(self.classes) < 2:
            raise UsageError(f"a class subset needs at least 2 classes, not {list(self.classes)}.")
        if self.num_classes_subset is not None and self.num_classes_subset < 2:
            raise UsageError(
                f"--num-classes-subset must be at least 2, not {self.num_classes_subset}."
            )

    @property
    def restricts_classes(self) -> bool:
        return self.classes is not None or self.num_classes_subset is not None

    def inherit(self, metadata: dict[str, Any]) -> DataConfig:
        """Fill unset split and class-subset settings from a checkpoint's training record."""
        record = ((metadata or {}).get("training") or {}).get("test_data") or {}
        return dataclasses.replace(
            self,
            test_fraction=self.test_fraction
            if self.test_fraction is not None
            else record.get("test_fraction"),
            split_seed=self.split_seed if self.split_seed is not None else record.get("split_seed"),
            classes=self.classes
            if self.restricts_classes or not record.get("classes")
            else tuple(record["classes"]),
        )

    @property
    def split_fraction(self) -> float:
        return DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction

    @property
    def seed(self) -> int:
        return DEFAULT_SPLIT_SEED if self.split_seed is None else self.split_seed


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
AMP_MODES = ("off", "bf16", "fp16")


@settings_class
class TrainConfig:
    """The research's recipe (METHODS.md §3): SGD + Nesterov, lr × q every Δt epochs, batch 100.

    Decision: the papers give no single learning rate / momentum / weight decay for every
    network; these defaults are a common CIFAR choice and are recorded with every result.

    The transformer recipe (the CCT authors'; README, train): `optimizer` "adamw" (torch's
    AdamW, betas (0.9, 0.999), `weight_decay` decoupled; momentum and Nesterov unused),
    `schedule` "cosine" (per step from lr down to `min_lr` after the warm-up; lr_decay and
    lr_step unused), `warmup_epochs` of per-step linear warm-up from `min_lr` to the schedule's
    lr (either schedule), `label_smoothing` ε of the cross-entropy, and `mixup` / `cutmix`
    Beta(α, α) mixing of each batch with its reverse with probability `mix_prob` (both on:
    one of the two per batch, p ½). Without `decay_norm_bias` biases and norm scales (1-D
    parameters) are not decayed, as in timm. Decision: `min_lr` defaults to the CCT authors'
    1e-5.

    Speed: `amp` "bf16" / "fp16" runs the training forward pass under autocast (fp16 with a
    gradient scaler, CUDA only); `channels_last` stores conv models NHWC on CUDA (ignored on
    CPU). Under torchrun `batch_size` is the global batch, split evenly over the processes.
    """

    epochs: int = setting(30, "Epochs in total (a resumed run continues to this).")
    batch_size: int = setting(100, "Mini-batch size.")
    learning_rate: float = setting(0.01, "Initial learning rate.", flag="--lr")
    momentum: float = setting(0.9, "SGD momentum.")
    nesterov: bool = setting(True, "Nesterov momentum.")
    weight_decay: float = setting(5e-4, "L2 weight decay.")
    lr_decay: float = setting(0.6, "q: lr is multiplied by q every --lr-step epochs.")
    lr_step: int = setting(20, "Δt: epochs between lr decays.")
    augment: bool = setting(True, "Random translation and flip.")
    translate: int = setting(4, "Largest translation in pixels.")
    flip: bool = setting(True, "Random horizontal flip.")
    seed: int = setting(0, "Seed of initialisation and shuffling.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    eval_batch_size: int = setting(500, "Batch size of the per-epoch test.")
    optimizer: str = setting("sgd", "sgd or adamw (decoupled --weight-decay).")
    schedule: str = setting("step", "step (--lr-decay every --lr-step) or cosine to --min-lr.")
    min_lr: float = setting(1e-5, "The cosine's last lr and the warm-up's first.")
    warmup_epochs: int = setting(0, "Epochs of per-step linear lr warm-up.")
    label_smoothing: float = setting(0.0, "Label smoothing ε of the loss.")
    mixup: float = setting(0.0, "Mixup's Beta(α, α) α (0: off).")
    cutmix: float = setting(0.0, "CutMix's α (0: off); with --mixup, one per batch.")
    mix_prob: float = setting(1.0, "Probability that a batch is mixed.")
    decay_norm_bias: bool = setting(True, "Weight decay on biases and norm scales.")
    amp: str = setting("off", "Autocast the training pass: off, bf16, fp16 (CUDA).")
    channels_last: bool = setting(True, "NHWC conv models on CUDA.")

    def __post_init__(self) -> None:
        check_sgd(self)
        check_device(self.device)
        floor_used = self.schedule == "cosine" or self.warmup_epochs > 0
        _require(
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.lr_step >= 1, f"lr step must be at least 1 epoch, not {self.lr_step}"),
            (self.translate >= 0, f"translate must be >= 0 pixels, not {self.translate}"),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}",
            ),
            (
                self.schedule in SCHEDULES,
                f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}",
            ),
            (self.min_lr >= 0, f"min lr must be >= 0, not {self.min_lr}"),
            (
                not floor_used or self.min_lr <= self.learning_rate,
                f"min lr {self.min_lr} must not exceed the learning rate {self.learning_rate}",
            ),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, not {self.warmup_epochs}"),
            (
                self.warmup_epochs < self.epochs,
                f"warm-up epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})",
            ),
            (
                0 <= self.label_smoothing < 1,
                f"label smoothing must lie in [0, 1), not {self.label_smoothing}",
            ),
            (self.mixup >= 0, f"mixup alpha must be >= 0 (0: off), not {self.mixup}"),
            (self.cutmix >= 0, f"cutmix alpha must be >= 0 (0: off), not {self.cutmix}"),
            (0 <= self.mix_prob <= 1, f"mix prob must lie in [0, 1], not {self.mix_prob}"),
            (
                self.amp in AMP_MODES,
                f"unknown amp mode {self.amp!r}; use one of {', '.join(AMP_MODES)}",
            ),
        )


@settings_class
class EvaluateConfig:
    """Top-1 accuracy on one split."""

    split: str = setting("test", "train, test or all.")
    batch_size: int = setting(500, "Batch size.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")

    def __post_init__(self) -> None:
        check_split(self.split)
        check_device(self.device)


@settings_class
class ImportConfig:
    """How a third-party weights file becomes an snptool checkpoint."""

    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    input: InputSpec = field(default_factory=InputSpec)
    data: str | None = None
    strict: bool = True


@settings_class
class ProbeConfig:
    """The papers' probe recipe (METHODS.md §4): bias-free linear read-out per tapped layer.

    Decision: features are computed once and cached when they fit `memory_budget` (bytes);
    otherwise every epoch streams the data through the frozen network. Both orders of
    mini-batches are the same, so both give the same probe.
    """

    epochs: int = setting(200, "Probe epochs.")
    batch_size: int = setting(100, "Mini-batch size.")
    learning_rate: float = setting(0.01, "Initial learning rate.", flag="--lr")
    momentum: float = setting(0.975, "SGD momentum.")
    nesterov: bool = setting(True, "Nesterov momentum.")
    weight_decay: float = setting(1e-3, "L2 weight decay.")
    lr_decay: float = setting(0.975, "lr × this every epoch.")
    seed: int = setting(0, "Seed of initialisation and shuffling.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    memory_budget: str = setting(
        "4GiB", "Cache features up to this size (e.g. 4GiB), else stream them."
    )
    forward_batch_size: int = setting(250, "Batch size of the frozen network's passes.")
    tap_input: bool = setting(False, "Tap the modules' inputs, not outputs.", flag="--tap-input")

    def __post_init__(self) -> None:
        check_sgd(self)
        check_device(self.device)
        _require(
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.forward_batch_size >= 1, "forward batch size must be at least 1"),
        )
        parse_bytes(self.memory_budget)

    @property
    def memory_budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)


@settings_class
class MatrixConfig:
    """Single-unit matrices (METHODS.md §5). Decision: `split` train (the papers' text) or
    test (the authors' code)."""

    split: str = setting("train", "Means over train, test or all.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    forward_batch_size: int = setting(250, "Batch size if the network must run.")
    units_per_chunk: int = setting(0, "Units per computation chunk (0: from a 256 MiB budget).")

    def __post_init__(self) -> None:
        check_split(self.split)
        check_device(self.device)
        if self.units_per_chunk < 0:
            raise UsageError("units per chunk must be >= 0 (0 picks it from a 256 MiB budget).")


@settings_class
class ClustersConfig:
    """The cluster rule (METHODS.md §6): elements strictly above `threshold` × the unit's max."""

    threshold: float = setting(0.3, "Mark elements strictly above threshold × the unit's maximum.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise UsageError(f"threshold must lie in [0, 1), not {self.threshold}.")


OVERLAP_MEASURES = ("jaccard", "coefficient")


@settings_class
class HeadsConfig:
    """The head report (METHODS.md §7). Decision: `overlap` of two heads' label sets A, B is
    the Jaccard index |A ∩ B| / |A ∪ B| or the overlap coefficient |A ∩ B| / min(|A|, |B|)."""

    overlap: str = setting("jaccard", "Overlap of two label sets: jaccard or coefficient.")

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP_MEASURES:
            raise UsageError(
                f"unknown overlap {self.overlap!r}; use one of {', '.join(OVERLAP_MEASURES)}."
            )


STRUCTURED_METHODS = (
    "units",
    "magnitude-channels",
    "taylor",
    "lamp",
    "group-norm",
    "random-channels",
)
WEIGHT_CRITERIA = STRUCTURED_METHODS[1:]  # Torch-Pruning's: they read no matrices
PRUNE_METHODS = (
    "afcc",
    "andc",
    "afcc-grouped",
    "random",
    "magnitude",
    "heads",
    *STRUCTURED_METHODS,
)
UNIT_RANKING_KEYS = ("labels", "maximum", "noise", "margin", "magnitude")
# `units`' defaults: the best ranking the criteria screen measured (issue 24): L1 with every
# label keeping two channels per group tied L1 on ResNet-20 and VGG-11/2, where the research's
# label count (RESEARCH_RANKING) lost 4.7 and 0.9 points
DEFAULT_RANKING, DEFAULT_COVERAGE = ("magnitude",), 2
RESEARCH_RANKING = ("labels", "maximum", "noise")
ALLOCATIONS = ("deepest-first", "uniform", "global", "margin-mass")  # pruning/allocation.py
LABEL_GROUPINGS = ("cooccurrence", "contiguous")


@settings_class
class ConnectionConfig:
    """The connection methods' settings (METHODS.md §7–§8).

    `afcc` keeps a connection between consecutive analysed units iff their label sets (the
    union of their clusters) intersect, and a unit's connection to output label k iff k is in
    its label set. `andc` (METHODS.md §7) applies that rule to each unit's marked diagonal
    labels (diagonal element strictly above `andc_threshold` × the unit's maximum; default the
    clusters' threshold, at which they equal the clusters' unions). `random` draws balanced
    random label sets of the same sizes (the papers' control); `magnitude` removes the smallest
    kernel slices to afcc's dilution per layer. `classifier="probe"` replaces the network's
    classifier by the last listed layer's probe (the authors' choice). `afcc-grouped` (our
    extension) splits the labels into `groups` groups (`label_grouping`: by how often units
    serve labels together, or contiguous label ranges), gives each unit the group holding most
    of its labels (equal group sizes), and keeps only connections inside a group, so export can
    use grouped convolutions.
    """

    classifier: str = setting(
        "model", "model (keep it) or probe (the last layer's probe, as the authors)."
    )
    andc_threshold: float | None = setting(
        None, "andc: diagonal threshold (default: the clusters' threshold)."
    )
    groups: int = setting(2, "Label groups of afcc-grouped (divides every layer's units).")
    label_grouping: str = setting(
        "cooccurrence", "afcc-grouped label groups: cooccurrence or contiguous."
    )

    def __post_init__(self) -> None:
        _require(
            (
                self.classifier in ("model", "probe"),
                f"classifier must be model or probe, not {self.classifier!r}",
            ),
            (self.label_grouping in LABEL_GROUPINGS, f"label grouping is one of {LABEL_GROUPINGS}"),
            (self.groups >= 2, f"groups must be at least 2, not {self.groups}"),
            (
                self.andc_threshold is None or 0 <= self.andc_threshold < 1,
                f"andc threshold must be in [0, 1), not {self.andc_threshold}",
            ),
        )


@settings_class
class RemovalConfig:
    """How much the head and channel methods remove, and in which order (structured.py).

    `heads` removes whole attention heads and feed-forward nodes of the listed head / node
    taps: those serving no label, then those serving the fewest until `remove_fraction` of
    each layer is gone, so export builds a smaller graph.
    `units` removes whole channels / nodes of the groups the listed taps read, on any
    architecture (Torch-Pruning's DependencyGraph couples residual streams and MBConv hidden
    channels, which are scored and removed together), ranked by `ranking` (fewest labels
    served, weakest maximum, most noise, smallest share of the correct-label margin, smallest
    `magnitude` of the weights; `coverage` keeps that many channels of every label a group
    serves; default: magnitude with coverage 2, the best the criteria screen measured),
    `remove_fraction` of every group or the share that brings the MACs
    to `target_macs` × the dense MACs; `magnitude-channels`, `taylor` (on `taylor_batches`
    training batches), `lamp`, `group-norm` and `random-channels` (drawn with the seed) rank
    the same groups by Torch-Pruning's importance estimators, as baselines (`group-norm` after
    `sparsity_epochs` of training with its sparsity regulariser of strength `sparsity_reg`, as
    DepGraph prescribes, when asked: sparsity.py); `round_to`
    rounds every group's kept channels to a multiple (faster kernels) and keeps at least
    `min_channels` per group (a target that the floor makes unreachable is refused, never
    chased by collapsing groups); the weight criteria prune every prunable group when no taps
    are listed, and `units` orders the groups without matrices by the weight criterion `fill`
    when it is given (otherwise only the tapped groups are pruned); Torch-Pruning's grouping
    may use at most `grouping_seconds` of CPU time (0: no limit; **Decision**: 120 s, it never
    took more than a few seconds on a network it could prune, and runs without end on Swin);
    `allocation` `deepest-first` steps the deepest groups down to their next rounded width until
    the MACs meet `target_macs` where the uniform share overshoots it, `uniform` keeps the
    uniform share, `global` and `margin-mass` let the groups' shares differ (allocation.py).
    """

    remove_fraction: float = setting(
        0.0, "heads, units, …: remove at least this share of each layer's heads / channels."
    )
    target_macs: float | None = setting(
        None, "units, …: remove channels until MACs ≤ this ratio of the dense MACs."
    )
    ranking: tuple[str, ...] = setting(
        DEFAULT_RANKING,
        "units: removal order keys, first decides (labels, maximum, noise, margin, "
        "magnitude; the research's: labels,maximum,noise).",
    )
    coverage: int = setting(
        DEFAULT_COVERAGE,
        "units: keep at least this many channels serving every label in every group (0: off).",
    )
    taylor_batches: int = setting(4, "taylor: training batches whose gradients score channels.")
    sparsity_epochs: int = setting(
        0,
        "group-norm: first train the dense model this many epochs with Torch-Pruning's "
        "group-norm sparsity regulariser (0: off).",
    )
    sparsity_reg: float = setting(5e-4, "group-norm: the sparsity regulariser's strength.")
    round_to: int = setting(1, "units, …: keep a multiple of this many channels per group.")
    min_channels: int = setting(
        8,
        "units, …: keep at least this many channels per group; a --target-macs that needs "
        "fewer is refused.",
    )
    fill: str | None = setting(
        None,
        "units: also prune the groups without matrices, ordered by this weight criterion "
        "(magnitude-channels, taylor or lamp).",
    )
    grouping_seconds: float = setting(
        120.0, "units, …: CPU seconds Torch-Pruning may take to group the channels (0: no limit)."
    )
    allocation: str = setting(
        "deepest-first",
        "units, …: how --target-macs is shared among the groups: deepest-first (step the "
        "deepest groups down to meet it), uniform (every group the same share), global (one "
        "threshold on the criterion's group-normalised scores) or margin-mass (every group "
        "keeps the same share of its correct-label margin; reads --clusters).",
    )

    def __post_init__(self) -> None:
        _require(
            (
                0 <= self.remove_fraction < 1,
                f"remove fraction must be in [0, 1), not {self.remove_fraction}",
            ),
            (
                self.target_macs is None or 0 < self.target_macs <= 1,
                f"target MACs must be a ratio in (0, 1], not {self.target_macs}",
            ),
            (
                bool(self.ranking) and all(k in UNIT_RANKING_KEYS for k in self.ranking),
                f"ranking keys are some of {', '.join(UNIT_RANKING_KEYS)}, not {self.ranking}",
            ),
            (self.coverage >= 0, f"coverage must be >= 0, not {self.coverage}"),
            (self.taylor_batches >= 1, f"taylor batches must be >= 1, not {self.taylor_batches}"),
            (
                self.sparsity_epochs >= 0 and self.sparsity_reg >= 0,
                "sparsity epochs and regulariser must be >= 0, not "
                f"{self.sparsity_epochs} and {self.sparsity_reg}",
            ),
            (self.round_to >= 1, f"round to must be >= 1, not {self.round_to}"),
            (self.min_channels >= 1, f"min channels must be >= 1, not {self.min_channels}"),
            (
                self.grouping_seconds >= 0,
                f"grouping seconds must be >= 0, not {self.grouping_seconds}",
            ),
            (
                self.fill is None or self.fill in WEIGHT_CRITERIA,
                f"fill is one of {', '.join(WEIGHT_CRITERIA)}, not {self.fill!r}",
            ),
            (
                self.allocation in ALLOCATIONS,
                f"allocation is one of {', '.join(ALLOCATIONS)}, not {self.allocation!r}",
            ),
        )


@settings_class
class FinetuneConfig:
    """Masked fine-tuning after pruning (finetune.py).

    Trains `train_layers` (default: the pruned layers; the other weights frozen, BatchNorm
    running statistics updated unless `freeze_bn_stats`) with the masks re-applied after every
    optimiser step; `augment` uses the model's training augmentation (off by default: short
    fine-tunes did better without). `distill` > 0 adds knowledge distillation from the dense
    model: the loss becomes (1 − distill)·cross-entropy + distill·T²·KL(teacher ‖ student) at
    temperature `distill_temperature` (Hinton et al. 2015), which recovers more accuracy from
    few images. `amp` autocasts the training pass as `train --amp` does (bf16 halves a CPU
    epoch where the CPU has AVX-512 BF16; the weights stay fp32).
    """

    epochs: int = setting(
        0, "Fine-tuning epochs with the masks enforced.", flag="--finetune-epochs"
    )
    train_layers: tuple[str, ...] = setting(
        (),
        "Comma-separated modules to fine-tune, or all (default: the pruned ones).",
        flag="--train-layers",
    )
    batch_size: int = setting(100, "Mini-batch size.")
    learning_rate: float = setting(0.001, "Initial learning rate.", flag="--lr")
    momentum: float = setting(0.9, "SGD momentum.")
    nesterov: bool = setting(True, "Nesterov momentum.")
    weight_decay: float = setting(5e-4, "L2 weight decay.")
    lr_decay: float = setting(1.0, "lr × this every epoch.")
    augment: bool = setting(False, "Random translation and flip while fine-tuning.")
    freeze_bn_stats: bool = setting(
        False, "Keep BatchNorm running statistics fixed while fine-tuning."
    )
    distill: float = setting(
        0.0, "Weight (0-1) of distillation from the dense model while fine-tuning."
    )
    distill_temperature: float = setting(4.0, "Softmax temperature of the distillation loss.")
    test_every_epoch: bool = setting(
        False,
        "Test after every fine-tuning epoch (the history in the JSON and the checkpoint).",
        flag="--finetune-test-every-epoch",
    )
    amp: str = setting(
        "off", "Autocast fine-tuning: off, bf16, fp16 (CUDA).", flag="--finetune-amp"
    )

    def __post_init__(self) -> None:
        check_sgd(self)
        _require(
            (self.epochs >= 0, f"finetune epochs must be >= 0, not {self.epochs}"),
            (
                self.amp in AMP_MODES,
                f"unknown amp mode {self.amp!r}; use one of {', '.join(AMP_MODES)}",
            ),
            (0.0 <= self.distill <= 1.0, f"distill must be between 0 and 1, not {self.distill}"),
            (
                self.distill_temperature > 0,
                f"distill temperature must be > 0, not {self.distill_temperature}",
            ),
        )


@settings_class
class PruneConfig:
    """`snptool prune`: the method (pruning/methods.py) with its settings, and the fine-tuning
    that follows it. `seed` drives the random label sets, label grouping, the Taylor batches
    and fine-tuning."""

    method: str = setting(
        "afcc",
        "afcc, andc, afcc-grouped, random, magnitude, heads; channel removal: units (by the "
        "matrices), magnitude-channels, taylor, lamp, group-norm or random-channels "
        "(Torch-Pruning's criteria).",
    )
    connections: ConnectionConfig = field(default_factory=ConnectionConfig)
    removal: RemovalConfig = field(default_factory=RemovalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = setting(0, "Seed of initialisation and shuffling.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise UsageError(
                f"unknown method {self.method!r}; use one of {', '.join(PRUNE_METHODS)}."
            )
        check_device(self.device)


@settings_class
class ExportConfig:
    """ONNX export (`dynamo`: torch's dynamo exporter instead of the TorchScript one; with
    `fallback` the other exporter is tried when the first cannot export the model or its graph
    fails the check) and its parity check: the first `parity_samples` test images (random
    normal inputs of the checkpoint's shape when it names no data set and none is given)
    through torch and onnxruntime on the CPU, whose logits may differ by at most
    `parity_tolerance` × max(1, the largest |logit|). **Decision**: the tolerance scales with
    the logits because float32 rounding does: an untrained or imported network's logits in the
    hundreds differ by 1e-4 relative, not absolute."""

    opset: int = setting(17, "ONNX opset version.")
    parity_samples: int = setting(64, "Test images run through torch and onnxruntime.")
    parity_tolerance: float = setting(
        1e-4, "Largest logit difference allowed, × max(1, largest |logit|)."
    )
    batch_size: int = setting(32, "Batch size of the parity check.")
    device: str = setting("cpu", "cpu (onnxruntime's CPU provider).")
    dynamo: bool = setting(False, "Use torch's dynamo exporter, not the TorchScript one.")
    fallback: bool = setting(True, "Try the other exporter when the first fails.")

    def __post_init__(self) -> None:
        _require(
            (self.opset >= 7, f"opset must be at least 7, not {self.opset}"),
            (
                self.parity_samples >= 1,
                f"parity samples must be at least 1, not {self.parity_samples}",
            ),
            (
                self.parity_tolerance >= 0,
                f"parity tolerance must be >= 0, not {self.parity_tolerance}",
            ),
            (self.batch_size >= 1, f"batch size must be at least 1, not {self.batch_size}"),
            (self.device == "cpu", f"export runs on the CPU, not {self.device}; use --device cpu"),
        )


QUANTIZE_METHODS = ("static", "dynamic")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("uint8", "int8")


@settings_class
class QuantizeConfig:
    """int8 quantization of an ONNX file with onnxruntime's own tool (onnxruntime.quantization).

    `static` writes a QDQ graph: weights quantized per output channel (`per_channel`),
    activation ranges calibrated on `calibration` images drawn (seed `seed`) from the data's
    train split with `calibrate_method` (MinMax, Entropy or Percentile). `dynamic` quantizes
    the weights only and computes activation scales at run time: for Linear-heavy models such
    as the CCT, and it needs no data. **Decision**: activations uint8, weights int8 (U8S8),
    the format onnxruntime's x86 kernels (AVX2, AVX-512, VNNI) run fastest.
    """

    method: str = setting(
        "static",
        "static (QDQ, activations calibrated on training images) or dynamic (weights only; "
        "Linear-heavy models such as the CCT).",
    )
    calibration: int = setting(256, "Training images that calibrate the activations (static).")
    calibrate_method: str = setting("minmax", "Calibration: minmax, entropy or percentile.")
    per_channel: bool = setting(True, "One scale per output channel of every weight.")
    activation_type: str = setting("uint8", "Activations: uint8 or int8.")
    weight_type: str = setting("int8", "Weights: int8 or uint8.")
    batch_size: int = setting(32, "Batch size of the calibration and of the accuracy check.")
    seed: int = setting(0, "Seed of the calibration images' draw.")

    def __post_init__(self) -> None:
        _require(
            (
                self.method in QUANTIZE_METHODS,
                f"method is one of {', '.join(QUANTIZE_METHODS)}, not {self.method!r}",
            ),
            (
                self.calibration >= 1,
                f"calibration must be at least 1 image, not {self.calibration}",
            ),
            (
                self.calibrate_method in CALIBRATION_METHODS,
                f"calibrate method is one of {', '.join(CALIBRATION_METHODS)}, "
                f"not {self.calibrate_method!r}",
            ),
            (
                self.activation_type in QUANT_TYPES,
                f"activation type is uint8 or int8, not {self.activation_type!r}",
            ),
            (
                self.weight_type in QUANT_TYPES,
                f"weight type is uint8 or int8, not {self.weight_type!r}",
            ),
            (self.batch_size >= 1, f"batch size must be at least 1, not {self.batch_size}"),
        )


@settings_class
class CommitteeConfig:
    """Soft committee (METHODS.md §7): the mean of the members' softmax outputs, scored on
    `split`. Its ONNX export (`opset`, `dynamo`) is checked against torch on the first
    `parity_samples` test images, whose outputs may differ by at most `parity_tolerance`."""

    split: str = setting("test", "train, test or all.")
    batch_size: int = setting(500, "Batch size.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    opset: int = setting(ExportConfig.opset, "ONNX opset version.")
    dynamo: bool = setting(
        ExportConfig.dynamo, "Use torch's dynamo exporter, not the TorchScript one."
    )
    parity_samples: int = setting(
        ExportConfig.parity_samples, "Test images run through torch and onnxruntime."
    )
    parity_tolerance: float = setting(
        ExportConfig.parity_tolerance, "Largest probability difference allowed."
    )

    def __post_init__(self) -> None:
        check_split(self.split)
        check_device(self.device)
        self.export_config  # noqa: B018 (checks the export settings and the batch size)

    @property
    def export_config(self) -> ExportConfig:
        """The settings of the committee's ONNX export, which runs on the CPU."""
        return ExportConfig(
            opset=self.opset,
            parity_samples=self.parity_samples,
            parity_tolerance=self.parity_tolerance,
            batch_size=self.batch_size,
            device="cpu",
            dynamo=self.dynamo,
            fallback=False,  # the committee exports with the exporter it is told to use
        )


@settings_class
class LatencyConfig:
    """Interleaved onnxruntime timing: `warmup` untimed rounds, then `runs` timed rounds, or
    rounds until `budget_seconds` is spent (per batch size, at least 3), at each batch size.
    With `profile`, onnxruntime's profiler then runs each model `runs` more times (after
    `warmup`) and its kernel times, summed by operator type, name the `profile_top` slowest."""

    warmup: int = setting(10, "Untimed runs of each model first.")
    runs: int = setting(100, "Timed runs of each model.")
    budget_seconds: float | None = setting(
        None, "Time each batch size for this long instead of --runs (>= 3 runs)."
    )
    batch_sizes: tuple[int, ...] = setting(
        (1,), "Batch size (repeatable, or comma-separated) [default: 1].", flag="--batch"
    )
    threads: int = setting(1, "onnxruntime intra-op threads.")
    provider: str = setting("CPUExecutionProvider", "onnxruntime execution provider.")
    seed: int = setting(0, "Seed of the random inputs.")
    profile: bool = setting(
        False, "Also list each model's slowest operator types (onnxruntime's profiler)."
    )
    profile_top: int = setting(10, "How many operator types --profile lists per model.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(self.batch_sizes)))
        budget, smallest = self.budget_seconds, min(self.batch_sizes, default=1)
        _require(
            (self.warmup >= 0, f"warmup must be >= 0 runs, not {self.warmup}"),
            (self.runs >= 1, f"runs must be at least 1, not {self.runs}"),
            (budget is None or budget > 0, f"budget seconds must be positive, not {budget}"),
            (bool(self.batch_sizes), "give at least one batch size"),
            (smallest >= 1, f"batch sizes must be at least 1, not {smallest}"),
            (self.threads >= 1, f"threads must be at least 1, not {self.threads}"),
            (bool(self.provider), "give an execution provider, e.g. CPUExecutionProvider"),
            (self.seed >= 0, f"seed must be >= 0, not {self.seed}"),
            (self.profile_top >= 1, f"profile top must be at least 1, not {self.profile_top}"),
        )


SWEEP_ACCURACIES = ("final", "best")
SWEEP_FITS = ("runs", "means")
LENET5_FC_WIDTHS = (120, 84)  # model_defs.lenet.CLASSIC_FC_WIDTHS (config imports no torch)


@settings_class
class SweepConfig:
    """The generalised-LeNet power law (arXiv 2211.11106; METHODS.md §9): error ∝ d1^(−ρ).

    Trains `lenet` with filters (d1, d2 = round(ratio·d1), halves up) for every d1 × seed with
    the `train` recipe (its seed is replaced by each run's), then fits
    log(error) = a − ρ·log(d1) by least squares and a percentile bootstrap interval for ρ at
    level `confidence` from `bootstrap` resamples of the seeds within each d1 (seeded by
    `bootstrap_seed`; 0 resamples: no interval). Error = 1 − test accuracy.

    Decision: `accuracy` "final" scores each run's last epoch (no epoch picked on the test
    split); "best" its best test epoch. Decision: `fit` "runs" fits every (d1, seed) point;
    "means" fits the log of the per-d1 mean error. The papers' sources say neither.
    """

    d1: tuple[int, ...] = setting((4, 8, 16, 32), "First-layer filter counts, comma-separated.")
    ratio: float = setting(16 / 6, "d2 / d1 (d2 = round(ratio·d1)); LeNet-5's 16/6.")  # its filters
    seeds: tuple[int, ...] = setting((0, 1, 2), "Training seeds, comma-separated.")
    fc_widths: tuple[int, ...] = setting(
        LENET5_FC_WIDTHS, "Hidden FC widths, comma-separated (LeNet-5's 120,84)."
    )
    accuracy: str = setting("final", "Score each run by its final or its best test epoch.")
    fit: str = setting("runs", "Fit every run (runs) or the per-d1 mean errors (means).")
    bootstrap: int = setting(1000, "Bootstrap resamples of the seeds for ρ's interval (0: none).")
    confidence: float = setting(0.95, "Level of the percentile interval.")
    bootstrap_seed: int = setting(0, "Seed of the bootstrap.")
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in ("d1", "seeds", "fc_widths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        _require(
            (len(set(self.d1)) == len(self.d1), f"d1 values repeat in {list(self.d1)}"),
            (len(self.d1) >= 2, "a power law needs at least 2 distinct d1 values, e.g. 4,8,16"),
            (
                min(self.d1, default=1) >= 1,
                f"d1 values must be at least 1, not {min(self.d1, default=1)}",
            ),
            (self.ratio > 0, f"ratio must be positive, not {self.ratio}"),
            (
                min(self.d2, default=1) >= 1,
                f"ratio {self.ratio} gives d2 = 0 for d1 = {min(self.d1, default=1)}",
            ),
            (bool(self.seeds), "give at least one seed"),
            (len(set(self.seeds)) == len(self.seeds), f"seeds repeat in {list(self.seeds)}"),
            (
                min(self.seeds, default=0) >= 0,
                f"seeds must be >= 0, not {min(self.seeds, default=0)}",
            ),
            (min(self.fc_widths, default=1) >= 1, "fc widths must be at least 1"),
            (self.accuracy in SWEEP_ACCURACIES, f"accuracy is one of {SWEEP_ACCURACIES}"),
            (self.fit in SWEEP_FITS, f"fit is one of {SWEEP_FITS}"),
            (self.bootstrap >= 0, f"bootstrap must be >= 0 resamples, not {self.bootstrap}"),
            (
                self.bootstrap == 0 or len(self.seeds) >= 2,
                "a bootstrap interval needs at least 2 seeds (or --bootstrap 0)",
            ),
            (0 < self.confidence < 1, f"confidence must lie in (0, 1), not {self.confidence}"),
        )

    @property
    def d2(self) -> tuple[int, ...]:
        """Second-layer depths: round(ratio·d1), halves rounded up."""
        return tuple(second_depth(d1, self.ratio) for d1 in self.d1)


@settings_class
class ReportConfig:
    """What `snptool report` draws; `units` (LAYER:INDEX) replace the default heat maps (the
    strongest and the noisiest unit of every layer)."""

    title: str = setting("snptool report", "The page's title.")
    units: tuple[str, ...] = ()


def second_depth(d1: int, ratio: float) -> int:
    """d2 = round(ratio·d1) with halves rounded up (Python's round would round them to even)."""
    return int(math.floor(ratio * d1 + 0.5))


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tib": 2**40,
}


def parse_bytes(text: str | int) -> int:
    """'4GiB', '512MB', '1e9' → bytes."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = value[len(number) :].strip()
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or not 0 <= amount * _UNITS.get(unit, 1) < 2**63:
        raise UsageError(f"memory size {text!r} is not a size like 4GiB, 512MiB or 2e9.")
    return int(amount * _UNITS[unit])


SPLITS = ("train", "test", "all")
DEVICES = ("auto", "cpu", "cuda")


def check_sgd(config: Any) -> None:
    """The checks every SGD recipe (TrainConfig, ProbeConfig, FinetuneConfig) shares."""
    _require(
        (config.batch_size >= 1, f"batch size must be at least 1, not {config.batch_size}"),
        (config.learning_rate > 0, f"learning rate must be positive, not {config.learning_rate}"),
        (0 <= config.momentum < 1, f"momentum must lie in [0, 1), not {config.momentum}"),
        (config.weight_decay >= 0, f"weight decay must be >= 0, not {config.weight_decay}"),
        (0 < config.lr_decay <= 1, f"lr decay must lie in (0, 1], not {config.lr_decay}"),
        (not (config.nesterov and config.momentum == 0), "Nesterov needs a momentum > 0"),
    )


def _require(*checks: tuple[bool, str]) -> None:
    for ok, message in checks:
        if not ok:
            raise UsageError(message + ".")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    return split


def check_device(device: str) -> str:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}.")
    return device


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)
