"""Error types that map onto the CLI's exit codes."""

from __future__ import annotations

__all__ = ["BadInputError", "CheckFailedError", "NnoptError", "PassFailedError", "one_line"]


class NnoptError(Exception):
    """Base of every error nnopt-graph reports to its user."""

    exit_code = 1


class BadInputError(NnoptError):
    """Usage error or unusable input: exit 2, nothing written."""

    exit_code = 2


class CheckFailedError(NnoptError):
    """The job ran but its result failed a check or guard: exit 1, nothing written."""

    exit_code = 1


class PassFailedError(NnoptError):
    """A pass raised or broke the model; names the pass and the passes before it."""

    exit_code = 1

    def __init__(self, pass_name: str, previous: list[str], reason: str) -> None:
        self.pass_name = pass_name
        self.previous = list(previous)
        self.reason = reason
        before = ", ".join(previous) if previous else "none"
        super().__init__(f"pass '{pass_name}' failed (passes before it: {before}): {reason}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line: a multi-line ONNX Runtime error keeps its reason.

    ONNX Runtime puts the cause on later lines ("Got: 8 Expected: 1"); those are joined
    with '; ' instead of dropped, and the result is cut to ``limit`` characters.
    """
    lines = [" ".join(line.split()) for line in str(exc).strip().splitlines()]
    text = "; ".join(line for line in lines if line) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
