"""The candidate space of a search: stages of pipeline-text choices over a base pipeline."""

from __future__ import annotations

__all__ = ["SearchSpace", "default_space", "load_space", "validate_space"]

import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.presets import CPU_BEFORE_INT8

logger = logging.getLogger(__name__)

PRUNE_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
# int8 variants of the cpu/tensorrt space: the pass's defaults, per-tensor weights, entropy
# calibration of activations.
INT8_CHOICES = (
    "quantize-int8",
    "quantize-int8{per-channel=false}",
    "quantize-int8{calibrator=entropy}",
)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Candidates = ``base`` followed by one choice of every stage (empty choices skipped).

    Attributes:
        base: pipeline text every candidate starts with (e.g. ``default``).
        stages: (stage name, pipeline-text choices) in pipeline order; ``""`` means "none".
        presets: candidates to try first, each a stage name -> choice mapping (warm start);
            the first is the target preset the confirmation stage always re-times.
        ordered: stages whose choices are listed from least to most lossy (prune ratios,
            2:4 off/on). In every stage ``""`` (none) is the least lossy choice.
    """

    base: str
    stages: tuple[tuple[str, tuple[str, ...]], ...]
    presets: tuple[tuple[tuple[str, str], ...], ...] = ()
    ordered: tuple[str, ...] = ()

    def pipeline(self, choice: Mapping[str, str]) -> str:
        """The pipeline text of one candidate (a stage name -> choice mapping)."""
        parts = [self.base] if self.base else []
        for name, _ in self.stages:
            text = choice[name]
            if text:
                parts.append(text)
        return ",".join(parts)

    def candidates(self) -> Iterator[dict[str, str]]:
        """Every candidate of the full grid, in a fixed order."""
        names = [name for name, _ in self.stages]
        for combo in itertools.product(*(choices for _, choices in self.stages)):
            yield dict(zip(names, combo, strict=True))

    @property
    def size(self) -> int:
        """Candidates in the full grid."""
        n = 1
        for _, choices in self.stages:
            n *= len(choices)
        return n

    def preset_choices(self) -> list[dict[str, str]]:
        """The warm-start candidates as stage -> choice mappings."""
        return [dict(p) for p in self.presets]

    def to_json(self) -> dict[str, Any]:
        """The space in the ``--space`` file format."""
        return {
            "base": self.base,
            "stages": [{"name": n, "choices": list(c)} for n, c in self.stages],
            "presets": [dict(p) for p in self.presets],
            "ordered": list(self.ordered),
        }

    def at_least_as_lossy(self, a: Mapping[str, str], b: Mapping[str, str]) -> bool:
        """Whether candidate ``a`` is at least as lossy as ``b`` in every stage.

        Per stage: the same choice, or ``b`` has none (``""``) there, or the stage is
        ordered and ``a``'s choice comes at or after ``b``'s. A candidate at least as lossy
        as one that failed the guard is expected to fail it too.
        """
        for name, choices in self.stages:
            x, y = a[name], b[name]
            if x == y or y == "":
                continue
            if name in self.ordered and choices.index(x) >= choices.index(y):
                continue
            return False
        return True

    def neighbours(self, choice: Mapping[str, str]) -> list[dict[str, str]]:
        """One step lossier in one stage at a time (stage order): warm-start candidates.

        An ordered stage moves to its next choice; an unordered stage with no choice moves
        to its first non-empty one, and one with a choice to each other non-empty choice
        (its variants are all one step away: none is known to be lossier).
        """
        out: list[dict[str, str]] = []
        for name, choices in self.stages:
            i = choices.index(choice[name])
            if name in self.ordered:
                steps = list(choices[i + 1 : i + 2])
            elif choice[name] == "":
                steps = [c for c in choices if c][:1]
            else:
                steps = [c for c in choices if c and c != choice[name]]
            out.extend({**choice, name: c} for c in steps)
        return out

    def most_lossy(self, lead: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """The aggressive corner: every candidate no other candidate is lossier than.

        Every ordered stage at its last (most lossy) choice; every unordered stage at each
        of its non-empty choices (none is known to be lossier than another), ``lead``'s
        choice first, then stage order. A stage with only ``""`` keeps it.
        """
        per_stage: list[list[str]] = []
        for name, choices in self.stages:
            if name in self.ordered:
                per_stage.append([choices[-1]])
                continue
            options = [c for c in choices if c] or [""]
            first = lead.get(name) if lead is not None else None
            if first in options:
                options.remove(first)
                options.insert(0, first)
            per_stage.append(options)
        names = [name for name, _ in self.stages]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*per_stage)]

    def middle(self, lead: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every ordered stage at its middle choice (the less lossy of two), the rest at ``lead``'s.

        The warm start's probe between the presets and the aggressive corner: when the
        corner fails the guard or is slow, the fast feasible candidates often lie in the
        middle of the prune ratios, where a sampler told only the two ends looks last.
        An unordered stage takes ``lead``'s choice (none without a lead).
        """
        out: dict[str, str] = {}
        for name, choices in self.stages:
            if name in self.ordered:
                out[name] = choices[(len(choices) - 1) // 2]
            else:
                out[name] = lead[name] if lead is not None else ""
        return out


def _prune_choice(ratio: float) -> str:
    return f"prune-channels{{ratio={ratio}}}" if ratio > 0 else ""


def default_space(target: str) -> SearchSpace:
    """The default space of a target: prune ratios x 2:4 x quantization (48 candidates).

    Prune ratio 0 to 0.5 in steps of 0.1 and 2:4 off/on (both ordered by lossiness);
    cpu and tensorrt choose no int8, int8 with the pass's defaults, per-tensor weights or
    entropy calibration (on cpu each after merge-parallel-matmuls, fold-conv-affine,
    fuse-hardswish and quantize-dynamic-int8, as in its preset);
    cuda chooses among none, fp16, int4 and fp16+int4 (its preset).
    The target preset and the lossless default are the presets.

    Raises:
        BadInputError: an unknown target.
    """
    prune = ("prune", tuple(_prune_choice(r) for r in PRUNE_RATIOS))
    sparse = ("sparsify", ("", "sparsify{pattern=2:4}"))
    if target in ("cpu", "tensorrt"):
        # On CPU, as in the target-cpu preset: parallel MatMuls merged, Conv affine
        # folds, hard-swish as HardSigmoid + Mul, dynamic int8 (MatMul, LSTM) where its
        # cost model says it pays, then each static int8 variant on what it left in float.
        head = f"{CPU_BEFORE_INT8}," if target == "cpu" else ""
        choices = tuple(f"{head}{c}" for c in INT8_CHOICES)
        quant: tuple[str, tuple[str, ...]] = ("quantize", ("", *choices))
        preset = choices[0]
    elif target == "cuda":
        quant = ("quantize", ("", "quantize-fp16", "quantize-int4", "quantize-fp16,quantize-int4"))
        preset = "quantize-fp16,quantize-int4"
    else:
        raise BadInputError(f"unknown target '{target}' (choose from cpu, cuda, tensorrt)")
    stages = (prune, sparse, quant)
    presets = (
        (("prune", ""), ("sparsify", ""), ("quantize", preset)),
        (("prune", ""), ("sparsify", ""), ("quantize", "")),
    )
    return SearchSpace("default", stages, presets, ("prune", "sparsify"))


def _space_from_json(data: Any, where: str) -> SearchSpace:
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: a search space is a JSON object with 'base' and 'stages'")
    base = data.get("base", "default")
    stages_in = data.get("stages")
    if not isinstance(base, str) or not isinstance(stages_in, list) or not stages_in:
        raise BadInputError(f"{where}: 'base' must be text and 'stages' a non-empty list")
    stages: list[tuple[str, tuple[str, ...]]] = []
    for i, stage in enumerate(stages_in):
        name = stage.get("name") if isinstance(stage, dict) else None
        choices = stage.get("choices") if isinstance(stage, dict) else None
        if (
            not isinstance(name, str)
            or not isinstance(choices, list)
            or not choices
            or not all(isinstance(c, str) for c in choices)
        ):
            raise BadInputError(
                f"{where}: stage {i} needs a 'name' and a non-empty list of text 'choices'"
            )
        if name in {n for n, _ in stages}:
            raise BadInputError(f"{where}: stage name '{name}' appears twice")
        stages.append((name, tuple(choices)))
    presets: list[tuple[tuple[str, str], ...]] = []
    for p in data.get("presets", []):
        if not isinstance(p, dict) or set(p) != {n for n, _ in stages}:
            raise BadInputError(f"{where}: a preset names one choice for every stage")
        for name, choices in stages:
            if p[name] not in choices:
                raise BadInputError(f"{where}: preset choice '{p[name]}' is not in stage '{name}'")
        presets.append(tuple((n, p[n]) for n, _ in stages))
    ordered = data.get("ordered", [])
    names = [n for n, _ in stages]
    if not isinstance(ordered, list) or not all(o in names for o in ordered):
        raise BadInputError(f"{where}: 'ordered' must list stage names (of {', '.join(names)})")
    return SearchSpace(base, tuple(stages), tuple(presets), tuple(o for o in names if o in ordered))


def validate_space(space: SearchSpace) -> None:
    """Parse every candidate's pipeline text once, so a typo fails before any work.

    Raises:
        BadInputError: a candidate's pipeline text does not parse.
    """
    from nnopt_graph.pipeline.grammar import Pipeline

    for choice in space.candidates():
        text = space.pipeline(choice)
        try:
            Pipeline.parse(text)
        except BadInputError as exc:
            raise BadInputError(f"search space: candidate '{text}': {exc}") from exc


def load_space(path: str | os.PathLike[str] | None, target: str) -> SearchSpace:
    """The ``--space`` file's space, or the target's default; every candidate parsed.

    Raises:
        BadInputError: unreadable file, wrong structure, or a pipeline that does not parse.
    """
    if path is None:
        space = default_space(target)
    else:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"{p}: cannot read the search space: {exc}") from exc
        space = _space_from_json(data, str(p))
    validate_space(space)
    return space
