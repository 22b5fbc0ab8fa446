"""A NasExperiment: built from a dict, a YAML file or typed helpers, validated as the API
server would before it is sent anywhere.

    exp = nasop.Experiment(
        "fmnist",
        objectives=[nasop.Objective("val_accuracy", "maximize")],
        search_space=nasop.SearchSpace(cell=nasop.Cell(nodes=4)),
        strategy=nasop.Strategy("evolution", seed=7, population=4, sample_size=2),
        budget=nasop.Budget(max_trials=10, parallelism=2),
        trial=nasop.TrialTemplate("ghcr.io/nasop/nasop-trainer:0.1.0", ["nasop-trainer", "train"]),
    )
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from .errors import ValidationError
from .rules import validate_nasop, validate_rules
from .schema import API_VERSION, KIND, validate_structure

# NAS-Bench-201's operations, the default of a cell.
NB201_OPERATIONS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _clean(values: Mapping[str, Any]) -> Dict[str, Any]:
    """camelCase keys, without the fields left unset."""
    return {_camel(k): v for k, v in values.items() if v is not None}


def _plain(value: Any) -> Any:
    """A helper object (anything with to_dict) or a container of them, as plain data."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Cell:
    """A cell of ``nodes`` nodes, one operation per edge (NAS-Bench-201: 4 nodes)."""

    nodes: int = 4
    operations: Sequence[str] = NB201_OPERATIONS

    def to_dict(self) -> Dict[str, Any]:
        return {"nodes": self.nodes, "operations": list(self.operations)}


@dataclass
class Layer:
    """One layer of a layer-wise network: an operation and a width to choose."""

    operations: Sequence[str]
    widths: Sequence[int]

    def to_dict(self) -> Dict[str, Any]:
        return {"operations": list(self.operations), "widths": list(self.widths)}


@dataclass
class Int:
    """An integer hyperparameter in [min, max]."""

    name: str
    min: int
    max: int

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "int": {"min": self.min, "max": self.max}}


@dataclass
class Float:
    """A real hyperparameter in [min, max], on a log scale with ``log=True``."""

    name: str
    min: float
    max: float
    log: bool = False

    def to_dict(self) -> Dict[str, Any]:
        r: Dict[str, Any] = {"min": self.min, "max": self.max}
        if self.log:
            r["log"] = True
        return {"name": self.name, "float": r}


@dataclass
class Categorical:
    """A hyperparameter that takes one of ``values``."""

    name: str
    values: Sequence[str]

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "categorical": [str(v) for v in self.values]}


Hyperparameter = Union[Int, Float, Categorical, Mapping[str, Any]]


@dataclass
class SearchSpace:
    """A cell or layers (not both), and hyperparameters."""

    cell: Optional[Union[Cell, Mapping[str, Any]]] = None
    layers: Optional[Sequence[Union[Layer, Mapping[str, Any]]]] = None
    hyperparameters: Sequence[Hyperparameter] = ()

    def to_dict(self) -> Dict[str, Any]:
        r: Dict[str, Any] = {}
        if self.cell is not None:
            r["cell"] = _plain(self.cell)
        if self.layers is not None:
            r["layers"] = _plain(list(self.layers))
        if self.hyperparameters:
            r["hyperparameters"] = _plain(list(self.hyperparameters))
        return r


@dataclass
class Objective:
    """A metric to maximize or minimize; the first objective ranks trials. ``target`` ends
    the search once reached."""

    metric: str
    goal: str = "maximize"
    target: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return _clean({"metric": self.metric, "goal": self.goal, "target": self.target})


@dataclass
class Constraint:
    """A hard limit on a reported metric: min, max or both."""

    metric: str
    min: Optional[float] = None
    max: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return _clean({"metric": self.metric, "min": self.min, "max": self.max})


class Strategy:
    """The search algorithm (random, grid, evolution, local, reinforce, bayesian, nsga2),
    its seed and settings in snake_case (``sample_size=2`` is ``settings.sampleSize``)."""

    def __init__(self, algorithm: str, seed: int = 0, **settings: Any):
        self.algorithm = algorithm
        self.seed = seed
        self.settings = settings

    def to_dict(self) -> Dict[str, Any]:
        r: Dict[str, Any] = {"algorithm": self.algorithm, "seed": self.seed}
        if self.settings:
            r["settings"] = _clean(self.settings)
        return r

    def __repr__(self) -> str:
        return f"Strategy({self.algorithm!r}, seed={self.seed}, settings={self.settings!r})"


@dataclass
class Fidelity:
    """Multi-fidelity (asha, successiveHalving, hyperband) between min and max epochs."""

    algorithm: str = "asha"
    min_epochs: int = 1
    max_epochs: int = 4
    reduction_factor: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return _clean(vars(self))


@dataclass
class MedianStop:
    """Stops trials that fall below the median of the others at the same step."""

    min_trials: Optional[int] = None
    start_step: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"algorithm": "medianStop", **_clean(vars(self))}


@dataclass
class Budget:
    """How many trials, how many at once, and the limits around them."""

    max_trials: int
    parallelism: int = 1
    max_failed_trials: Optional[int] = None
    trial_epochs: Optional[int] = None
    trial_timeout_seconds: Optional[int] = None
    deadline_seconds: Optional[int] = None
    pending_timeout_seconds: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return _clean(vars(self))


@dataclass
class FinalTraining:
    """Trains the search's ``top`` candidates again with ``seeds`` seeds once it ends."""

    top: Optional[int] = None
    seeds: Optional[int] = None
    epochs: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return _clean(vars(self))


@dataclass
class TrialTemplate:
    """A trial pod of one container: an image, its command and args, environment and
    resources. ``gpus`` asks for that many ``nvidia.com/gpu``. `nasop run` runs the command
    as a local process (the image is used on a cluster only)."""

    image: str
    command: Sequence[str]
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cpu: Optional[str] = None
    memory: Optional[str] = None
    gpus: int = 0
    name: str = "trial"
    node_selector: Optional[Mapping[str, str]] = None

    def to_dict(self) -> Dict[str, Any]:
        container: Dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "command": [str(c) for c in self.command],
        }
        if self.args:
            container["args"] = [str(a) for a in self.args]
        if self.env:
            container["env"] = [{"name": k, "value": str(v)} for k, v in self.env.items()]
        requests = _clean({"cpu": self.cpu, "memory": self.memory})
        limits: Dict[str, Any] = {}
        if self.gpus:
            limits["nvidia.com/gpu"] = self.gpus
        if requests or limits:
            container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
        spec: Dict[str, Any] = {"containers": [container]}
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        return {"spec": spec}


class Wrap:
    """spec.wrap: the trial's command runs under `nasop wrap`, for a script that only prints
    its metrics (``epoch=3 val_accuracy=0.81``) or writes TensorBoard event files. The
    command must be given in the trial template (nasop cannot read an image's entrypoint);
    ``{lr}``-style placeholders in its arguments become the trial's values."""

    def __init__(self, metrics_regex: Optional[str] = None, step_metrics: Sequence[str] = (),
                 tensorboard_dir: Optional[str] = None, stop_grace_seconds: Optional[int] = None):
        self.metrics_regex = metrics_regex
        self.step_metrics = list(step_metrics)
        self.tensorboard_dir = tensorboard_dir
        self.stop_grace_seconds = stop_grace_seconds

    def to_dict(self) -> Dict[str, Any]:
        return _clean({
            "metricsRegex": self.metrics_regex,
            "stepMetrics": self.step_metrics or None,
            "tensorboardDir": self.tensorboard_dir,
            "stopGraceSeconds": self.stop_grace_seconds,
        })


class Experiment:
    """A NasExperiment manifest.

    Build it with the typed helpers (above), or from a dict or YAML file with
    :meth:`from_dict` / :meth:`from_yaml`. :meth:`validate` raises
    :class:`nasop.ValidationError` with the API server's message for the first bad field;
    every client validates before it sends."""

    def __init__(
        self,
        name: str,
        *,
        objectives: Sequence[Union[Objective, Mapping[str, Any]]],
        search_space: Union[SearchSpace, Mapping[str, Any]],
        strategy: Union[Strategy, Mapping[str, Any]],
        budget: Union[Budget, Mapping[str, Any]],
        trial: Optional[Union[TrialTemplate, Mapping[str, Any]]] = None,
        constraints: Sequence[Union[Constraint, Mapping[str, Any]]] = (),
        fidelity: Optional[Union[Fidelity, Mapping[str, Any]]] = None,
        early_stopping: Optional[Union[MedianStop, Mapping[str, Any]]] = None,
        final_training: Optional[Union[FinalTraining, Mapping[str, Any]]] = None,
        warm_start: Optional[Sequence[str]] = None,
        storage: Optional[Mapping[str, Any]] = None,
        wrap: Optional[Union[Wrap, Mapping[str, Any]]] = None,
        namespace: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
    ):
        spec: Dict[str, Any] = {
            "objectives": _plain(list(objectives)),
            "searchSpace": _plain(search_space),
            "strategy": _plain(strategy),
            "budget": _plain(budget),
        }
        optional = {
            "constraints": list(constraints) or None,
            "fidelity": fidelity,
            "earlyStopping": early_stopping,
            "finalTraining": final_training,
            "warmStart": {"experiments": list(warm_start)} if warm_start else None,
            "storage": storage,
            # spec.wrap: the trial's command runs under `nasop wrap` (an unmodified script
            # whose printed `name=value` lines are its metrics); {} for the defaults.
            "wrap": (wrap.to_dict() if isinstance(wrap, Wrap) else dict(wrap)) if wrap is not None else None,
            "trialTemplate": trial,
        }
        spec.update({k: _plain(v) for k, v in optional.items() if v is not None})
        metadata: Dict[str, Any] = {"name": name}
        if namespace:
            metadata["namespace"] = namespace
        if labels:
            metadata["labels"] = dict(labels)
        self.manifest: Dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": metadata,
            "spec": spec,
        }

    @classmethod
    def from_dict(cls, manifest: Mapping[str, Any]) -> "Experiment":
        """An experiment from a manifest as a dict (a copy is kept). apiVersion and kind
        default to NasExperiment's."""
        exp = cls.__new__(cls)
        exp.manifest = copy.deepcopy(dict(manifest))
        exp.manifest.setdefault("apiVersion", API_VERSION)
        exp.manifest.setdefault("kind", KIND)
        return exp

    @classmethod
    def from_yaml(cls, source: Union[str, "os.PathLike[str]"]) -> "Experiment":
        """An experiment from a YAML file (a path) or YAML text (a string with a newline)."""
        text = str(source) if isinstance(source, str) and "\n" in source else Path(source).read_text(encoding="utf-8")
        # A file may hold several documents (a ConfigMap beside the experiment): the
        # NasExperiment is the one.
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        found = [d for d in documents if isinstance(d, dict) and d.get("kind", KIND) == KIND]
        if len(found) != 1:
            what = "no NasExperiment" if not found else f"{len(found)} NasExperiments"
            raise ValidationError([("", f"{source}: {what} among its {len(documents)} YAML documents; "
                                        "give a file with exactly one (kind: NasExperiment)")])
        return cls.from_dict(found[0])

    @property
    def name(self) -> str:
        return (self.manifest.get("metadata") or {}).get("name", "")

    @property
    def spec(self) -> Dict[str, Any]:
        return self.manifest.setdefault("spec", {})

    def renamed(self, name: str) -> "Experiment":
        """A copy under another metadata.name."""
        exp = Experiment.from_dict(self.manifest)
        exp.manifest.setdefault("metadata", {})["name"] = name
        return exp

    def problems(self, old: Optional["Experiment"] = None) -> List[tuple]:
        """Every problem as ``(field, message)``: the schema's checks, then the CEL rules
        (``old``, the stored experiment, for the immutability rules of an update), then the
        checks nasop makes when it reads the spec that a schema cannot express (spec.wrap)."""
        errors = validate_structure(self.manifest)
        errors += validate_rules(self.manifest, old.manifest if old else None)
        if not errors:
            errors += validate_nasop(self.manifest)
        return errors

    def validate(self, old: Optional["Experiment"] = None) -> "Experiment":
        """Raises :class:`nasop.ValidationError` when the API server would refuse this
        experiment; returns it otherwise."""
        errors = self.problems(old)
        if errors:
            raise ValidationError(errors)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(self.manifest)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.manifest, sort_keys=False)

    def __repr__(self) -> str:
        return f"Experiment({self.name!r})"
