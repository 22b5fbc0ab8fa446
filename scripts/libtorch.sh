#!/usr/bin/env bash
# Installs a CPU libtorch for tch from the PyPI torch wheel (the only libtorch source we
# can reach), cached outside the repository, and prints its directory.
#
# The torch wheel is the CUDA build; its libtorch_cpu.so needs only libcudart and libcupti
# besides libc10 and the bundled libgomp, so the wheel (no dependencies) plus those two
# small NVIDIA wheels suffice on a CPU machine (~540 MB downloaded, ~490 MB on disk). tch
# links -ltorch, whose real library also needs libtorch_cuda, so a stand-in libtorch.so
# that only pulls in libtorch_cpu takes its place. On a GPU machine the real PyTorch's
# torch/lib is put first on LD_LIBRARY_PATH and its libtorch.so loads CUDA.
set -euo pipefail
TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
cache=${NASOP_CACHE:-$HOME/.cache/nasop}
dir=$cache/libtorch-$TORCH_VERSION-cpu
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
echo "installing libtorch $TORCH_VERSION (CPU) into $dir" >&2
wheels=$cache/wheels
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --dest "$wheels" \
  "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheels" "$tmp" "$TORCH_VERSION" <<'PY'
import glob, os, sys, zipfile
wheels, out, version = sys.argv[1:]
def pick(pattern):
    found = sorted(glob.glob(os.path.join(wheels, pattern)))
    if not found:
        sys.exit(f"no wheel matching {pattern} in {wheels}")
    return found[-1]
os.makedirs(os.path.join(out, "lib"), exist_ok=True)
with zipfile.ZipFile(pick(f"torch-{version}-*.whl")) as z:
    for name in z.namelist():
        if name.startswith("torch/include/") or name.startswith("torch/share/cmake/") \
           or name in ("torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch/lib/libgomp.so.1", "torch/lib/libshm.so"):
            target = os.path.join(out, name[len("torch/"):])
            if name.endswith("/"):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                dst.write(src.read())
for pattern in ("nvidia_cuda_runtime-*.whl", "nvidia_cuda_cupti-*.whl"):
    with zipfile.ZipFile(pick(pattern)) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if base.startswith(("libcudart.so", "libcupti.so")) and "/lib/" in name:
                with z.open(name) as src, open(os.path.join(out, "lib", base), "wb") as dst:
                    dst.write(src.read())
PY
# The stand-in libtorch.so: empty, but it needs libtorch_cpu and libc10.
echo 'void nasop_libtorch_cpu_stand_in(void) {}' > "$tmp/stand_in.c"
cc -shared -fPIC -o "$tmp/lib/libtorch.so" "$tmp/stand_in.c" \
  -Wl,--no-as-needed -L"$tmp/lib" -ltorch_cpu -lc10 -Wl,-rpath,'$ORIGIN'
echo "$TORCH_VERSION" > "$tmp/build-version"  # read by torch-sys's version check
rm -rf "$dir"
mkdir -p "$cache"
mv "$tmp" "$dir"
trap - EXIT
touch "$dir/.complete"
echo "$dir"
