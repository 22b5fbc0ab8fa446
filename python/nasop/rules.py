"""The CRD's x-kubernetes-validations (CEL) rules, each written by hand in Python and
keyed by where it sits in the schema and its message, which is the CRD's own. A test fails
when the CRD has a rule that is not here.

A rule that compares with ``oldSelf`` (immutability) holds on create; it is checked only
when the stored object is given (an update)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .schema import Errors, openapi_schema

Rule = Callable[[Any, Any], bool]


def _has(obj: Any, name: str) -> bool:
    return isinstance(obj, dict) and obj.get(name) is not None


def _unchanged(self: Any, old: Any) -> bool:
    return old is None or self == old


def _count(obj: Any, *names: str) -> int:
    return sum(1 for n in names if _has(obj, n))


# (schema path, message) -> the rule: True when it holds. Paths use [] for list items.
RULES: Dict[Tuple[str, str], Rule] = {
    ("spec", "give one trial kind: trialTemplate (a pod), trialJobSet or trialTrainJob, not several"):
        lambda s, old: _count(s, "trialTemplate", "trialJobSet", "trialTrainJob") <= 1,
    ("spec", "the trial kind is immutable: create a new NasExperiment to run its trials as another kind"):
        lambda s, old: old is None or (
            _has(s, "trialJobSet") == _has(old, "trialJobSet")
            and _has(s, "trialTrainJob") == _has(old, "trialTrainJob")
        ),
    ("spec", "wrap is for trialTemplate and trialJobSet trials; in a TrainJob, run the command as `nasop wrap -- <command>` with nasop in the image, or use the Python helper"):
        lambda s, old: not _has(s, "wrap") or not _has(s, "trialTrainJob"),
    ("spec.constraints[]", "a constraint needs min, max or both"):
        lambda s, old: _has(s, "min") or _has(s, "max"),
    ("spec.constraints[]", "min must not be above max"):
        lambda s, old: not _has(s, "min") or not _has(s, "max") or s["min"] <= s["max"],
    ("spec.fidelity", "minEpochs must not be above maxEpochs"):
        lambda s, old: s["minEpochs"] <= s["maxEpochs"],
    ("spec.fidelity", "fidelity is immutable"): _unchanged,
    ("spec.finalTraining", "finalTraining is immutable"): _unchanged,
    ("spec.searchSpace", "give either cell or layers, not both"):
        lambda s, old: not (_has(s, "cell") and _has(s, "layers")),
    ("spec.searchSpace", "the search space is empty: give cell, layers or hyperparameters"):
        lambda s, old: _has(s, "cell") or _has(s, "layers") or len(s.get("hyperparameters") or []) > 0,
    ("spec.searchSpace", "searchSpace is immutable; create a new NasExperiment to search another space"):
        _unchanged,
    ("spec.searchSpace.hyperparameters[]", "give exactly one of int, float, categorical"):
        lambda s, old: _count(s, "int", "float", "categorical") == 1,
    ("spec.searchSpace.hyperparameters[].float", "min must not be above max"):
        lambda s, old: s["min"] <= s["max"],
    ("spec.searchSpace.hyperparameters[].float", "a log scale needs min above 0"):
        lambda s, old: not s.get("log") or s["min"] > 0.0,
    ("spec.searchSpace.hyperparameters[].int", "min must not be above max"):
        lambda s, old: s["min"] <= s["max"],
    ("spec.storage", "give exactly one of persistentVolumeClaim and s3"):
        lambda s, old: _has(s, "persistentVolumeClaim") != _has(s, "s3"),
    ("spec.storage", "storage is immutable"): _unchanged,
    ("spec.strategy", "strategy is immutable; create a new NasExperiment to change the algorithm, seed or settings"):
        _unchanged,
    ("spec.warmStart", "warmStart is immutable"): _unchanged,
}


def crd_rules(schema: Optional[Dict[str, Any]] = None, path: str = "") -> Iterator[Tuple[str, str, str]]:
    """Every CEL rule of the CRD as (schema path, message, rule)."""
    node = openapi_schema() if schema is None else schema
    for rule in node.get("x-kubernetes-validations") or []:
        yield path, rule.get("message", ""), rule["rule"]
    for name, child in (node.get("properties") or {}).items():
        yield from crd_rules(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from crd_rules(node["items"], f"{path}[]")


def _nodes(value: Any, old: Any, parts: List[str], path: str) -> Iterator[Tuple[Any, Any, str]]:
    """The values (and their stored counterparts) at a schema path: list items by index."""
    if not parts:
        yield value, old, path
        return
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        name = head[:-2]
        items = value.get(name) if isinstance(value, dict) else None
        olds = old.get(name) if isinstance(old, dict) else None
        if isinstance(items, list):
            for i, item in enumerate(items):
                prev = olds[i] if isinstance(olds, list) and i < len(olds) else None
                yield from _nodes(item, prev, rest, f"{path}.{name}[{i}]".lstrip("."))
    else:
        child = value.get(head) if isinstance(value, dict) else None
        if child is None:
            return
        prev = old.get(head) if isinstance(old, dict) else None
        yield from _nodes(child, prev, rest, f"{path}.{head}".lstrip("."))


def _split(schema_path: str) -> List[str]:
    # "spec.searchSpace.hyperparameters[].float" -> ["spec", "searchSpace", "hyperparameters[]", "float"]
    return schema_path.split(".")


def validate_rules(obj: Dict[str, Any], old: Optional[Dict[str, Any]] = None) -> Errors:
    """The CRD's CEL rules that ``obj`` breaks, as the API server words them:
    ``spec.fidelity: Invalid value: "object": minEpochs must not be above maxEpochs``."""
    errors: Errors = []
    for schema_path, message, _ in crd_rules():
        rule = RULES.get((schema_path, message))
        if rule is None:
            continue  # tests/test_client_local.py fails for a rule missing here
        for value, prev, path in _nodes(obj, old, _split(schema_path), ""):
            try:
                holds = rule(value, prev)
            except (KeyError, TypeError):
                continue  # a malformed object: the structural checks already say why
            if not holds:
                errors.append((path, f"{path}: Invalid value: \"object\": {message}"))
    return errors


def validate_nasop(obj: Dict[str, Any]) -> Errors:
    """Checks the schema cannot express, which nasop makes when it reads the experiment (the
    operator's status condition, `nasop run`'s refusal), worded as nasop words them:
    spec.wrap needs a written command and a metrics regex with two captures."""
    errors: Errors = []
    spec = obj.get("spec") if isinstance(obj, dict) else None
    wrap = spec.get("wrap") if isinstance(spec, dict) else None
    if not isinstance(wrap, dict):
        return errors
    regex = wrap.get("metricsRegex")
    if isinstance(regex, str):
        import re
        field = "spec.wrap.metricsRegex"
        try:
            compiled = re.compile(regex)
        except re.error as e:
            errors.append((field, f"{field}: {regex!r} is not a regular expression: {e}"))
        else:
            named = {"name", "value"} <= set(compiled.groupindex)
            if not named and compiled.groups < 2:
                errors.append((field, f"{field}: {regex!r} must capture the name and the value: two groups, "
                                      "or groups named `name` and `value`"))
    for i, step in enumerate(wrap.get("stepMetrics") or []):
        if step == "":
            field = f"spec.wrap.stepMetrics[{i}]"
            errors.append((field, f"{field}: name a metric, or remove the entry"))
    needs = ("nasop wrap runs the command written here (nasop cannot read an image's entrypoint); "
             "write the program and its arguments as command (and args)")
    if _has(spec, "trialJobSet"):
        jobs = (spec["trialJobSet"].get("spec") or {}).get("replicatedJobs") or []
        for i, job in enumerate(jobs):
            try:
                command = job["template"]["spec"]["template"]["spec"]["containers"][0].get("command")
            except (KeyError, IndexError, TypeError, AttributeError):
                command = None
            if not command:
                field = f"spec.trialJobSet.spec.replicatedJobs[{i}].template.spec.template.spec.containers[0].command"
                errors.append((field, f"{field}: {needs}"))
    elif not _has(spec, "trialTrainJob"):
        try:
            command = spec["trialTemplate"]["spec"]["containers"][0].get("command")
        except (KeyError, IndexError, TypeError, AttributeError):
            command = None
        if not command:
            field = "spec.trialTemplate.spec.containers[0].command"
            errors.append((field, f"{field}: {needs}"))
    return errors
