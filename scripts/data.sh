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
