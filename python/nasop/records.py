"""Trials as plain dicts, the same shape from a run directory and from a cluster:

    {"name": "fmnist-3", "index": 3, "stage": "search" | "final",
     "phase": "Pending" | "Running" | "Succeeded" | "Failed" | "Stopped",
     "epochs": 4, "candidate": "|nor_conv_3x3~0|+...;lr=0.1", "architecture": "|...|",
     "hyperparameters": {"lr": 0.1}, "metrics": {"val_accuracy": 0.87, ...},
     "reason": "Completed", "artifact": "/path or pvc://claim/path or s3://bucket/key",
     "duration_seconds": 12.3}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import missing_extra

Trial = Dict[str, Any]

ENDED = ("Succeeded", "Failed", "Stopped")


class Trials(List[Trial]):
    """A list of trial dicts, with :meth:`to_pandas`."""

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per trial: index, name, stage, phase, epochs,
        candidate, architecture, duration_seconds, reason, artifact, then one column per
        metric (its name) and per hyperparameter (``hp.<name>``)."""
        try:
            import pandas
        except ImportError:
            raise missing_extra("pandas", "pandas", "Trials.to_pandas()") from None
        rows = []
        for t in self:
            row = {k: v for k, v in t.items() if k not in ("metrics", "hyperparameters")}
            row.update({f"hp.{k}": v for k, v in (t.get("hyperparameters") or {}).items()})
            row.update(t.get("metrics") or {})
            rows.append(row)
        return pandas.DataFrame(rows)


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _typed(text: str, kind: Optional[str]) -> Any:
    """A hyperparameter's value as the engine gives it: int and float by the space's kind,
    a categorical always a string; guessed without the space."""
    if kind == "categorical":
        return text
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return _value(text)
    return _value(text)


def split_candidate(candidate: str, space: Optional[Mapping[str, Any]] = None) -> Tuple[Optional[str], Dict[str, Any]]:
    """A candidate string as its architecture (None for a hyperparameters-only space) and
    hyperparameters: ``|a~0|+|b~0|c~1|;lr=0.1`` -> (``|a~0|+|b~0|c~1|``, {"lr": 0.1}),
    ``lr=0.1;hidden=12`` -> (None, {"lr": 0.1, "hidden": 12}). With the experiment's
    ``spec.searchSpace``, each value has its declared type (a categorical "16" stays a
    string, a float 1.0 stays a float), as `nasop results` gives them."""
    kinds: Dict[str, str] = {}
    for hp in (space or {}).get("hyperparameters") or []:
        kind = next((k for k in ("int", "float", "categorical") if hp.get(k) is not None), None)
        if kind:
            kinds[hp.get("name", "")] = kind
    parts = candidate.split(";") if candidate else []
    architecture = None
    if parts and "=" not in parts[0]:
        architecture = parts.pop(0) or None
    hyperparameters: Dict[str, Any] = {}
    for part in parts:
        if "=" in part:
            name, value = part.split("=", 1)
            hyperparameters[name] = _typed(value, kinds.get(name))
    return architecture, hyperparameters


def _seconds(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def from_nastrial(obj: Mapping[str, Any], space: Optional[Mapping[str, Any]] = None) -> Trial:
    """A NasTrial object as a trial dict (as src/api/record.rs reads one: no phase is
    Pending, no stage is the search); ``space``, the experiment's spec.searchSpace, types
    the hyperparameters."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    architecture, hyperparameters = split_candidate(spec.get("candidate", ""), space)
    started, finished = _seconds(status.get("startTime")), _seconds(status.get("completionTime"))
    return {
        "name": (obj.get("metadata") or {}).get("name"),
        "index": spec.get("index"),
        "stage": "final" if spec.get("stage") == "Final" else "search",
        "phase": status.get("phase") or "Pending",
        "epochs": spec.get("epochs"),
        "candidate": spec.get("candidate"),
        "architecture": architecture,
        "hyperparameters": hyperparameters,
        "metrics": dict(status.get("metrics") or {}),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "artifact": status.get("artifact"),
        "duration_seconds": finished - started if started is not None and finished is not None else None,
    }


def from_results(experiment: str, t: Mapping[str, Any]) -> Trial:
    """A trial of `nasop results --json` as a trial dict."""
    return {
        "name": f"{experiment}-{t['index']}",
        "index": t["index"],
        "stage": t.get("stage") or "search",
        "phase": t.get("phase"),
        "epochs": t.get("epochs"),
        "candidate": t.get("candidate"),
        "architecture": t.get("architecture"),
        "hyperparameters": dict(t.get("hyperparameters") or {}),
        "metrics": dict(t.get("metrics") or {}),
        "reason": t.get("reason"),
        "message": None,
        "artifact": t.get("artifact"),
        "duration_seconds": t.get("duration_seconds"),
    }


def finished_search_trials(trials: List[Trial]) -> int:
    """Search trials that have ended: what the progress bar counts against maxTrials."""
    return sum(1 for t in trials if t["stage"] == "search" and t["phase"] in ENDED)
