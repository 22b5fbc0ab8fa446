"""The client against a real API server with the nasop operator running (the test control
plane, and a fake trainer that completes trials). Skipped unless the Rust side sets:

    KUBECONFIG                        an admin's kubeconfig for that cluster
    NASOP_TEST_NAMESPACE              a namespace of its own, cleaned up by the caller
    NASOP_TEST_MANIFEST               an experiment YAML that runs there (its name is changed)
    NASOP_TEST_FORBIDDEN_KUBECONFIG   a ServiceAccount's kubeconfig with no rights
"""

import os
import uuid

import pytest

import nasop

NAMESPACE = os.environ.get("NASOP_TEST_NAMESPACE")
pytestmark = pytest.mark.skipif(not NAMESPACE, reason="NASOP_TEST_NAMESPACE is not set (the Rust tests set it with a control plane up)")


def _manifest() -> nasop.Experiment:
    path = os.environ.get("NASOP_TEST_MANIFEST")
    if not path:
        pytest.fail("NASOP_TEST_NAMESPACE is set but NASOP_TEST_MANIFEST is not")
    return nasop.Experiment.from_yaml(path)


@pytest.fixture
def client():
    pytest.importorskip("kubernetes")
    return nasop.ClusterClient(NAMESPACE)


def test_create_wait_trials_best_delete(client):
    exp = _manifest().renamed(f"pyclient-{uuid.uuid4().hex[:6]}")
    exp.manifest["metadata"].pop("namespace", None)
    run = client.create(exp)
    try:
        assert exp.name in [e["metadata"]["name"] for e in client.list()]
        with pytest.raises(nasop.ApiError) as again:
            client.create(exp)
        assert again.value.status == 409 and "already exists" in str(again.value)

        obj = run.wait(timeout=300, progress=False)
        status = obj["status"]
        assert status["phase"] == "Succeeded", status
        max_trials = exp.spec["budget"]["maxTrials"]

        trials = run.trials()
        search = [t for t in trials if t["stage"] == "search"]
        assert len(search) == max_trials
        assert [t["index"] for t in trials] == sorted(t["index"] for t in trials)
        assert all(t["name"] == f"{exp.name}-{t['index']}" for t in trials)
        assert {t["phase"] for t in search} <= {"Succeeded", "Failed", "Stopped"}

        best = run.best()
        assert best is not None
        assert best["name"] == status["bestTrial"]["name"]
        metric = exp.spec["objectives"][0]["metric"]
        assert best["metrics"][metric] == status["bestValue"]
        succeeded = [t["metrics"][metric] for t in search if t["phase"] == "Succeeded" and metric in t["metrics"]]
        goal = exp.spec["objectives"][0]["goal"]
        if not exp.spec.get("finalTraining") and not exp.spec.get("fidelity"):
            assert status["bestValue"] == (max(succeeded) if goal == "maximize" else min(succeeded))
    finally:
        run.delete()
    with pytest.raises(nasop.ApiError) as gone:
        deadline_get(client, exp.name)
    assert gone.value.status == 404


def deadline_get(client, name, seconds=60):
    """get() until it fails (the object is gone); deletion may wait on finalizers."""
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.get(name)
        time.sleep(0.5)
    pytest.fail(f"{name} still exists {seconds} s after delete")


def test_a_bad_field_is_refused_before_it_is_sent(client):
    exp = _manifest().renamed(f"pyclient-bad-{uuid.uuid4().hex[:6]}")
    exp.spec["budget"]["maxTrials"] = 0
    with pytest.raises(nasop.ValidationError) as raised:
        client.create(exp)
    assert raised.value.field == "spec.budget.maxTrials"
    with pytest.raises(nasop.ApiError) as missing:
        client.get(exp.name)
    assert missing.value.status == 404


def test_a_user_without_rights_gets_the_api_servers_message():
    pytest.importorskip("kubernetes")
    kubeconfig = os.environ.get("NASOP_TEST_FORBIDDEN_KUBECONFIG")
    if not kubeconfig:
        pytest.fail("NASOP_TEST_NAMESPACE is set but NASOP_TEST_FORBIDDEN_KUBECONFIG is not")
    client = nasop.ClusterClient(NAMESPACE, kubeconfig=kubeconfig)
    exp = _manifest().renamed(f"pyclient-forbidden-{uuid.uuid4().hex[:6]}")
    with pytest.raises(nasop.ApiError) as raised:
        client.create(exp)
    assert raised.value.status == 403
    assert raised.value.reason == "Forbidden"
    assert "forbidden" in str(raised.value)
    assert "nasexperiments" in str(raised.value)  # the API server's own words name the resource
    with pytest.raises(nasop.ApiError, match="forbidden"):
        client.list()
