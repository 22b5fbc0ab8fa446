"""The client over a cluster: NasExperiments and NasTrials through the user's kubeconfig
and the official `kubernetes` client (pip install 'nasop[cluster]'). What it may do is what
the kubeconfig's user may do; a refusal surfaces as :class:`nasop.ApiError` with the API
server's own message."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .client import Client, Run
from .errors import ApiError, NasopError, ValidationError, missing_extra
from .experiment import Experiment
from .model import Model, download_s3, open_directory
from .progress import Snapshot, follow
from .records import Trial, Trials, finished_search_trials, from_nastrial, split_candidate
from .schema import GROUP, VERSION

EXPERIMENTS = "nasexperiments"
TRIALS = "nastrials"


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise missing_extra("cluster", "kubernetes", "ClusterClient") from None
    return kubernetes


def _api_error(e: Any) -> ApiError:
    """An ApiException as ApiError, with the Status object's message when there is one."""
    message, reason = str(getattr(e, "reason", "") or ""), str(getattr(e, "reason", "") or "")
    body = getattr(e, "body", None)
    if body:
        try:
            status = json.loads(body)
            message = status.get("message") or message
            reason = status.get("reason") or reason
        except (ValueError, AttributeError):
            message = body if isinstance(body, str) else message
    return ApiError(int(getattr(e, "status", 0) or 0), reason, message)


class ClusterClient(Client):
    """NasExperiments in ``namespace`` (default: the kubeconfig context's, else
    "default"), through ``kubeconfig`` (default: $KUBECONFIG or ~/.kube/config) and
    ``context``, or in-cluster configuration when ``in_cluster``."""

    def __init__(self, namespace: Optional[str] = None, *, kubeconfig: Optional[str] = None,
                 context: Optional[str] = None, in_cluster: bool = False):
        k8s = _kubernetes()
        if in_cluster:
            k8s.config.load_incluster_config()
            self.api_client = k8s.client.ApiClient()
            default_namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        else:
            configuration = k8s.client.Configuration()
            k8s.config.load_kube_config(config_file=kubeconfig, context=context,
                                        client_configuration=configuration)
            self.api_client = k8s.client.ApiClient(configuration)
            default_namespace = "default"
            try:
                _, active = k8s.config.list_kube_config_contexts(config_file=kubeconfig)
                chosen = active
                if context:
                    contexts, _ = k8s.config.list_kube_config_contexts(config_file=kubeconfig)
                    chosen = next((c for c in contexts if c["name"] == context), active)
                default_namespace = chosen.get("context", {}).get("namespace") or "default"
            except Exception:  # a kubeconfig without contexts still names a server
                pass
        self.namespace = namespace or default_namespace
        self.custom = k8s.client.CustomObjectsApi(self.api_client)
        self.core = k8s.client.CoreV1Api(self.api_client)
        self._exception = k8s.client.ApiException

    def run_of(self, name: str) -> Run:
        return Run(self, name)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except self._exception as e:
            raise _api_error(e) from None

    # --- experiments ---------------------------------------------------------------

    def create(self, experiment: Experiment, **options: Any) -> Run:
        """Validates ``experiment`` and creates it in the client's namespace (a different
        metadata.namespace is refused: the later calls would not find it)."""
        if options:
            raise TypeError(f"ClusterClient.create() takes no options, got {sorted(options)}")
        experiment.validate()
        body = experiment.to_dict()
        namespace = body["metadata"].get("namespace") or self.namespace
        if namespace != self.namespace:
            # Every later call (get, wait, trials, delete) is in the client's namespace.
            raise ValidationError([("metadata.namespace",
                                    f"metadata.namespace: {namespace!r} is not this client's namespace "
                                    f"{self.namespace!r}: use ClusterClient({namespace!r}), or remove it")])
        body["metadata"]["namespace"] = namespace
        self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, EXPERIMENTS, body)
        return Run(self, experiment.name)

    def get(self, name: str) -> Dict[str, Any]:
        """The NasExperiment object as the API server returns it."""
        return self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, EXPERIMENTS, name)

    def list(self) -> List[Dict[str, Any]]:
        found = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, EXPERIMENTS)
        return list(found.get("items", []))

    def delete(self, name: str) -> None:
        """Deletes the NasExperiment; its trials and their pods go with it (owner
        references)."""
        self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, EXPERIMENTS, name,
                   propagation_policy="Background")

    def wait(self, name: str, *, timeout: Optional[float] = None, progress: bool = True,
             interval: float = 1.0) -> Dict[str, Any]:
        """Follows the experiment until its phase is Succeeded or Failed, with a progress
        bar of finished search trials out of maxTrials and the best value; returns the
        object."""

        def look() -> Snapshot:
            obj = self.get(name)
            status = obj.get("status") or {}
            counts = status.get("trials") or {}
            finished = sum(int(counts.get(k, 0)) for k in ("succeeded", "failed", "stopped"))
            if status.get("finalTraining"):  # the counts include final-training trials then
                finished = finished_search_trials(self.trials(name))
            phase = status.get("phase") or "Pending"
            return Snapshot(finished, int(obj["spec"]["budget"]["maxTrials"]), status.get("bestValue"),
                            phase in ("Succeeded", "Failed"), phase)

        follow(name, look, timeout=timeout, interval=interval, progress=progress)
        return self.get(name)

    # --- trials --------------------------------------------------------------------

    def trials(self, name: str) -> Trials:
        """The experiment's NasTrials as trial dicts, by index."""
        experiment = self.get(name)
        uid = experiment["metadata"].get("uid")
        found = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, TRIALS,
                           field_selector=f"spec.experiment={name}")
        items = [
            t for t in found.get("items", [])
            if (t.get("spec") or {}).get("experiment") == name
            and all(ref.get("uid") == uid for ref in t["metadata"].get("ownerReferences") or []
                    if ref.get("kind") == "NasExperiment")
        ]
        space = (experiment.get("spec") or {}).get("searchSpace")
        return Trials(sorted((from_nastrial(t, space) for t in items), key=lambda t: t["index"]))

    def _summary(self, name: str, summary: Optional[Dict[str, Any]], trials: Optional[Trials]) -> Optional[Trial]:
        """A status TrialSummary as the full trial dict (from its NasTrial when it is
        still there)."""
        if not summary:
            return None
        for t in trials if trials is not None else self.trials(name):
            if t["name"] == summary.get("name"):
                if summary.get("artifact") and not t.get("artifact"):
                    t["artifact"] = summary["artifact"]
                return t
        architecture, hyperparameters = split_candidate(summary.get("candidate", ""))
        return {
            "name": summary.get("name"), "index": summary.get("index"),
            "stage": "final" if summary.get("stage") == "Final" else "search", "phase": "Succeeded",
            "epochs": summary.get("epochs"), "candidate": summary.get("candidate"),
            "architecture": architecture, "hyperparameters": hyperparameters,
            "metrics": dict(summary.get("metrics") or {}), "reason": None, "message": None,
            "artifact": summary.get("artifact"), "duration_seconds": None,
        }

    def best(self, name: str) -> Optional[Trial]:
        """status.bestTrial, as the operator picked it (with final training, the winner's
        best final-training trial)."""
        status = self.get(name).get("status") or {}
        return self._summary(name, status.get("bestTrial"), None)

    def pareto(self, name: str) -> List[Trial]:
        """status.paretoFront: the non-dominated trials when there are several objectives."""
        status = self.get(name).get("status") or {}
        front = status.get("paretoFront") or []
        trials = self.trials(name) if front else None
        return [t for t in (self._summary(name, s, trials) for s in front) if t]

    def final_training(self, name: str) -> Optional[Dict[str, Any]]:
        """status.finalTraining in snake_case: winner (a rank) and candidates (rank,
        candidate, search_trial (a trial's name), trials and succeeded (counts), metrics
        with mean, std, count); None before final training."""
        status = (self.get(name).get("status") or {}).get("finalTraining")
        if not status:
            return None
        return {
            "winner": status.get("winner"),
            "candidates": [
                {"rank": c.get("rank"), "candidate": c.get("candidate"), "search_trial": c.get("searchTrial"),
                 "trials": c.get("trials"), "succeeded": c.get("succeeded"), "metrics": c.get("metrics") or {}}
                for c in status.get("candidates") or []
            ],
        }

    # --- models --------------------------------------------------------------------

    def _open_model(self, name: str, artifact: str, torchscript: bool) -> Model:
        if artifact.startswith("s3://"):
            return open_directory(download_s3(artifact), torchscript=torchscript)
        if artifact.startswith("pvc://"):
            return open_directory(self.pvc_path(artifact), torchscript=torchscript)
        if Path(artifact).is_dir():
            return open_directory(Path(artifact), torchscript=torchscript)
        raise NasopError(
            f"the model of {name} is at {artifact} inside its trial's pod, which this machine cannot read: "
            "give the experiment spec.storage (a PersistentVolumeClaim or an S3 bucket) to keep models"
        )

    def pvc_path(self, url: str) -> Path:
        """Where ``pvc://<claim>/<path>`` is on this machine, without a pod: the claim's
        PersistentVolume when it is a hostPath or local volume, or an NFS volume whose export
        is mounted (or is a directory) here. Else NasopError saying what to do."""
        claim, _, rest = url[len("pvc://"):].partition("/")
        pvc = self._call(self.core.read_namespaced_persistent_volume_claim, claim, self.namespace)
        volume = pvc.spec.volume_name
        if not volume:
            raise NasopError(f"the claim {claim} in {self.namespace} is not bound to a volume yet")
        pv = self._call(self.core.read_persistent_volume, volume)
        roots: List[Path] = []
        if pv.spec.host_path is not None:
            roots.append(Path(pv.spec.host_path.path))
        if pv.spec.local is not None:
            roots.append(Path(pv.spec.local.path))
        if pv.spec.nfs is not None:
            roots += _nfs_mounts(pv.spec.nfs.server, pv.spec.nfs.path)
        for root in roots:
            if (root / rest).exists():
                return root / rest
        where = ", ".join(str(r) for r in roots) or "a volume of a kind this machine cannot read directly"
        raise NasopError(
            f"{url}: the claim {claim} is the volume {volume} ({where}), which is not on this machine. "
            f"Copy the model out through a pod that mounts the claim (kubectl cp <pod>:<mount>/{rest} ./model), "
            "or use S3 storage (spec.storage.s3), which this client reads with boto3"
        )


def _nfs_mounts(server: str, export: str) -> List[Path]:
    """Local directories that hold an NFS export: its mount points here, and the export
    path itself when this machine is the server."""
    found: List[Path] = []
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                source, target = line.split()[:2]
                if source.rstrip("/") == f"{server}:{export}".rstrip("/"):
                    found.append(Path(target))
    except OSError:
        pass
    if server in ("localhost", "127.0.0.1", os.uname().nodename) and Path(export).is_dir():
        found.append(Path(export))
    return found
