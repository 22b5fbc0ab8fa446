# Sourced by scripts/pytest.sh and scripts/moto.sh: `venv NAME REQUIREMENT` makes (once) a
# virtual environment with REQUIREMENT from PyPI, cached outside the repository as
# $NASOP_CACHE/NAME, and prints its python.
venv() {
  local dir=${NASOP_CACHE:-$HOME/.cache/nasop}/$1
  if [ ! -f "$dir/.complete" ]; then
    echo "installing $2 into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$2" >&2
    touch "$dir/.complete"
  fi
  echo "$dir/bin/python"
}
