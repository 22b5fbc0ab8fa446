"""The client's errors: each names the object or field it is about and what to do."""

from __future__ import annotations

from typing import List, Sequence, Tuple


class NasopError(RuntimeError):
    """A call that could not be carried out: a missing run, a failed `nasop run`, an
    unreadable model. The message says what happened and what to do."""


class ValidationError(ValueError):
    """An experiment that the API server (or `nasop run`) would refuse.

    ``field`` is the path of the first problem (``spec.budget.maxTrials``); ``errors`` holds
    every problem as ``(field, message)``, each message as the API server words it."""

    def __init__(self, errors: Sequence[Tuple[str, str]]):
        self.errors: List[Tuple[str, str]] = list(errors)
        self.field: str = self.errors[0][0] if self.errors else ""
        super().__init__(self._text())

    def _text(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0][1]
        lines = [f"the experiment has {len(self.errors)} invalid fields:"]
        lines += [f"  {message}" for _, message in self.errors]
        return "\n".join(lines)


class ApiError(NasopError):
    """The Kubernetes API server refused a call. ``status`` is the HTTP status (403, 404,
    409, ...), ``reason`` the API's reason (``Forbidden``), and the message is the API
    server's own."""

    def __init__(self, status: int, reason: str, message: str):
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")


def missing_extra(extra: str, module: str, what: str) -> ImportError:
    """The ImportError for an optional dependency: names the pip command that installs it."""
    return ImportError(
        f"{what} needs the Python package {module!r}, which is not installed: "
        f"pip install 'nasop[{extra}]'"
    )

