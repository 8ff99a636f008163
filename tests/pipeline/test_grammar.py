"""Pipeline text: parse, print, round trip (property test), and errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import OptionRange, Pass, PassContext, PassResult, option_range
from nnopt_graph.pipeline.grammar import PassSpec, Pipeline, option_fields
from nnopt_graph.pipeline.registry import register_pass, registered_passes


@dataclasses.dataclass(frozen=True)
class _AllKindsOptions:
    ratio: float = 0.25
    round_to: int = 8
    reconstruct: bool = True
    method: str = dataclasses.field(default="l2", metadata={"choices": ("l1", "l2", "activation")})
    label: str = "plain"


@register_pass
class _AllKindsPass(Pass):
    """Test-only pass with one option of every kind."""

    name = "test-all-option-kinds"
    Options = _AllKindsOptions

    def run(self, model, context: PassContext) -> PassResult:
        return PassResult()


def test_printed_pipeline_names_every_option():
    text = str(Pipeline.parse("test-all-option-kinds{ratio=0.5}"))
    assert (
        text == "test-all-option-kinds{ratio=0.5 round-to=8 reconstruct=true method=l2 label=plain}"
    )


def test_default_preset_expands():
    names = Pipeline.parse("default").names()
    assert names[0] == "lift-constants" and "fold-batchnorm" in names


def test_whitespace_and_quotes():
    p = Pipeline.parse(
        ' test-all-option-kinds{ label="with space, and \\"quote\\"" ratio=1e-3 } , infer-shapes '
    )
    assert p.passes[0].options.label == 'with space, and "quote"'
    assert p.passes[0].options.ratio == 0.001
    assert Pipeline.parse(str(p)) == p


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty pipeline"),
        ("infer-shapes,", "expected a pass name"),
        ("a,,b", "expected a pass name"),
        ("no-such-pass", "unknown pass 'no-such-pass'"),
        ("test-all-option-kinds{ratio=}", "expected an option value"),
        ("test-all-option-kinds{ratio=x}", "not a valid float"),
        ("test-all-option-kinds{round-to=1.5}", "not a valid int"),
        ("test-all-option-kinds{reconstruct=maybe}", "not a valid bool"),
        ("test-all-option-kinds{method=l3}", "not one of"),
        ("test-all-option-kinds{nope=1}", "has no option 'nope'"),
        ("test-all-option-kinds{ratio=1 ratio=2}", "given twice"),
        ("test-all-option-kinds{ratio=1", "missing '}'"),
        ('test-all-option-kinds{label="x}', "unterminated string"),
        ("infer-shapes}", "expected ','"),
        ("Infer-Shapes", "expected a pass name"),
    ],
)
def test_bad_pipeline_text(text, fragment):
    with pytest.raises(BadInputError) as info:
        Pipeline.parse(text)
    assert fragment in str(info.value)


_BIG = 2**40


def _value_strategy(field, kind):
    """Values inside the option's declared choices or range (the grammar accepts them)."""
    choices = field.metadata.get("choices")
    if choices:
        return st.sampled_from(choices)
    if kind is bool:
        return st.booleans()
    allowed = option_range(field) or OptionRange()
    if kind is int:
        lo = -_BIG if allowed.lo is None else math.ceil(allowed.lo) + (not allowed.lo_inclusive)
        hi = _BIG if allowed.hi is None else math.floor(allowed.hi) - (not allowed.hi_inclusive)
        return st.integers(min_value=lo, max_value=hi)
    if kind is float:
        return st.floats(
            min_value=-1e12 if allowed.lo is None else allowed.lo,
            max_value=1e12 if allowed.hi is None else allowed.hi,
            exclude_min=allowed.lo is not None and not allowed.lo_inclusive,
            exclude_max=allowed.hi is not None and not allowed.hi_inclusive,
            allow_nan=False,
            allow_infinity=False,
        )
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


def _out_of_range_strategy(field, kind):
    """Text of values outside the option's range: below, above, at an open bound, NaN, Inf."""
    allowed = option_range(field)
    candidates = ["nan", "inf", "-inf"] if kind is float else []
    if allowed is not None:
        if allowed.lo is not None:
            candidates.append(repr(kind(allowed.lo - 1)))
            if not allowed.lo_inclusive:
                candidates.append(repr(kind(allowed.lo)))
        if allowed.hi is not None:
            candidates.append(repr(kind(allowed.hi + 1)))
            if not allowed.hi_inclusive:
                candidates.append(repr(kind(allowed.hi)))
    return candidates


def _ranged_options():
    """(pass, option key, field, kind) of every built-in option with a range or float type."""
    found = []
    for name, cls in sorted(registered_passes().items()):
        if name.startswith("test-"):
            continue
        for key, field, kind in option_fields(cls):
            if kind in (int, float) and not field.metadata.get("choices"):
                found.append((name, key, field, kind))
    return found


def test_built_in_numeric_options_declare_ranges():
    missing = [f"{n}.{k}" for n, k, f, _ in _ranged_options() if option_range(f) is None]
    assert missing == []
    # The defaults are inside their own ranges.
    for name, cls in registered_passes().items():
        for _, field, _kind in option_fields(cls):
            allowed = option_range(field)
            if allowed is not None:
                assert allowed.contains(field.default), (name, field.name)


@pytest.mark.parametrize(
    ("name", "key", "field", "kind"),
    _ranged_options(),
    ids=[f"{n}.{k}" for n, k, _, _ in _ranged_options()],
)
def test_out_of_range_option_values_are_rejected(name, key, field, kind):
    texts = _out_of_range_strategy(field, kind)
    assert texts, "every numeric option has a value outside its range"
    for text in texts:
        with pytest.raises(BadInputError) as info:
            Pipeline.parse(f"{name}{{{key}={text}}}")
        message = str(info.value)
        assert f"option '{key}' of pass '{name}'" in message
        assert str(option_range(field)) in message, message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prune-channels{ratio=1.5}", "outside the allowed range [0, 1)"),
        ("prune-channels{ratio=1.0}", "outside the allowed range [0, 1)"),
        ("prune-channels{ratio=-1}", "outside the allowed range [0, 1)"),
        ("prune-channels{ratio=nan}", "not a finite number; allowed range [0, 1)"),
        ("prune-channels{ratio=inf}", "not a finite number"),
        ("cluster-weights{bits=9}", "outside the allowed range [1, 8]"),
        ("cluster-weights{bits=0}", "outside the allowed range [1, 8]"),
        ("quantize-int4{block-size=24}", "not one of 16, 32, 64, 128, 256"),
        ("sparsify{pattern=4:2}", "need 0 < N < M"),
        ("sparsify{pattern=2:2}", "need 0 < N < M"),
        ("sparsify{pattern=x}", "pattern must be N:M"),
        ("cluster-weights{method=kmeans encoding=dequantize}", "needs encoding=codebook"),
    ],
)
def test_option_range_messages(text, fragment):
    with pytest.raises(BadInputError) as info:
        Pipeline.parse(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "prune-channels{ratio=0}",
        "prune-channels{ratio=0.999}",
        "cluster-weights{bits=1}",
        "cluster-weights{bits=8}",
        "sparsify{pattern=1:4}",
        "sparsify{pattern=unstructured ratio=0.9}",
    ],
)
def test_option_values_at_allowed_bounds_parse(text):
    assert Pipeline.parse(str(Pipeline.parse(text))) == Pipeline.parse(text)


def test_typed_options_are_checked_too():
    with pytest.raises(BadInputError, match=r"allowed range \[0, 1\)"):
        PassSpec.create("prune-channels", ratio=1.5)
    with pytest.raises(BadInputError, match="not a finite number"):
        PassSpec.create("prune-channels", ratio=math.nan)


def test_option_range_rendering():
    assert str(OptionRange(0, 1, True, False)) == "[0, 1)"
    assert str(OptionRange(1, None)) == "[1, inf)"
    assert str(OptionRange(None, 0.5, False, True)) == "(-inf, 0.5]"
    assert not OptionRange(0, 1, False, False).contains(0)
    assert OptionRange(0, 1).contains(1)
    assert not OptionRange().contains(math.inf)


@st.composite
def _specs(draw):
    passes = registered_passes()
    name = draw(st.sampled_from(sorted(passes)))
    values = {}
    for _, field, kind in option_fields(passes[name]):
        if draw(st.booleans()):
            values[field.name] = draw(_value_strategy(field, kind))
    try:
        return PassSpec.create(name, **values)
    except BadInputError:
        assume(False)  # a pass may reject option values (ranges, combinations)


@settings(max_examples=300, deadline=None)
@given(st.lists(_specs(), min_size=1, max_size=6))
def test_round_trip_property(specs):
    pipeline = Pipeline(tuple(specs))
    text = str(pipeline)
    parsed = Pipeline.parse(text)
    assert parsed == pipeline
    assert str(parsed) == text
    for spec in parsed.passes:
        for _, field, kind in option_fields(registered_passes()[spec.name]):
            value = getattr(spec.options, field.name)
            assert isinstance(value, kind)
            if kind is float:
                assert not math.isnan(value)
