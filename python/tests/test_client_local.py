"""The client against run directories that the real `nasop run` writes: NAS-Bench-201
table lookups, so every search takes about a second."""

import json
import subprocess
import sys

import pytest

import nasop
from nasop.rules import RULES, crd_rules

from conftest import REPO

MULTI = REPO / "examples" / "nb201-multi-objective.yaml"
EVOLUTION = REPO / "examples" / "nb201-evolution.yaml"


def results_json(nasop_binary, client, name):
    out = subprocess.run([nasop_binary, "results", str(client.directory(name)), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def pareto_run(nasop_binary, tmp_path_factory):
    """A finished two-objective search (NSGA-II, accuracy vs. latency, 40 trials)."""
    client = nasop.LocalClient(tmp_path_factory.mktemp("runs"), nasop=nasop_binary)
    exp = nasop.Experiment.from_yaml(MULTI).renamed("pareto")
    exp.spec["budget"]["maxTrials"] = 40
    run = client.create(exp)
    run.wait(progress=False, timeout=120)
    return client, run


def test_wait_follows_nasop_run_with_a_bar_of_finished_trials_and_the_best_value(nasop_binary, tmp_path, capsys):
    client = nasop.LocalClient(tmp_path, nasop=nasop_binary)
    exp = nasop.Experiment.from_yaml(EVOLUTION).renamed("evo")
    exp.spec["budget"]["maxTrials"] = 60
    run = client.create(exp, parallel=2)
    obj = run.wait(timeout=120, interval=0.1)
    err = capsys.readouterr().err
    assert "evo" in err and "60/60" in err and "best=" in err, err
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["finishedSearchTrials"] == 60
    assert obj["status"]["trials"]["created"] == 60
    assert [e["metadata"]["name"] for e in client.list()] == ["evo"]


def test_trials_best_and_pareto_are_the_engines(pareto_run, nasop_binary):
    client, run = pareto_run
    expected = results_json(nasop_binary, client, "pareto")
    trials = run.trials()
    assert len(trials) == 40
    assert {t["phase"] for t in trials} == {"Succeeded"}
    assert all(t["name"] == f"pareto-{t['index']}" and t["stage"] == "search" for t in trials)
    assert all("val_accuracy" in t["metrics"] and "latency_ms" in t["metrics"] for t in trials)

    best = run.best()
    assert best["index"] == expected["best"]["index"]
    assert best["metrics"] == expected["best"]["metrics"]
    assert best["candidate"] == expected["best"]["candidate"]
    assert run.get()["status"]["bestValue"] == expected["best"]["metrics"]["val_accuracy"]

    front = run.pareto()
    assert [t["index"] for t in front] == [t["index"] for t in expected["pareto_front"]]
    assert len(front) >= 2
    # Nothing in the front is dominated by a trial within the latency limit.
    feasible = [t for t in trials if t["metrics"]["latency_ms"] <= 20]
    for t in front:
        acc, lat = t["metrics"]["val_accuracy"], t["metrics"]["latency_ms"]
        assert not any(o["metrics"]["val_accuracy"] > acc and o["metrics"]["latency_ms"] < lat for o in feasible)
    assert run.final_training() is None


def test_to_pandas_has_a_row_per_trial_and_a_column_per_metric(pareto_run):
    pytest.importorskip("pandas")
    _, run = pareto_run
    frame = run.trials().to_pandas()
    assert len(frame) == 40
    assert {"index", "phase", "candidate", "val_accuracy", "latency_ms"} <= set(frame.columns)
    assert frame["val_accuracy"].max() >= run.best()["metrics"]["val_accuracy"]


def test_to_pandas_without_pandas_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'nasop\[pandas\]'"):
        nasop.Trials([]).to_pandas()


def test_cluster_client_without_kubernetes_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(ImportError, match=r"pip install 'nasop\[cluster\]'"):
        nasop.ClusterClient("default")


def test_final_training_and_its_winner(nasop_binary, tmp_path):
    client = nasop.LocalClient(tmp_path, nasop=nasop_binary)
    exp = nasop.Experiment.from_yaml(EVOLUTION).renamed("final")
    exp.spec["budget"]["maxTrials"] = 20
    exp.spec["finalTraining"] = {"top": 2, "seeds": 2}
    run = client.create(exp)
    run.wait(progress=False, timeout=120)
    final = run.final_training()
    expected = results_json(nasop_binary, client, "final")["final_training"]
    # The engine's figures, in the shape ClusterClient gives (status.finalTraining's).
    assert final["winner"] == expected["winner"] in (1, 2)
    assert [c["rank"] for c in final["candidates"]] == [1, 2]
    for got, want in zip(final["candidates"], expected["candidates"]):
        assert got["metrics"] == want["metrics"] and got["candidate"] == want["candidate"]
        assert got["search_trial"] == f"final-{want['search_trial']}"
        assert got["trials"] == 2 and got["succeeded"] == 2
        assert set(got) == {"rank", "candidate", "search_trial", "trials", "succeeded", "metrics"}
    stages = [t["stage"] for t in run.trials()]
    assert stages.count("final") == 4 and stages.count("search") == 20
    assert run.best()["stage"] == "final"
    assert run.get()["status"]["finishedSearchTrials"] == 20


def test_an_unmodified_script_under_wrap_is_a_trial(nasop_binary, tmp_path):
    """spec.wrap from the typed helpers: a script that only prints `name=value` lines, given
    its hyperparameter as an argument, reports through `nasop wrap`."""
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\n"
        "lr = float(sys.argv[2])\n"
        "for epoch in (1, 2):\n"
        "    print(f'epoch={epoch} val_accuracy={1 - abs(lr - 0.05) / epoch:.6f}', flush=True)\n"
    )
    exp = nasop.Experiment(
        "wrapped",
        objectives=[nasop.Objective("val_accuracy")],
        search_space=nasop.SearchSpace(hyperparameters=[nasop.Float("lr", 0.01, 0.1)]),
        strategy=nasop.Strategy("random", seed=2),
        budget=nasop.Budget(max_trials=3, parallelism=1, trial_epochs=2),
        trial=nasop.TrialTemplate("python:3.11-slim", command=[sys.executable, str(script)],
                                  args=["--lr", "{lr}"]),
        wrap={},
    )
    assert exp.validate().spec["wrap"] == {}
    run = nasop.LocalClient(tmp_path / "runs", nasop=nasop_binary).create(exp)
    assert run.wait(progress=False, timeout=120)["status"]["phase"] == "Succeeded"
    trials = run.trials()
    assert len(trials) == 3
    for t in trials:
        lr = t["hyperparameters"]["lr"]
        assert t["metrics"]["val_accuracy"] == pytest.approx(1 - abs(lr - 0.05) / 2, abs=1e-5), t


def test_delete_removes_the_run(nasop_binary, tmp_path):
    client = nasop.LocalClient(tmp_path, nasop=nasop_binary)
    exp = nasop.Experiment.from_yaml(EVOLUTION).renamed("gone")
    exp.spec["budget"]["maxTrials"] = 5
    client.create(exp).wait(progress=False, timeout=60)
    with pytest.raises(nasop.NasopError, match="resume=True"):
        client.create(exp)
    client.delete("gone")
    assert not client.directory("gone").exists()
    assert client.list() == []
    with pytest.raises(nasop.NasopError, match="not a run directory"):
        client.get("gone")


def test_a_failing_nasop_run_surfaces_its_message(nasop_binary, tmp_path):
    client = nasop.LocalClient(tmp_path, nasop=nasop_binary)
    exp = nasop.Experiment.from_yaml(EVOLUTION).renamed("no-command")
    exp.spec["trialTemplate"]["spec"]["containers"][0]["command"] = ["no-such-trainer"]
    run = client.create(exp)
    with pytest.raises(nasop.NasopError, match='(?s)nasop run no-command failed.*"no-such-trainer" was not found'):
        run.wait(progress=False, timeout=60)


def test_a_search_whose_trials_fail_ends_failed(nasop_binary, tmp_path):
    # Valid for the schema; the tables know only 4-node cells, so every trial fails.
    client = nasop.LocalClient(tmp_path, nasop=nasop_binary)
    exp = nasop.Experiment.from_yaml(EVOLUTION).renamed("five-nodes")
    exp.spec["searchSpace"]["cell"]["nodes"] = 5
    obj = client.create(exp).wait(progress=False, timeout=60)
    assert obj["status"]["phase"] == "Failed"
    assert obj["status"]["trials"]["failed"] >= 1
    assert client.best("five-nodes") is None
    with pytest.raises(nasop.NasopError, match="no best trial"):
        client.load_model("five-nodes")


def test_typed_helpers_build_the_example_manifest():
    built = nasop.Experiment(
        "nb201-pareto",
        objectives=[nasop.Objective("val_accuracy", "maximize"), nasop.Objective("latency_ms", "minimize")],
        constraints=[nasop.Constraint("latency_ms", max=20)],
        search_space=nasop.SearchSpace(cell=nasop.Cell(nodes=4)),
        strategy=nasop.Strategy("nsga2", seed=3, population=24),
        budget=nasop.Budget(max_trials=300, parallelism=4, trial_epochs=12),
        trial=nasop.TrialTemplate("ghcr.io/nasop/nasop:dev", ["nasop", "nb201-trial"],
                                  args=["--dataset", "cifar10", "--latency", "hwnas_pixel3_latency_ms"]),
    )
    assert built.validate().to_dict() == nasop.Experiment.from_yaml(MULTI).to_dict()


def test_trial_template_resources_and_gpus():
    template = nasop.TrialTemplate("img", ["train"], env={"A": "1"}, cpu="2", memory="4Gi", gpus=1).to_dict()
    container = template["spec"]["containers"][0]
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": 1}}


def _example():
    return nasop.Experiment.from_yaml(MULTI).to_dict()


def _set(path, value):
    def change(m):
        *parents, last = path
        node = m
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


@pytest.mark.parametrize("change, field, message", [
    (_set(["spec", "budget", "maxTrials"], 0), "spec.budget.maxTrials",
     "spec.budget.maxTrials: Invalid value: 0: spec.budget.maxTrials in body should be greater than or equal to 1"),
    (_set(["spec", "objectives"], KeyError), "spec.objectives", "spec.objectives: Required value"),
    (_set(["spec", "strategy", "algorithm"], "foo"), "spec.strategy.algorithm",
     'spec.strategy.algorithm: Unsupported value: "foo": supported values: "random", "grid", "evolution"'),
    (_set(["spec", "budget", "parallelism"], "4"), "spec.budget.parallelism",
     'spec.budget.parallelism: Invalid value: "string": spec.budget.parallelism in body must be of type integer'),
    (_set(["spec", "budget", "maxTrails"], 3), "spec.budget.maxTrails", "did you mean 'maxTrials'"),
    (_set(["spec", "objectives"], []), "spec.objectives",
     "spec.objectives: Invalid value: 0: spec.objectives in body should have at least 1 items"),
    (_set(["spec", "searchSpace", "cell", "nodes"], 13), "spec.searchSpace.cell.nodes",
     "should be less than or equal to 12"),
    (_set(["spec", "objectives", 0, "metric"], ""), "spec.objectives[0].metric", "should be at least 1 chars long"),
    (_set(["metadata", "name"], "Not_A_Name"), "metadata.name", "lowercase RFC 1123 subdomain"),
    # CEL rules, with the CRD's own messages
    (_set(["spec", "fidelity"], {"algorithm": "asha", "minEpochs": 8, "maxEpochs": 2}), "spec.fidelity",
     'spec.fidelity: Invalid value: "object": minEpochs must not be above maxEpochs'),
    (_set(["spec", "constraints", 0], {"metric": "latency_ms"}), "spec.constraints[0]",
     "a constraint needs min, max or both"),
    (_set(["spec", "searchSpace", "layers"], [{"operations": ["conv_3x3"], "widths": [8]}]), "spec.searchSpace",
     "give either cell or layers, not both"),
    (_set(["spec", "searchSpace", "hyperparameters"], [{"name": "lr", "float": {"min": 0.0, "max": 1.0, "log": True}}]),
     "spec.searchSpace.hyperparameters[0].float", "a log scale needs min above 0"),
    (_set(["spec", "storage"], {"persistentVolumeClaim": {"claimName": "c"}, "s3": {"bucket": "abc"}}), "spec.storage",
     "give exactly one of persistentVolumeClaim and s3"),
])
def test_validation_errors_name_their_field(change, field, message, nasop_binary, tmp_path):
    manifest = _example()
    change(manifest)
    with pytest.raises(nasop.ValidationError) as raised:
        nasop.Experiment.from_dict(manifest).validate()
    assert raised.value.field == field
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)
    # Refused before anything runs.
    client = nasop.LocalClient(tmp_path, nasop=nasop_binary)
    with pytest.raises(nasop.ValidationError):
        client.create(nasop.Experiment.from_dict(manifest))
    assert list(tmp_path.iterdir()) == []


def test_immutability_rules_apply_to_updates_only():
    exp = nasop.Experiment.from_yaml(MULTI)
    changed = nasop.Experiment.from_dict(exp.to_dict())
    changed.spec["strategy"]["seed"] = 4
    changed.validate()
    with pytest.raises(nasop.ValidationError, match="strategy is immutable") as raised:
        changed.validate(old=exp)
    assert raised.value.field == "spec.strategy"


def test_every_cel_rule_of_the_crd_is_implemented():
    in_crd = {(path, message) for path, message, _ in crd_rules()}
    missing = in_crd - set(RULES)
    assert not missing, f"CEL rules of the CRD with no Python implementation in nasop/rules.py: {sorted(missing)}"
    stale = set(RULES) - in_crd
    assert not stale, f"rules in nasop/rules.py that the CRD no longer has: {sorted(stale)}"


def test_every_example_manifest_is_valid():
    import yaml
    for path in sorted(REPO.glob("examples/**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "NasExperiment":
                assert nasop.Experiment.from_dict(doc).problems() == [], path


def test_a_candidate_without_architecture_is_all_hyperparameters_typed_by_the_space():
    from nasop.records import split_candidate
    space = {"hyperparameters": [{"name": "lr", "float": {"min": 0.1, "max": 2.0}},
                                 {"name": "hidden", "int": {"min": 1, "max": 64}},
                                 {"name": "batch", "categorical": ["16", "32"]}]}
    assert split_candidate("lr=1;hidden=12;batch=16", space) == (None, {"lr": 1.0, "hidden": 12, "batch": "16"})
    arch, hps = split_candidate("|nor_conv_3x3~0|;lr=0.5", space)
    assert arch == "|nor_conv_3x3~0|" and hps == {"lr": 0.5}
    assert split_candidate("|skip_connect~0|") == ("|skip_connect~0|", {})


def test_wrap_needs_a_command_and_a_regex_with_two_captures_named_by_field():
    base = nasop.Experiment.from_yaml(EVOLUTION).to_dict()
    base["spec"]["wrap"] = nasop.Wrap(metrics_regex="acc=(.*)").to_dict()
    with pytest.raises(nasop.ValidationError) as raised:
        nasop.Experiment.from_dict(base).validate()
    assert raised.value.field == "spec.wrap.metricsRegex" and "two groups" in str(raised.value)
    base["spec"]["wrap"] = {}
    base["spec"]["trialTemplate"]["spec"]["containers"][0].pop("command", None)
    with pytest.raises(nasop.ValidationError) as raised:
        nasop.Experiment.from_dict(base).validate()
    assert raised.value.field == "spec.trialTemplate.spec.containers[0].command"
    assert "entrypoint" in str(raised.value)
    base["spec"].pop("trialTemplate")
    base["spec"]["trialTrainJob"] = {"spec": {"runtimeRef": {"name": "torch-distributed"},
                                              "trainer": {"image": "x", "command": ["python3", "t.py"]}}}
    with pytest.raises(nasop.ValidationError) as raised:
        nasop.Experiment.from_dict(base).validate()
    assert raised.value.field == "spec" and "wrap is for trialTemplate and trialJobSet" in str(raised.value)


def test_a_yaml_file_with_a_configmap_beside_the_experiment_loads_the_experiment():
    exp = nasop.Experiment.from_yaml(REPO / "examples" / "k8s" / "unmodified-script.yaml")
    assert exp.name == "unmodified-script" and exp.spec["wrap"] == {"stepMetrics": ["epoch"]}
    exp.validate()
    with pytest.raises(nasop.ValidationError, match="no NasExperiment among its 1 YAML documents"):
        nasop.Experiment.from_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
