"""Typed records of what snptool's files hold, checked with pydantic: every file format's
reader validates its metadata through `validate_record`, which turns the first problem into one
line naming the file and the field ("checkpoint m.safetensors: input.mean should be a valid
list, got 'a'; re-create the checkpoint.")."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from snptool.errors import InputFileError

if TYPE_CHECKING:
    from snptool.config import InputSpec


class Record(BaseModel):
    """A part of a file's metadata: strict types (no "3" for 3), finite numbers, read-only;
    keys a later snptool added are kept (extra="allow")."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)


class LenientRecord(Record):
    """A record of measured values and logs, whose numbers may be NaN or infinite (a diverged
    epoch's loss is what happened, not damage)."""

    model_config = ConfigDict(allow_inf_nan=True)


# Sizes above these are not a network's: a crafted record must not make snptool allocate them.
MAX_SIDE = 1 << 14  # pixels of an input side
MAX_WIDTH = 1 << 20  # channels, units, features, classes

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(min_length=1)]
Count = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Index = Annotated[int, Field(ge=0)]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
Share = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]

R = TypeVar("R", bound=BaseModel)


def validate_record(record_type: type[R], data: Any, *, where: str, fix: str) -> R:
    """`data` as a `record_type`, or an InputFileError: "{where}: {field} {problem}; {fix}."."""
    try:
        return record_type.model_validate(data)
    except ValidationError as error:
        raise InputFileError(f"{where}: {describe_error(error)}; {fix}.") from None


def record_problem(record_type: type[BaseModel], data: Any, where: str) -> str | None:
    """What keeps `data` from being a `record_type` ("{where}.{field} …"), else None."""
    try:
        record_type.model_validate(data)
    except ValidationError as error:
        return f"{where}.{describe_error(error)}"
    return None


# pydantic names the member of a union it tried in the location: a class or a type name
_UNION_TAG = re.compile(r"^([A-Z]\w*|str|int|float|bool|none|list\[.*\]|dict\[.*\])$")


def describe_error(error: ValidationError) -> str:
    """The first problem pydantic found, as "field.path what, got value"."""
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    field = ".".join(str(p) for p in first["loc"] if not _UNION_TAG.match(str(p)))
    if kind == "missing":
        return f"{field} is missing"
    message = first["msg"].removeprefix("Value error, ").removeprefix("Input ")
    message = re.sub(r" or instance of \w+$", "", message[:1].lower() + message[1:])
    if kind != "value_error":  # our own checks' messages say what they found
        message += f", got {short_repr(first.get('input'))}"
    return f"{field} {message}" if field else message


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() cut to `limit` characters (a crafted value may be megabytes long)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- records several formats share -----------------------------------------------------


def check_class_names(names: list[str], count: int | None) -> list[str]:
    """`count` distinct class names (a validator's check, raising ValueError)."""
    if count is not None and len(names) != count:
        raise ValueError(f"must be {count} names (num_classes), got {len(names)}")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"names {', '.join(map(repr, twice[:3]))} twice")
    return names


class InputRecord(Record):
    """What the model expects (config.InputSpec): channels, size, mean/std on [0, 1] pixels."""

    channels: Literal[1, 3]
    height: Side
    width: Side
    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]
    resize: Side | None = None

    @field_validator("mean", "std")
    @classmethod
    def _one_value_per_channel(cls, values: list[float], info: ValidationInfo) -> list[float]:
        channels = info.data.get("channels", 3)
        if len(values) not in (1, channels):
            raise ValueError(f"must be 1 or {channels} numbers, got {len(values)}")
        return values

    def to_spec(self) -> InputSpec:
        from snptool.config import InputSpec

        return InputSpec(
            self.channels, self.height, self.width, tuple(self.mean), tuple(self.std), self.resize
        )


class FileReference(Record):
    """Another file this one was made from: its path when written and its sha256."""

    path: str | None = None
    sha256: Sha256


class DataRecord(Record):
    """The data a split came from (data.DataSplit.record): its spec and how it was split."""

    spec: str | None = None
    test_fraction: Fraction | None = None
    split_seed: Index | None = None
    classes: list[Name] | None = None
