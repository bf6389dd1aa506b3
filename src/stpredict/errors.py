"""Exceptions with messages that tell the user what is wrong, where, and what to do."""

from __future__ import annotations

from os import PathLike

__all__ = [
    "StpredictError",
    "InputError",
    "GeometryError",
    "ConfigError",
    "format_message",
    "TrainingInterrupted",
    "LeakageError",
]


def format_message(
    problem: str,
    *,
    file: str | PathLike[str] | None = None,
    sample: str | None = None,
    fix: str | None = None,
) -> str:
    """Build a one-line message: ``sample 'S': file 'F': problem. Fix: ...``.

    Parameters
    ----------
    problem
        What is wrong, in one sentence.
    file
        The offending file, if any.
    sample
        The sample (tissue section) the file belongs to, if any.
    fix
        What the user should do about it.
    """
    parts = []
    if sample is not None:
        parts.append(f"sample '{sample}'")
    if file is not None:
        parts.append(f"file '{file}'")
    text = problem.rstrip(".")
    if parts:
        text = ": ".join(parts) + ": " + text
    text += "."
    if fix:
        text += f" Fix: {fix.rstrip('.')}."
    return " ".join(text.split())  # one line, whatever the parts held


class StpredictError(Exception):
    """Base class of the errors stpredict raises on purpose (bad input, failed checks)."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | PathLike[str] | None = None,
        sample: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.sample = sample
        self.fix = fix
        super().__init__(format_message(problem, file=file, sample=sample, fix=fix))


class InputError(StpredictError):
    """An input file is missing, unreadable or not in the expected format."""


class GeometryError(StpredictError):
    """Coordinates, pixel size or image bounds are inconsistent."""


class ConfigError(StpredictError):
    """The configuration or the sample sheet is invalid."""


class TrainingInterrupted(RuntimeError):
    """Raised by :func:`train` when ``stop_after_epoch`` is reached (simulates a killed job)."""


class LeakageError(StpredictError):
    """Held-out (validation or test) data can reach training: a split or a fit is unsound."""
