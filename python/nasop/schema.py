"""Structural validation of a NasExperiment against the CRD's openAPIV3Schema, with the
messages the API server gives (k8s.io/apiextensions-apiserver's validation of custom
resources): what `kubectl apply` would answer, before anything is sent.

The CRD is python/nasop/_crd/nasexperiments.nasop.dev.yaml, a copy of crds/ that `nasop
crds` keeps in step."""

from __future__ import annotations

import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

CRD_PATH = Path(__file__).parent / "_crd" / "nasexperiments.nasop.dev.yaml"
GROUP = "nasop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NasExperiment"

# Problems as (field path, message); the message starts with the path, as the API's do.
Errors = List[Tuple[str, str]]

# A Kubernetes object name (a DNS-1123 subdomain); NasTrials are named <name>-<index>.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@functools.lru_cache(maxsize=None)
def crd() -> Dict[str, Any]:
    """The NasExperiment CRD as shipped with this package."""
    with open(CRD_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def openapi_schema() -> Dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    for version in crd()["spec"]["versions"]:
        if version["name"] == VERSION:
            return version["schema"]["openAPIV3Schema"]
    raise RuntimeError(f"{CRD_PATH} has no version {VERSION}")


def _quote(value: Any) -> str:
    """A value as the API server prints it in `Invalid value: ...` (Go's %#v-like)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if value is None:
        return "null"
    return json.dumps(str(value))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _has_type(value: Any, wanted: str) -> bool:
    if wanted == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (
            isinstance(value, float) and value.is_integer()
        )
    if wanted == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if wanted == "string":
        return isinstance(value, str)
    if wanted == "boolean":
        return isinstance(value, bool)
    if wanted == "array":
        return isinstance(value, list)
    if wanted == "object":
        return isinstance(value, dict)
    return True


def _hint(schema: Dict[str, Any]) -> str:
    """The field's description, first sentence: what to give."""
    text = " ".join((schema.get("description") or "").split())
    if not text:
        return ""
    sentence = text.split(". ")[0].rstrip(".")
    return f" ({sentence})"


def _number(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else repr(float(n))


def validate_value(value: Any, schema: Dict[str, Any], path: str, errors: Errors) -> None:
    """Checks ``value`` at ``path`` against ``schema``, appending the API server's messages."""
    wanted = schema.get("type")
    if value is None:
        if not schema.get("nullable") and wanted:
            errors.append(
                (path, f"{path}: Invalid value: \"null\": {path} in body must be of type {wanted}: \"null\"")
            )
        return
    if wanted and not _has_type(value, wanted):
        actual = _type_name(value)
        errors.append(
            (path, f"{path}: Invalid value: \"{actual}\": {path} in body must be of type {wanted}: \"{actual}\"")
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append((path, f"{path}: Unsupported value: {_quote(value)}: supported values: {supported}"))
        return
    if wanted in ("integer", "number"):
        _check_number(value, schema, path, errors)
    elif wanted == "string":
        _check_string(value, schema, path, errors)
    elif wanted == "array":
        _check_array(value, schema, path, errors)
    elif wanted == "object":
        _check_object(value, schema, path, errors)


def _check_number(value: float, schema: Dict[str, Any], path: str, errors: Errors) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        if schema.get("exclusiveMinimum") and not value > low:
            errors.append((path, f"{path}: Invalid value: {_quote(value)}: {path} in body should be greater than {_number(low)}"))
        elif value < low:
            errors.append((path, f"{path}: Invalid value: {_quote(value)}: {path} in body should be greater than or equal to {_number(low)}"))
    if high is not None:
        if schema.get("exclusiveMaximum") and not value < high:
            errors.append((path, f"{path}: Invalid value: {_quote(value)}: {path} in body should be less than {_number(high)}"))
        elif value > high:
            errors.append((path, f"{path}: Invalid value: {_quote(value)}: {path} in body should be less than or equal to {_number(high)}"))


def _check_string(value: str, schema: Dict[str, Any], path: str, errors: Errors) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append((path, f"{path}: Too long: may not be more than {schema['maxLength']} bytes"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append((path, f"{path}: Invalid value: {_quote(value)}: {path} in body should be at least {schema['minLength']} chars long"))
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append((path, f"{path}: Invalid value: {_quote(value)}: {path} in body should match '{schema['pattern']}'"))


def _check_array(value: list, schema: Dict[str, Any], path: str, errors: Errors) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append((path, f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items"))
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append((path, f"{path}: Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items"))
    items = schema.get("items")
    if items:
        for i, item in enumerate(value):
            validate_value(item, items, f"{path}[{i}]", errors)


def _check_object(value: dict, schema: Dict[str, Any], path: str, errors: Errors) -> None:
    properties: Dict[str, Any] = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if value.get(name) is None:
            field = f"{path}.{name}" if path else name
            errors.append((field, f"{field}: Required value{_hint(properties.get(name, {}))}"))
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    for name, item in value.items():
        field = f"{path}.{name}" if path else name
        if name in properties:
            if item is None and not properties[name].get("nullable"):
                continue  # the API server drops a null it cannot store; required fields are checked above
            validate_value(item, properties[name], field, errors)
        elif isinstance(extra, dict):
            validate_value(item, extra, field, errors)
        elif not preserve:
            close = difflib.get_close_matches(name, list(properties), n=1)
            fix = f"; did you mean {close[0]!r}?" if close else (
                f"; known fields: {', '.join(sorted(properties))}" if properties else ""
            )
            errors.append((field, f"{field}: unknown field \"{field}\"{fix}"))


def validate_structure(obj: Dict[str, Any]) -> Errors:
    """Every structural problem of a NasExperiment object (apiVersion, kind, metadata,
    spec), as the API server would list them."""
    errors: Errors = []
    if obj.get("apiVersion") != API_VERSION:
        errors.append(("apiVersion", f"apiVersion: Unsupported value: {_quote(obj.get('apiVersion'))}: supported values: \"{API_VERSION}\""))
    if obj.get("kind") != KIND:
        errors.append(("kind", f"kind: Unsupported value: {_quote(obj.get('kind'))}: supported values: \"{KIND}\""))
    metadata = obj.get("metadata") or {}
    name: Optional[str] = metadata.get("name") if isinstance(metadata, dict) else None
    if not name and not (isinstance(metadata, dict) and metadata.get("generateName")):
        errors.append(("metadata.name", "metadata.name: Required value: name or generateName is required"))
    elif name and (len(name) > 253 or not _NAME.match(name)):
        errors.append((
            "metadata.name",
            f"metadata.name: Invalid value: {_quote(name)}: a lowercase RFC 1123 subdomain must consist of "
            "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ))
    schema = openapi_schema()
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    stripped = dict(schema)
    stripped.pop("x-kubernetes-validations", None)
    _check_object(body, stripped, "", errors)
    return errors
