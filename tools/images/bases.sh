#!/usr/bin/env bash
# Builds, from Debian's packages, local stand-ins for the public base images the Dockerfiles
# start from, for machines that cannot reach a public container registry (this project's
# sandbox reaches only package registries). Prints the build arguments that select them:
#   --build-arg RUST_IMAGE=localhost/nasop-base/rust:1.89-bookworm       (rust:1.89-bookworm)
#   --build-arg STATIC_IMAGE=localhost/nasop-base/static:nonroot         (distroless/static-debian12:nonroot)
#   --build-arg DEBIAN_IMAGE=localhost/nasop-base/debian:bookworm-slim   (debian:bookworm-slim)
#   --build-arg PYTHON_IMAGE=localhost/nasop-base/python:3.11-bookworm   (python:3.11-slim-bookworm)
# Each is made as the public one is (debootstrap's minbase, Debian's packages, rustup's
# toolchain for the Rust one) and rebuilt only when `version` below or the machine's CA
# certificates change: bump it with any change to what the bases contain.
# Usage: tools/images/bases.sh ENGINE [python]   (buildah or podman; run as root). The Python
# base (for the cuda trainer only) is built when asked for.
set -euo pipefail
engine=${1:-buildah}
want_python=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
cache=${NASOP_CACHE:-$HOME/.cache/nasop}/images
mkdir -p "$cache"
# This machine's own CA certificates go into the bases too: where the network re-signs TLS
# (an egress proxy, as on this project's machines), builds inside them fetch from crates.io,
# PyPI and rustup as the host does.
extra_cas=$(ls /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)
version=2
key=$( { echo "$version"; cat $extra_cas; } | sha256sum | cut -c1-12)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rust_version=1.89.0

# A Debian bookworm root file system (debootstrap minbase), kept in the cache.
rootfs=$cache/bookworm-minbase-$key
if [ ! -f "$rootfs.tar" ]; then
  command -v debootstrap >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  echo "debootstrap: Debian bookworm (minbase) from $mirror" >&2
  tmp=$(mktemp -d "$cache/rootfs.XXXXXX")
  debootstrap --variant=minbase --include=ca-certificates bookworm "$tmp" "$mirror" >&2
  if [ -n "$extra_cas" ]; then
    cp $extra_cas "$tmp/usr/local/share/ca-certificates/"
    TMPDIR=/tmp chroot "$tmp" update-ca-certificates >/dev/null  # the chroot has no host TMPDIR
  fi
  # What debian:bookworm-slim leaves out, as its build does: the downloaded packages, apt's
  # lists and caches, docs, man pages, translations, logs; and the apt and dpkg settings
  # that keep later installs from bringing them back.
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/cache/apt/*.bin \
    "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/* \
    "$tmp"/var/log/*.log "$tmp"/var/cache/debconf/*-old
  cat > "$tmp/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT
  printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    > "$tmp/etc/dpkg/dpkg.cfg.d/docker-slim"
  echo "deb $mirror bookworm main" > "$tmp/etc/apt/sources.list"
  tar -C "$tmp" --numeric-owner -cf "$rootfs.tar.part" .
  rm -rf "$tmp"
  mv "$rootfs.tar.part" "$rootfs.tar"
fi

# debian:bookworm-slim: the root file system as one layer.
debian=localhost/nasop-base/debian:bookworm-slim
label=nasop.dev/base-key=$key
base_key() {
  case $engine in
    buildah) buildah inspect --type image --format '{{index .OCIv1.Config.Labels "nasop.dev/base-key"}}' "$1" ;;
    *) "$engine" image inspect --format '{{index .Config.Labels "nasop.dev/base-key"}}' "$1" ;;
  esac 2>/dev/null
}
current() { [ "$(base_key "$1")" = "$key" ]; }
if ! current "$debian"; then
  echo "base image $debian" >&2
  ctr=$("$engine" from scratch)
  mnt=$("$engine" mount "$ctr")
  tar -C "$mnt" --numeric-owner -xf "$rootfs.tar"
  "$engine" umount "$ctr" >/dev/null
  "$engine" config --label "$label" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
  "$engine" commit -q --rm "$ctr" "$debian" >/dev/null
fi

build() { # image, Containerfile text
  local image=$1 dir
  current "$image" && return 0
  echo "base image $image" >&2
  dir=$(mktemp -d)
  cat > "$dir/Containerfile"
  "$engine" bud --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --label "$label" -t "$image" "$dir" >&2
  rm -rf "$dir"
}

# rust:1.89-bookworm: the compilers and headers of buildpack-deps, and rustup's toolchain.
build localhost/nasop-base/rust:1.89-bookworm <<CF
FROM $debian
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ \
      libc6-dev make pkg-config git xz-utils && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:\$PATH
RUN curl -sSf https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init -o /rustup-init \
 && chmod +x /rustup-init && /rustup-init -y --no-modify-path --profile minimal --default-toolchain $rust_version \
 && rm /rustup-init && chmod -R a+w /usr/local/rustup /usr/local/cargo
CF

# gcr.io/distroless/static-debian12:nonroot: CA certificates, time zones, the nonroot user.
build localhost/nasop-base/static:nonroot <<CF
FROM $debian AS files
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && mkdir -p /out/etc/ssl/certs /out/usr/share /out/tmp /out/home/nonroot \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
 && cp -r /usr/share/zoneinfo /out/usr/share/ \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /out/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' > /out/etc/group \
 && chmod 1777 /out/tmp && chown 65532:65532 /out/home/nonroot
FROM scratch
COPY --from=files /out/ /
USER 65532:65532
WORKDIR /home/nonroot
CF

# python:3.11-slim-bookworm: Debian's Python 3.11 with pip at the same paths' behaviour
# (python3 and pip3 on PATH, pip allowed to install system-wide).
python_arg=""
if [ "$want_python" = python ]; then
python_arg="--build-arg PYTHON_IMAGE=localhost/nasop-base/python:3.11-bookworm"
build localhost/nasop-base/python:3.11-bookworm <<CF
FROM $debian
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/python3 /usr/local/bin/python \
 && printf '[global]\nbreak-system-packages = true\n' > /etc/pip.conf
CF

fi

echo "--build-arg RUST_IMAGE=localhost/nasop-base/rust:1.89-bookworm --build-arg STATIC_IMAGE=localhost/nasop-base/static:nonroot --build-arg DEBIAN_IMAGE=$debian $python_arg"
