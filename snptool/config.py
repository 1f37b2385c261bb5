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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class DataConfig:
    """How a data spec becomes train and test splits.

    `test_fraction` and `split_seed` set the seeded per-class split of data sets that have no
    test split; None takes the values a checkpoint was trained with (`inherit`), else
    DEFAULT_TEST_FRACTION and DEFAULT_SPLIT_SEED, so every command sees the training split.

    `classes` (names or indices) or `num_classes_subset` (the first N) restrict the data set to
    some of its labels, relabelled 0…k−1 in the data set's own class order; None takes the
    subset a checkpoint was trained on.
    """

    test_fraction: float | None = None
    split_seed: int | None = None
    root: str | None = None
    download: bool = False
    workers: int = 0
    classes: tuple[str, ...] | None = None
    num_classes_subset: int | None = None

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


@dataclass(frozen=True)
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

    epochs: int = 30
    batch_size: int = 100
    learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_decay: float = 0.6
    lr_step: int = 20
    augment: bool = True
    translate: int = 4
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 500
    optimizer: str = "sgd"
    schedule: str = "step"
    min_lr: float = 1e-5
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    decay_norm_bias: bool = True
    amp: str = "off"
    channels_last: bool = True

    def __post_init__(self) -> None:
        check_sgd(self)
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


@dataclass(frozen=True)
class EvaluateConfig:
    """Top-1 accuracy on one split."""

    split: str = "test"
    batch_size: int = 500
    device: str = "auto"

    def __post_init__(self) -> None:
        check_split(self.split)
        check_device(self.device)


@dataclass(frozen=True)
class ImportConfig:
    """How a third-party weights file becomes an snptool checkpoint."""

    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    input: InputSpec = field(default_factory=InputSpec)
    data: str | None = None
    strict: bool = True


@dataclass(frozen=True)
class ProbeConfig:
    """The papers' probe recipe (METHODS.md §4): bias-free linear read-out per tapped layer.

    Decision: features are computed once and cached when they fit `memory_budget` (bytes);
    otherwise every epoch streams the data through the frozen network. Both orders of
    mini-batches are the same, so both give the same probe.
    """

    epochs: int = 200
    batch_size: int = 100
    learning_rate: float = 0.01
    momentum: float = 0.975
    nesterov: bool = True
    weight_decay: float = 1e-3
    lr_decay: float = 0.975
    seed: int = 0
    device: str = "auto"
    memory_budget: str = "4GiB"
    forward_batch_size: int = 250
    tap_input: bool = False

    def __post_init__(self) -> None:
        check_sgd(self)
        _require(
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.forward_batch_size >= 1, "forward batch size must be at least 1"),
        )
        parse_bytes(self.memory_budget)

    @property
    def memory_budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)


@dataclass(frozen=True)
class MatrixConfig:
    """Single-unit matrices (METHODS.md §5). Decision: `split` train (the papers' text) or
    test (the authors' code)."""

    split: str = "train"
    device: str = "auto"
    forward_batch_size: int = 250
    units_per_chunk: int = 0

    def __post_init__(self) -> None:
        check_split(self.split)
        check_device(self.device)
        if self.units_per_chunk < 0:
            raise UsageError("units per chunk must be >= 0 (0 picks it from a 256 MiB budget).")


@dataclass(frozen=True)
class ClustersConfig:
    """The cluster rule (METHODS.md §6): elements strictly above `threshold` × the unit's max."""

    threshold: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise UsageError(f"threshold must lie in [0, 1), not {self.threshold}.")


OVERLAP_MEASURES = ("jaccard", "coefficient")


@dataclass(frozen=True)
class HeadsConfig:
    """The head report (METHODS.md §7). Decision: `overlap` of two heads' label sets A, B is
    the Jaccard index |A ∩ B| / |A ∪ B| or the overlap coefficient |A ∩ B| / min(|A|, |B|)."""

    overlap: str = "jaccard"

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP_MEASURES:
            raise UsageError(
                f"unknown overlap {self.overlap!r}; use one of {', '.join(OVERLAP_MEASURES)}."
            )


STRUCTURED_METHODS = ("units", "magnitude-channels", "taylor", "lamp")
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
UNIT_RANKING_KEYS = ("labels", "maximum", "noise", "magnitude")
ALLOCATIONS = ("deepest-first", "uniform")
LABEL_GROUPINGS = ("cooccurrence", "contiguous")


@dataclass(frozen=True)
class PruneConfig:
    """Label-guided pruning (METHODS.md §8) and the fine-tuning that follows it.

    `afcc` keeps a connection between consecutive analysed units iff their label sets (the
    union of their clusters) intersect, and a unit's connection to output label k iff k is in
    its label set. `andc` (METHODS.md §7) applies that rule to each unit's marked diagonal
    labels (diagonal element strictly above `andc_threshold` × the unit's maximum; default the
    clusters' threshold, at which they equal the clusters' unions) and needs no clusters.
    `heads` removes whole attention heads and feed-forward nodes of the listed head / node
    taps: those serving no label, then those serving the fewest until `remove_fraction` of
    each layer is gone, so export builds a smaller graph.
    `units` removes whole channels / nodes of the groups the listed taps read, on any
    architecture (structured.py: Torch-Pruning's DependencyGraph couples residual streams and
    MBConv hidden channels, which are scored and removed together), ranked by `ranking`
    (fewest labels served, weakest maximum, most noise; `magnitude` of the weights can break
    ties), `remove_fraction` of every group or the share that brings the MACs to
    `target_macs` × the dense MACs; `magnitude-channels`,
    `taylor` (on `taylor_batches` training batches) and `lamp` rank the same groups by
    Torch-Pruning's importance estimators, as baselines; `round_to` rounds every group's kept
    channels to a multiple (faster kernels) and keeps at least `min_channels` per group (a
    target that the floor makes unreachable is refused, never chased by collapsing groups);
    the weight criteria prune every prunable group when no taps are listed, and `units`
    orders the groups without matrices by the weight criterion `fill` when it is given
    (otherwise only the tapped groups are pruned); Torch-Pruning's grouping may use at most
    `grouping_seconds` of CPU time (0: no limit; **Decision**: 120 s, it never took more than
    a few seconds on a network it could prune, and runs without end on Swin); `allocation`
    `deepest-first` steps the deepest groups down to their next rounded width until the MACs
    meet `target_macs` where the uniform share overshoots it, `uniform` keeps the uniform
    share.
    `random` draws balanced random label sets of the same sizes (the papers'
    control); `magnitude` removes the smallest kernel slices to afcc's dilution per layer.
    `classifier="probe"` replaces the network's classifier by the last listed layer's probe
    (the authors' choice). `afcc-grouped` (our extension) splits the labels into `groups`
    groups (`label_grouping`: by how often units serve labels together, or contiguous label
    ranges), gives each unit the group holding most of its labels (equal group sizes), and
    keeps only connections inside a group, so export can use grouped convolutions.
    Fine-tuning trains `train_layers` (default: the pruned layers; the other weights frozen,
    BatchNorm running statistics updated unless `freeze_bn_stats`) with the masks re-applied
    after every optimiser step; `augment` uses
    the model's training augmentation (off by default: short fine-tunes did better without).
    `distill` > 0 adds knowledge distillation from the dense model: the loss becomes
    (1 − distill)·cross-entropy + distill·T²·KL(teacher ‖ student) at temperature
    `distill_temperature` (Hinton et al. 2015), which recovers more accuracy from few images.
    """

    method: str = "afcc"
    classifier: str = "model"
    andc_threshold: float | None = None
    remove_fraction: float = 0.0
    target_macs: float | None = None
    ranking: tuple[str, ...] = ("labels", "maximum", "noise")
    taylor_batches: int = 4
    round_to: int = 1
    min_channels: int = 8
    fill: str | None = None
    grouping_seconds: float = 120.0
    allocation: str = "deepest-first"
    groups: int = 2
    label_grouping: str = "cooccurrence"
    finetune_epochs: int = 0
    train_layers: tuple[str, ...] = ()
    batch_size: int = 100
    learning_rate: float = 0.001
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_decay: float = 1.0
    augment: bool = False
    freeze_bn_stats: bool = False
    distill: float = 0.0
    distill_temperature: float = 4.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise UsageError(
                f"unknown method {self.method!r}; use one of {', '.join(PRUNE_METHODS)}."
            )
        check_sgd(self)
        _require(
            (
                self.classifier in ("model", "probe"),
                f"classifier must be model or probe, not {self.classifier!r}",
            ),
            (self.label_grouping in LABEL_GROUPINGS, f"label grouping is one of {LABEL_GROUPINGS}"),
            (self.groups >= 2, f"groups must be at least 2, not {self.groups}"),
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
            (self.taylor_batches >= 1, f"taylor batches must be >= 1, not {self.taylor_batches}"),
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
            (
                self.andc_threshold is None or 0 <= self.andc_threshold < 1,
                f"andc threshold must be in [0, 1), not {self.andc_threshold}",
            ),
            (
                self.finetune_epochs >= 0,
                f"finetune epochs must be >= 0, not {self.finetune_epochs}",
            ),
            (0.0 <= self.distill <= 1.0, f"distill must be between 0 and 1, not {self.distill}"),
            (
                self.distill_temperature > 0,
                f"distill temperature must be > 0, not {self.distill_temperature}",
            ),
        )


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export (`dynamo`: torch's dynamo exporter instead of the TorchScript one; with
    `fallback` the other exporter is tried when the first cannot export the model or its graph
    fails the check) and its parity check: the first `parity_samples` test images (random
    normal inputs of the checkpoint's shape when it names no data set and none is given)
    through torch and onnxruntime on the CPU, whose logits may differ by at most
    `parity_tolerance` × max(1, the largest |logit|). **Decision**: the tolerance scales with
    the logits because float32 rounding does: an untrained or imported network's logits in the
    hundreds differ by 1e-4 relative, not absolute."""

    opset: int = 17
    parity_samples: int = 64
    parity_tolerance: float = 1e-4
    batch_size: int = 32
    device: str = "cpu"
    dynamo: bool = False
    fallback: bool = True

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


@dataclass(frozen=True)
class CommitteeConfig:
    """Soft committee (METHODS.md §7): the mean of the members' softmax outputs, scored on
    `split`. Its ONNX export (`opset`, `dynamo`) is checked against torch on the first
    `parity_samples` test images, whose outputs may differ by at most `parity_tolerance`."""

    split: str = "test"
    batch_size: int = 500
    device: str = "auto"
    opset: int = ExportConfig.opset
    dynamo: bool = ExportConfig.dynamo
    parity_samples: int = ExportConfig.parity_samples
    parity_tolerance: float = ExportConfig.parity_tolerance

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


@dataclass(frozen=True)
class LatencyConfig:
    """Interleaved onnxruntime timing: `warmup` untimed rounds, then `runs` timed rounds, or
    rounds until `budget_seconds` is spent (per batch size, at least 3), at each batch size."""

    warmup: int = 10
    runs: int = 100
    budget_seconds: float | None = None
    batch_sizes: tuple[int, ...] = (1,)
    threads: int = 1
    provider: str = "CPUExecutionProvider"
    seed: int = 0

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
        )


SWEEP_ACCURACIES = ("final", "best")
SWEEP_FITS = ("runs", "means")
LENET5_FC_WIDTHS = (120, 84)  # model_defs.lenet.CLASSIC_FC_WIDTHS (config imports no torch)


@dataclass(frozen=True)
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

    d1: tuple[int, ...] = (4, 8, 16, 32)
    ratio: float = 16 / 6  # LeNet-5's 16 / 6 filters
    seeds: tuple[int, ...] = (0, 1, 2)
    fc_widths: tuple[int, ...] = LENET5_FC_WIDTHS
    accuracy: str = "final"
    fit: str = "runs"
    bootstrap: int = 1000
    confidence: float = 0.95
    bootstrap_seed: int = 0
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


@dataclass(frozen=True)
class ReportConfig:
    """What `snptool report` draws; `units` (LAYER:INDEX) replace the default heat maps (the
    strongest and the noisiest unit of every layer)."""

    title: str = "snptool report"
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
    if unit not in _UNITS or amount < 0:
        raise UsageError(f"memory size {text!r} is not a size like 4GiB, 512MiB or 2e9.")
    return int(amount * _UNITS[unit])


SPLITS = ("train", "test", "all")
DEVICES = ("auto", "cpu", "cuda")


def check_sgd(config: Any) -> None:
    """The checks every SGD recipe (TrainConfig, ProbeConfig) shares."""
    _require(
        (config.batch_size >= 1, f"batch size must be at least 1, not {config.batch_size}"),
        (config.learning_rate > 0, f"learning rate must be positive, not {config.learning_rate}"),
        (0 <= config.momentum < 1, f"momentum must lie in [0, 1), not {config.momentum}"),
        (config.weight_decay >= 0, f"weight decay must be >= 0, not {config.weight_decay}"),
        (0 < config.lr_decay <= 1, f"lr decay must lie in (0, 1], not {config.lr_decay}"),
        (not (config.nesterov and config.momentum == 0), "Nesterov needs a momentum > 0"),
    )
    check_device(config.device)


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
