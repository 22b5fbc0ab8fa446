#!/usr/bin/env bash
# Builds the operator as one static binary, as the Dockerfile does (musl target, musl-gcc
# for the C in ring and mimalloc, stripped), into target/static/nasop, and checks that it
# links nothing dynamically.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
if ! command -v musl-gcc >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
cargo build --release --locked --target "$target" --bin nasop
mkdir -p target/static
bin=target/static/nasop
strip -o "$bin" "target/$target/release/nasop"
if ldd "$bin" 2>&1 | grep -q "=>"; then
  echo "$bin links shared libraries:" >&2; ldd "$bin" >&2; exit 1
fi
echo "$bin: static, $(du -h "$bin" | cut -f1)"
