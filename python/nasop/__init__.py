"""nasop's Python client: build a NasExperiment, validate it as the API server would, run
it on this machine (`nasop run`) or on a cluster, follow it, read its trials and load the
winner's model.

    import nasop
    exp = nasop.Experiment.from_yaml("examples/nb201-evolution.yaml")
    run = nasop.LocalClient("nasop-runs").create(exp)
    run.wait()
    print(run.best())
"""

from .client import Client, Run
from .cluster import ClusterClient
from .errors import ApiError, NasopError, ValidationError
from .experiment import (
    NB201_OPERATIONS,
    Budget,
    Categorical,
    Cell,
    Constraint,
    Experiment,
    FinalTraining,
    Fidelity,
    Float,
    Int,
    Layer,
    MedianStop,
    Objective,
    SearchSpace,
    Strategy,
    TrialTemplate,
    Wrap,
)
from .local import LocalClient
from .model import Model
from .records import Trials

__version__ = "0.1.0"

__all__ = [
    "ApiError", "Budget", "Categorical", "Cell", "Client", "ClusterClient", "Constraint", "Experiment",
    "FinalTraining", "Fidelity", "Float", "Int", "Layer", "LocalClient", "MedianStop", "Model",
    "NB201_OPERATIONS", "NasopError", "Objective", "Run", "SearchSpace", "Strategy", "TrialTemplate",
    "Trials", "ValidationError", "Wrap",
]
