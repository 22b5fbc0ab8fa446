"""What every client offers, over a runs directory (:class:`nasop.LocalClient`) or a
cluster (:class:`nasop.ClusterClient`), and :class:`Run`, one experiment's handle."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from .errors import NasopError
from .experiment import Experiment
from .model import Model
from .records import Trial, Trials


class Client:
    """The calls both clients share; each takes the experiment's name."""

    def create(self, experiment: Experiment, **options: Any) -> "Run":
        raise NotImplementedError

    def get(self, name: str) -> Dict[str, Any]:
        raise NotImplementedError

    def list(self) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def wait(self, name: str, *, timeout: Optional[float] = None, progress: bool = True,
             interval: float = 1.0) -> Dict[str, Any]:
        raise NotImplementedError

    def trials(self, name: str) -> Trials:
        raise NotImplementedError

    def best(self, name: str) -> Optional[Trial]:
        raise NotImplementedError

    def pareto(self, name: str) -> List[Trial]:
        raise NotImplementedError

    def final_training(self, name: str) -> Optional[Dict[str, Any]]:
        raise NotImplementedError

    def _open_model(self, name: str, artifact: str, torchscript: bool) -> Model:
        raise NotImplementedError

    def load_model(self, name: str, trial: Optional[Union[int, str]] = None, *,
                   torchscript: bool = True) -> Model:
        """The model of the best trial (or of ``trial``, by index or name): TorchScript
        through torch when torch is installed and ``torchscript``, else its safetensors
        weights as numpy arrays."""
        if trial is None:
            chosen = self.best(name)
            if chosen is None:
                raise NasopError(f"experiment {name} has no best trial yet: wait() for it to finish trials")
        else:
            matches = [t for t in self.trials(name) if trial in (t["index"], t["name"])]
            if not matches:
                raise NasopError(f"experiment {name} has no trial {trial!r}")
            chosen = matches[0]
        artifact = chosen.get("artifact")
        if not artifact:
            raise NasopError(
                f"trial {chosen['name']} of {name} saved no model: a model is kept by trials that complete "
                "their epochs with a trainer that saves one (nasop-trainer, or nasop_trial's save_model()); "
                "on a cluster, spec.storage must say where"
            )
        return self._open_model(name, artifact, torchscript)


class Run:
    """One experiment through its client: the same calls without the name.

    ``client.create(experiment)`` returns one; ``client.run_of(name)`` gives one for an
    experiment that exists already."""

    def __init__(self, client: Client, name: str):
        self.client = client
        self.name = name

    def get(self) -> Dict[str, Any]:
        return self.client.get(self.name)

    def wait(self, *, timeout: Optional[float] = None, progress: bool = True,
             interval: float = 1.0) -> Dict[str, Any]:
        return self.client.wait(self.name, timeout=timeout, progress=progress, interval=interval)

    def trials(self) -> Trials:
        return self.client.trials(self.name)

    def best(self) -> Optional[Trial]:
        return self.client.best(self.name)

    def pareto(self) -> List[Trial]:
        return self.client.pareto(self.name)

    def final_training(self) -> Optional[Dict[str, Any]]:
        return self.client.final_training(self.name)

    def load_model(self, trial: Optional[Union[int, str]] = None, *, torchscript: bool = True) -> Model:
        return self.client.load_model(self.name, trial, torchscript=torchscript)

    def delete(self) -> None:
        self.client.delete(self.name)

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {type(self.client).__name__})"
