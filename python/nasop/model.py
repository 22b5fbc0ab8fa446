"""A trial's model as nasop-trainer saves it (trainer/src/artifact.rs): a directory with
``model.safetensors`` (the weights), ``model.json`` (the architecture, input shape and
normalisation, the recipe, the final metrics) and ``model.pt`` (TorchScript that takes
N×C×H×W images with pixels in [0, 1] and gives logits)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import NasopError, missing_extra

WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"
TORCHSCRIPT = "model.pt"


class Model:
    """A loaded model directory.

    ``module`` is the TorchScript module when torch is installed (call the model to run
    it); ``tensors`` the weights by name as numpy arrays (safetensors, needs
    ``pip install 'nasop[model]'``); ``description`` the parsed model.json."""

    def __init__(self, path: Path, module: Any = None):
        self.path = Path(path)
        self.module = module
        self._tensors: Optional[Dict[str, Any]] = None
        file = self.path / DESCRIPTION
        self.description: Dict[str, Any] = json.loads(file.read_text()) if file.exists() else {}

    @property
    def tensors(self) -> Dict[str, Any]:
        if self._tensors is None:
            self._tensors = _read_weights(self.path / WEIGHTS)
        return self._tensors

    def __call__(self, images: Any) -> Any:
        if self.module is None:
            raise NasopError(
                f"running the model in {self.path} needs torch (pip install torch); "
                "without it, model.tensors holds its weights"
            )
        return self.module(images)

    def __repr__(self) -> str:
        kind = "TorchScript" if self.module is not None else "weights"
        return f"Model({str(self.path)!r}, {kind})"


def _read_weights(file: Path) -> Dict[str, Any]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise missing_extra("model", "safetensors", "reading a model's weights without torch") from None
    if not file.exists():
        raise NasopError(f"{file} does not exist: the trial saved no weights (did it complete its epochs?)")
    return load_file(str(file))


def open_directory(path: Path, *, torchscript: bool = True) -> Model:
    """The model in a local directory: TorchScript through torch when it is installed
    (and ``torchscript``), else the safetensors weights."""
    path = Path(path)
    if not path.is_dir():
        raise NasopError(f"the model directory {path} does not exist on this machine")
    module = None
    if torchscript and (path / TORCHSCRIPT).exists():
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            module = torch.jit.load(str(path / TORCHSCRIPT), map_location="cpu")
            module.eval()
    model = Model(path, module)
    if module is None:
        model.tensors  # fail now, naming the extra, rather than at first use
    return model


def download_s3(url: str, into: Optional[Path] = None) -> Path:
    """Copies ``s3://bucket/prefix`` (a model directory) to a local directory through
    boto3; the endpoint is AWS_ENDPOINT_URL or AWS_ENDPOINT, as the trainer's."""
    try:
        import boto3
    except ImportError:
        raise missing_extra("s3", "boto3", f"loading the model at {url}") from None
    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/"
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    into = Path(into or tempfile.mkdtemp(prefix="nasop-model-"))
    found = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            if name and "/" not in name:
                s3.download_file(bucket, obj["Key"], str(into / name))
                found += 1
    if not found:
        raise NasopError(f"{url} holds no model files (is the URL the trial's artifact directory?)")
    return into
