#!/usr/bin/env bash
# The Python client's tests (python/nasop, python/tests/test_client_*.py, the notebook):
# pytest and the client's dependencies and extras, pinned, in a virtual environment cached
# outside the repository as $NASOP_CACHE/pyclient-1 (made once: about 40 s with a warm pip
# cache). No torch: too large; the client reads the model's safetensors weights without it. The package is found
# through PYTHONPATH=python, so an edit needs no reinstall.
#   scripts/pyclient.sh                          # all client tests and the notebook
#   scripts/pyclient.sh -k local                 # any pytest arguments
# The cluster tests run only with NASOP_TEST_NAMESPACE set (see test_client_cluster.py).
# The local tests and the notebook run the nasop and nasop-trainer binaries: $NASOP and
# $NASOP_TRAINER, else the CI build ($NASOP_CACHE/ci-target/release), else PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${NASOP_CACHE:-$HOME/.cache/nasop}
# Bump the name when a pin changes, so every machine makes the new environment.
dir=$cache/pyclient-1
requirements=(
  pytest==9.0.2 PyYAML==6.0.3 tqdm==4.67.1 kubernetes==33.1.0 pandas==2.3.3 numpy==2.3.5
  safetensors==0.6.2 matplotlib==3.10.7 nbclient==0.10.2 nbformat==5.10.4 ipykernel==6.31.0 ipywidgets==8.1.7
)
if [ ! -f "$dir/.complete" ]; then
  echo "installing the Python client's test environment into $dir" >&2
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}" >&2
  # The notebook runs on this environment's kernel, whatever kernels the machine has.
  "$dir/bin/python" -m ipykernel install --prefix "$dir" --name python3 >/dev/null
  touch "$dir/.complete"
fi
release=$cache/ci-target/release
if [ -x "$release/nasop" ]; then export PATH="$release:$PATH"; fi
libtorch=$(ls -d "$cache"/libtorch-*/lib 2>/dev/null | tail -1 || true)
if [ -n "$libtorch" ]; then export LD_LIBRARY_PATH="$libtorch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export JUPYTER_PATH="$dir/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
if [ $# -eq 0 ]; then
  set -- python/tests/test_client_*.py python/tests/test_notebook.py
fi
exec "$dir/bin/python" -m pytest -q -p no:cacheprovider "$@"
