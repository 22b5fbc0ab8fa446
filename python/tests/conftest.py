"""Shared by the client tests: the nasop binaries, found as scripts/pyclient.sh does."""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))  # the package, without installing it


def binary(name: str, env: str) -> str:
    """$env, else the CI build, else PATH; '' when none."""
    found = os.environ.get(env)
    if found:
        return found
    ci = Path(os.environ.get("NASOP_CACHE", Path.home() / ".cache" / "nasop")) / "ci-target" / "release" / name
    if ci.is_file():
        return str(ci)
    return shutil.which(name) or ""


@pytest.fixture(scope="session")
def nasop_binary() -> str:
    found = binary("nasop", "NASOP")
    if not found:
        pytest.skip("no nasop binary: set NASOP, build it (cargo build --release), or put it on PATH")
    return found
