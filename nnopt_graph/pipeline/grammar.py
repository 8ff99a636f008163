"""Pipeline text in MLIR style: ``dedup,prune-channels{ratio=0.3 round-to=8}``.

The printed form names every option with its value and parses back to an equal pipeline.
"""

from __future__ import annotations

__all__ = ["PassSpec", "Pipeline", "check_option", "describe_options", "option_fields"]

import dataclasses
import math
import re
import typing
from typing import Any

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import Pass, option_range
from nnopt_graph.pipeline.registry import PRESETS, get_pass

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.+\-:/]+")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def option_fields(pass_cls: type[Pass]) -> list[tuple[str, dataclasses.Field[Any], type]]:
    """(kebab-case name, field, python type) of each option of a pass."""
    hints = typing.get_type_hints(pass_cls.Options)
    return [(_kebab(f.name), f, hints[f.name]) for f in dataclasses.fields(pass_cls.Options)]


def _convert(pass_name: str, key: str, text: str, field: dataclasses.Field[Any], kind: type) -> Any:
    where = f"option '{key}' of pass '{pass_name}'"
    try:
        if kind is bool:
            if text.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(text)
            value: Any = text.lower() in {"true", "1"}
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        else:
            value = text
    except ValueError:
        raise BadInputError(f"{where}: '{text}' is not a valid {kind.__name__}") from None
    check_option(pass_name, key, value, field, text)
    return value


def check_option(
    pass_name: str, key: str, value: Any, field: dataclasses.Field[Any], text: str | None = None
) -> None:
    """Check a typed option value against its field's declared choices and range.

    Raises:
        BadInputError: NaN or Inf, a value outside the range, or not one of the choices;
            the message gives the allowed values.
    """
    where = f"option '{key}' of pass '{pass_name}'"
    shown = text if text is not None else str(value)
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise BadInputError(f"{where}: '{shown}' is not one of {', '.join(map(str, choices))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    allowed = option_range(field)
    if isinstance(value, float) and not math.isfinite(value):
        hint = f"; allowed range {allowed}" if allowed is not None else ""
        raise BadInputError(f"{where}: '{shown}' is not a finite number{hint}")
    if allowed is not None and not allowed.contains(value):
        raise BadInputError(f"{where}: {shown} is outside the allowed range {allowed}")


def describe_options(pass_cls: type[Pass]) -> str:
    """What each constrained option of a pass accepts, e.g. ``ratio in [0, 1)``."""
    parts = []
    for key, field, _ in option_fields(pass_cls):
        choices = field.metadata.get("choices")
        allowed = option_range(field)
        if choices is not None:
            parts.append(f"{key} in {{{', '.join(map(str, choices))}}}")
        elif allowed is not None:
            parts.append(f"{key} in {allowed}")
    return "; ".join(parts)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One pipeline element: a registered pass name and its full, typed options."""

    name: str
    options: Any

    @classmethod
    def create(cls, name: str, raw: dict[str, str] | None = None, **typed: Any) -> PassSpec:
        """Build a spec from text options (``raw``) and/or typed keyword options."""
        pass_cls = get_pass(name)
        fields = {key: (f, kind) for key, f, kind in option_fields(pass_cls)}
        values: dict[str, Any] = {}
        for key, text in (raw or {}).items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                import difflib

                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise BadInputError(f"pass '{name}' has no option '{key}'{hint} (options: {known})")
            f, kind = fields[key]
            values[f.name] = _convert(name, key, text, f, kind)
        by_name = {f.name: (key, f) for key, f, _ in option_fields(pass_cls)}
        for attr, value in typed.items():
            if attr in by_name:
                check_option(name, by_name[attr][0], value, by_name[attr][1])
        values.update(typed)
        try:
            options = pass_cls.Options(**values)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"pass '{name}': {exc}") from None
        problem = getattr(options, "problem", None)
        reason = problem() if callable(problem) else None
        if reason:
            raise BadInputError(f"pass '{name}': {reason}")
        return cls(name, options)

    def instantiate(self) -> Pass:
        """A fresh pass object with these options."""
        return get_pass(self.name)(self.options)

    def __str__(self) -> str:
        pass_cls = get_pass(self.name)
        parts = [
            f"{key}={_format_value(getattr(self.options, f.name))}"
            for key, f, _ in option_fields(pass_cls)
        ]
        return f"{self.name}{{{' '.join(parts)}}}" if parts else self.name


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """An ordered list of pass specs."""

    passes: tuple[PassSpec, ...]

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        """Parse pipeline text; preset names expand in place.

        Raises:
            BadInputError: syntax error (with its position), unknown pass or option,
                or an option value of the wrong type.
        """
        return cls(tuple(_Parser(text).parse()))

    @classmethod
    def of(cls, *specs: PassSpec | str) -> Pipeline:
        """A pipeline from specs or pass names (default options)."""
        return cls(tuple(s if isinstance(s, PassSpec) else PassSpec.create(s) for s in specs))

    def names(self) -> list[str]:
        """The pass names in order."""
        return [p.name for p in self.passes]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.passes + other.passes)


class _Parser:
    """Recursive-descent parser: pipeline := element (',' element)*."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> BadInputError:
        return BadInputError(
            f"bad pipeline text at column {self.pos + 1}: {message} in '{self.text}'"
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def parse(self) -> list[PassSpec]:
        """Check the whole text's syntax first, then resolve names and options."""
        elements: list[tuple[str, dict[str, str], bool]] = []
        self.skip_space()
        if self.pos == len(self.text):
            raise self.error("empty pipeline")
        while True:
            elements.append(self.element())
            self.skip_space()
            if self.pos == len(self.text):
                specs: list[PassSpec] = []
                for name, raw, has_options in elements:
                    if name in PRESETS and not has_options:
                        specs.extend(Pipeline.parse(PRESETS[name]).passes)
                    else:
                        specs.append(PassSpec.create(name, raw))
                return specs
            if self.text[self.pos] != ",":
                raise self.error(f"expected ',' but found '{self.text[self.pos]}'")
            self.pos += 1

    def name(self) -> str:
        self.skip_space()
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.error("expected a pass name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            self.pos += 1
            out = []
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            if self.pos == len(self.text):
                raise self.error("unterminated string")
            self.pos += 1
            return "".join(out)
        match = _BARE_VALUE.match(self.text, self.pos)
        if not match:
            raise self.error("expected an option value")
        self.pos = match.end()
        return match.group()

    def element(self) -> tuple[str, dict[str, str], bool]:
        name = self.name()
        self.skip_space()
        raw: dict[str, str] = {}
        has_options = self.pos < len(self.text) and self.text[self.pos] == "{"
        if has_options:
            self.pos += 1
            while True:
                self.skip_space()
                if self.pos < len(self.text) and self.text[self.pos] == "}":
                    self.pos += 1
                    break
                if self.pos == len(self.text):
                    raise self.error("missing '}'")
                key = self.name()
                if self.pos >= len(self.text) or self.text[self.pos] != "=":
                    raise self.error(f"expected '=' after option '{key}'")
                self.pos += 1
                if key in raw:
                    raise self.error(f"option '{key}' given twice")
                raw[key] = self.value()
        return name, raw, has_options
