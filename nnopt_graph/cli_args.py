"""Argument parsing shared by the commands: one-line usage errors, typed values, input shapes."""

from __future__ import annotations

__all__ = ["PROG", "Parser", "check_pass_names", "existing_file", "input_shapes", "int_in"]

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from nnopt_graph.errors import BadInputError

PROG = "nnopt-graph"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Raise a BadInputError (one line, exit 2), with the closest flag for a typo."""
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            import difflib

            known = [o for a in self._all_actions() for o in a.option_strings]
            for word in message[len(prefix) :].split():
                flag = word.split("=", 1)[0]
                if flag.startswith("-"):
                    close = difflib.get_close_matches(flag, known, n=1)
                    if close:
                        message += f"; did you mean '{close[0]}'?"
                        break
        raise BadInputError(message)

    def _all_actions(self) -> list[argparse.Action]:
        """This parser's actions and those of its subcommands."""
        actions = list(self._actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for sub in action.choices.values():
                    actions.extend(sub._actions)  # noqa: SLF001
        return actions


def input_shapes(values: Sequence[str] | None) -> dict[str, list[int]]:
    """``--input-shape name:d1,d2`` values as a mapping."""
    from nnopt_graph.runtime.data import parse_input_shape

    shapes: dict[str, list[int]] = {}
    for text in values or ():
        name, dims = parse_input_shape(text)
        shapes[name] = dims
    return shapes


def check_pass_names(names: set[str], flag: str) -> None:
    """Refuse names that are no registered pass (with the closest one as a suggestion).

    Raises:
        BadInputError: an unknown name.
    """
    import difflib

    from nnopt_graph.pipeline.registry import pass_names

    known = [*pass_names(), "all"]
    for name in sorted(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else " (see 'nnopt-graph list-passes')"
            raise BadInputError(f"{flag}: unknown pass '{name}'{hint}")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside the allowed range [{lo}, {hi}]")
        return value

    return parse


def existing_file(path: str) -> Path:
    """The path, or a one-line error when it does not exist."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    return p
