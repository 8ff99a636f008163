"""The pass contract: options, context, result, and the Pass base class."""

from __future__ import annotations

__all__ = [
    "NoOptions",
    "OptionRange",
    "Pass",
    "PassContext",
    "PassResult",
    "is_skip_stat",
    "option_range",
]

import abc
import dataclasses
import math
from typing import Any, ClassVar, TypeVar

import onnx_ir as ir


def is_skip_stat(key: str) -> bool:
    """Whether a statistic counts things a pass left alone rather than changes."""
    return key.startswith("skipped-")


@dataclasses.dataclass(frozen=True)
class OptionRange:
    """The allowed interval of a numeric option; a bound of None is unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite and inside the interval."""
        if not math.isfinite(value):
            return False
        if self.lo is not None and (
            value < self.lo or (value == self.lo and not self.lo_inclusive)
        ):
            return False
        return not (
            self.hi is not None
            and (value > self.hi or (value == self.hi and not self.hi_inclusive))
        )

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        left = "[" if self.lo_inclusive and self.lo is not None else "("
        right = "]" if self.hi_inclusive and self.hi is not None else ")"
        return f"{left}{lo}, {hi}{right}"


def option_range(field: dataclasses.Field[Any]) -> OptionRange | None:
    """The declared range of an option field, or None.

    ``metadata["range"]`` is an OptionRange or a tuple ``(lo, hi, lo_inclusive,
    hi_inclusive)`` (the flags default to True).
    """
    declared = field.metadata.get("range")
    if declared is None or isinstance(declared, OptionRange):
        return declared
    return OptionRange(*declared)


@dataclasses.dataclass
class PassResult:
    """What a pass did: named integer statistics; ``modified`` follows from them.

    Statistics whose name starts with ``skipped-`` count what the pass left alone
    (custom-domain ops, shared weights, ...) and do not make the result modified.
    """

    stats: dict[str, int] = dataclasses.field(default_factory=dict)
    decisions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # What the user must hear about even when the run succeeds ("int8 kept float: not
    # faster", "fusion could not be checked"); the CLI prints them in its summary.
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def modified(self) -> bool:
        """True when any change statistic is non-zero."""
        return any(v for k, v in self.stats.items() if not is_skip_stat(k))


@dataclasses.dataclass
class PassContext:
    """What a pass may know about the job beyond the model itself."""

    target: str | None = None
    input_shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # A runtime.data.Dataset for calibration (never the guard's held-out part), or None.
    calibration: Any = None
    # How speed decisions are made: "model" (deterministic cost model) or "measure".
    speed_check: str = "model"
    # Seed of every randomized choice (sampling, initialization): same seed, same output.
    seed: int = 0
    # ONNX Runtime work a pass may ask for (activations, fused graphs, latency): passes never
    # open sessions or write temporary models themselves.
    runtime: Any = dataclasses.field(default=None)

    def __post_init__(self) -> None:
        if self.runtime is None:
            from nnopt_graph.runtime.services import RuntimeServices

            self.runtime = RuntimeServices()


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


class Pass(abc.ABC):
    """One transformation of the model, registered under a kebab-case name.

    Subclasses set ``name``, a one-line docstring, and ``Options`` (a frozen dataclass
    whose fields are the pass's typed options, snake_case here and kebab-case in
    pipeline text; a field's ``metadata["choices"]`` restricts its values and
    ``metadata["range"]`` — ``(lo, hi, lo_inclusive, hi_inclusive)``, None for no
    bound — the interval of a number; an ``Options.problem()`` method returning a
    reason or None checks options that go together).
    """

    name: ClassVar[str]
    lossy: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            options = dataclasses.replace(options, **kwargs)
        self.options = options

    @classmethod
    def summary(cls) -> str:
        """The docstring's first line, shown by ``list-passes``."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def requires(self, model: ir.Model) -> None:  # noqa: B027  (optional hook)
        """Raise if the model does not meet the pass's preconditions."""

    def ensures(self, model: ir.Model) -> None:  # noqa: B027  (optional hook)
        """Raise if the model does not meet the pass's postconditions."""

    def back_off(self) -> Pass | None:
        """A weaker version of this lossy pass to try when the guard fails, or None."""
        return None

    @abc.abstractmethod
    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Transform the model in place and report what changed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


# Name -> pass class. Filled by ``register_pass``; the registry (pipeline/registry.py)
# reads it. Here, beside the contract, so a pass module imports nothing above it.
_REGISTRY: dict[str, type[Pass]] = {}

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: make the pass known under its ``name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"pass name '{name}' registered twice")
    _REGISTRY[name] = cls
    return cls
