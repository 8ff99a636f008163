"""Pipeline text: parse, print, round trip (property test), and errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nnopt_graph.errors import BadInputError
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
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
    assert text == "test-all-option-kinds{ratio=0.5 round-to=8 reconstruct=true method=l2 label=plain}"


def test_default_preset_expands():
    names = Pipeline.parse("default").names()
    assert names[0] == "lift-constants" and "fold-batchnorm" in names


def test_whitespace_and_quotes():
    p = Pipeline.parse(' test-all-option-kinds{ label="with space, and \\"quote\\"" ratio=1e-3 } , infer-shapes ')
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


def _value_strategy(field, kind):
    choices = field.metadata.get("choices")
    if choices:
        return st.sampled_from(choices)
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(min_value=-(2**40), max_value=2**40)
    if kind is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


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
