"""ClusterClient against a stand-in API server on loopback (no cluster needed): the calls it
makes, NasTrials as trial records, the status's best trial and Pareto front, a model on a
claim's hostPath volume read without a pod, and a refusal carrying the API server's
message. test_client_cluster.py runs the same calls against the real one."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

import nasop

from conftest import REPO

pytest.importorskip("kubernetes")

NS = "nas"
BASE = f"/apis/nasop.dev/v1alpha1/namespaces/{NS}"
FORBIDDEN = (
    'nasexperiments.nasop.dev is forbidden: User "system:serviceaccount:nas:nobody" cannot create '
    'resource "nasexperiments" in API group "nasop.dev" in the namespace "nas"'
)


def trial(name, index, phase, value, latency, stage=None, artifact=None, uid="uid-1"):
    spec = {"experiment": "exp", "index": index, "candidate": f"|nor_conv_3x3~0|+|none~0|none~1|+|a~0|b~1|c~2|;lr={0.1 * (index + 1):g}",
            "epochs": 4, "seed": 7}
    if stage:
        spec["stage"] = stage
    status = {"phase": phase, "metrics": {"val_accuracy": value, "latency_ms": latency},
              "startTime": "2026-12-07T10:00:00.000000Z", "completionTime": "2026-12-07T10:00:30.500000Z",
              "reason": "Completed"}
    if artifact:
        status["artifact"] = artifact
    return {"apiVersion": "nasop.dev/v1alpha1", "kind": "NasTrial",
            "metadata": {"name": name, "namespace": NS,
                         "ownerReferences": [{"kind": "NasExperiment", "name": "exp", "uid": uid}]},
            "spec": spec, "status": status}


class Cluster:
    """What the stand-in server holds."""

    def __init__(self, model_root):
        self.experiments = {}
        self.trials = [
            trial("exp-0", 0, "Succeeded", 0.80, 5.0),
            trial("exp-1", 1, "Succeeded", 0.90, 9.0, artifact="pvc://nas-data/runs/exp/trials/1/artifact"),
            trial("exp-2", 2, "Failed", 0.10, 1.0),
            trial("exp-3", 3, "Succeeded", 0.70, 2.0),
            trial("exp-4", 4, "Succeeded", 0.99, 1.0, uid="another-experiment-of-that-name"),
        ]
        self.status = {
            "phase": "Succeeded", "trials": {"created": 4, "pending": 0, "running": 0, "succeeded": 3, "failed": 1, "stopped": 0},
            "bestValue": 0.9,
            "bestTrial": {"name": "exp-1", "index": 1, "candidate": self.trials[1]["spec"]["candidate"], "epochs": 4,
                          "metrics": {"val_accuracy": 0.9, "latency_ms": 9.0},
                          "artifact": "pvc://nas-data/runs/exp/trials/1/artifact"},
            "paretoFront": [{"name": n, "index": i, "candidate": "", "epochs": 4, "metrics": {}} for n, i in (("exp-1", 1), ("exp-3", 3))],
            "finalTraining": {"winner": 1, "candidates": [{"rank": 1, "candidate": "c", "searchTrial": "exp-1", "trials": 2, "succeeded": 2,
                                                           "metrics": {"val_accuracy": {"mean": 0.9, "std": 0.01, "count": 2}}}]},
        }
        self.model_root = model_root
        self.requests = []


def handler(cluster):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def status(self, code, reason, message):
            self.send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                             "reason": reason, "code": code})

        def forbidden(self):
            if self.headers.get("Authorization") == "Bearer nobody":
                self.status(403, "Forbidden", FORBIDDEN)
                return True
            return False

        def do_POST(self):
            cluster.requests.append(("POST", self.path))
            if self.forbidden():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = body["metadata"]["name"]
            if self.path == f"{BASE}/nasexperiments":
                if name in cluster.experiments:
                    return self.status(409, "AlreadyExists", f'nasexperiments.nasop.dev "{name}" already exists')
                body["metadata"]["uid"] = "uid-1"
                cluster.experiments[name] = body
                return self.send(201, body)
            self.status(404, "NotFound", "the server could not find the requested resource")

        def do_GET(self):
            url = urlparse(self.path)
            cluster.requests.append(("GET", self.path))
            if self.forbidden():
                return
            if url.path == f"{BASE}/nasexperiments":
                return self.send(200, {"kind": "NasExperimentList", "items": list(cluster.experiments.values())})
            if url.path.startswith(f"{BASE}/nasexperiments/"):
                name = url.path.rsplit("/", 1)[1]
                if name not in cluster.experiments:
                    return self.status(404, "NotFound", f'nasexperiments.nasop.dev "{name}" not found')
                return self.send(200, {**cluster.experiments[name], "status": cluster.status})
            if url.path == f"{BASE}/nastrials":
                selector = parse_qs(url.query).get("fieldSelector", [""])[0]
                assert selector == "spec.experiment=exp"
                return self.send(200, {"kind": "NasTrialList", "items": cluster.trials})
            if url.path == f"/api/v1/namespaces/{NS}/persistentvolumeclaims/nas-data":
                return self.send(200, {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                                       "metadata": {"name": "nas-data"}, "spec": {"volumeName": "pv-data"}})
            if url.path == "/api/v1/persistentvolumes/pv-data":
                return self.send(200, {"kind": "PersistentVolume", "apiVersion": "v1", "metadata": {"name": "pv-data"},
                                       "spec": {"hostPath": {"path": str(cluster.model_root)}}})
            self.status(404, "NotFound", "the server could not find the requested resource")

        def do_DELETE(self):
            cluster.requests.append(("DELETE", self.path))
            name = urlparse(self.path).path.rsplit("/", 1)[1]
            cluster.experiments.pop(name, None)
            self.send(200, {"kind": "Status", "status": "Success"})

    return Handler


@pytest.fixture
def cluster(tmp_path):
    state = Cluster(tmp_path / "volume")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for user in ("admin", "nobody"):
        (tmp_path / f"{user}.kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "users": [{"name": user, "user": {"token": user}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": NS}}],
        }))
    state.kubeconfig = lambda user: str(tmp_path / f"{user}.kubeconfig")
    yield state
    server.shutdown()


def experiment():
    return nasop.Experiment.from_yaml(REPO / "examples" / "nb201-multi-objective.yaml").renamed("exp")


def test_calls_and_records(cluster):
    client = nasop.ClusterClient(kubeconfig=cluster.kubeconfig("admin"))
    assert client.namespace == NS  # the context's
    run = client.create(experiment())
    assert cluster.experiments["exp"]["metadata"]["namespace"] == NS
    with pytest.raises(nasop.ApiError) as again:
        client.create(experiment())
    assert again.value.status == 409 and 'nasexperiments.nasop.dev "exp" already exists' in str(again.value)

    assert run.wait(progress=False)["status"]["phase"] == "Succeeded"
    trials = run.trials()
    assert [t["name"] for t in trials] == ["exp-0", "exp-1", "exp-2", "exp-3"]  # exp-4 belongs to another object
    t1 = trials[1]
    assert t1["phase"] == "Succeeded" and t1["stage"] == "search" and t1["epochs"] == 4
    assert t1["architecture"] == "|nor_conv_3x3~0|+|none~0|none~1|+|a~0|b~1|c~2|"
    assert t1["hyperparameters"] == {"lr": 0.2}
    assert t1["duration_seconds"] == pytest.approx(30.5)
    assert run.best()["name"] == "exp-1"
    assert [t["name"] for t in run.pareto()] == ["exp-1", "exp-3"]
    assert run.final_training()["candidates"][0]["search_trial"] == "exp-1"
    assert [e["metadata"]["name"] for e in client.list()] == ["exp"]
    run.delete()
    with pytest.raises(nasop.ApiError) as gone:
        client.get("exp")
    assert gone.value.status == 404 and gone.value.reason == "NotFound"


def test_a_model_on_a_hostpath_claim_is_read_without_a_pod(cluster):
    numpy = pytest.importorskip("numpy")
    safetensors = pytest.importorskip("safetensors.numpy")
    model_dir = cluster.model_root / "runs" / "exp" / "trials" / "1" / "artifact"
    model_dir.mkdir(parents=True)
    safetensors.save_file({"classifier.weight": numpy.ones((10, 4), dtype=numpy.float32)}, str(model_dir / "model.safetensors"))
    (model_dir / "model.json").write_text(json.dumps({"input": {"shape": ["N", 1, 28, 28]}}))
    client = nasop.ClusterClient(kubeconfig=cluster.kubeconfig("admin"))
    client.create(experiment())
    model = client.load_model("exp", torchscript=False)
    assert model.path == model_dir
    assert model.tensors["classifier.weight"].shape == (10, 4)
    assert model.description["input"]["shape"] == ["N", 1, 28, 28]

    cluster.model_root = cluster.model_root / "elsewhere"  # a volume not on this machine
    with pytest.raises(nasop.NasopError, match="not on this machine.*kubectl cp"):
        client.load_model("exp")


def test_a_refusal_carries_the_api_servers_message(cluster):
    client = nasop.ClusterClient(kubeconfig=cluster.kubeconfig("nobody"))
    with pytest.raises(nasop.ApiError) as raised:
        client.create(experiment())
    assert raised.value.status == 403 and raised.value.reason == "Forbidden"
    assert FORBIDDEN in str(raised.value)


def test_an_invalid_experiment_is_never_sent(cluster):
    client = nasop.ClusterClient(kubeconfig=cluster.kubeconfig("admin"))
    bad = experiment()
    bad.spec["objectives"][0]["goal"] = "maximise"
    with pytest.raises(nasop.ValidationError) as raised:
        client.create(bad)
    assert raised.value.field == "spec.objectives[0].goal"
    assert 'Unsupported value: "maximise": supported values: "maximize", "minimize"' in str(raised.value)
    assert cluster.requests == []


def test_a_namespace_other_than_the_clients_is_refused_before_sending(cluster):
    client = nasop.ClusterClient(kubeconfig=cluster.kubeconfig("admin"))
    elsewhere = experiment()
    elsewhere.manifest["metadata"]["namespace"] = "other"
    with pytest.raises(nasop.ValidationError) as raised:
        client.create(elsewhere)
    assert raised.value.field == "metadata.namespace"
    assert "ClusterClient('other')" in str(raised.value)
    assert not any(r[0] == "POST" for r in cluster.requests)
