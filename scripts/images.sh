#!/usr/bin/env bash
# Builds the operator and trainer images from the repository's Dockerfiles, and pushes them.
#   scripts/images.sh build REGISTRY VERSION [VARIANTS]   (make images)
#   scripts/images.sh push  REGISTRY VERSION [VARIANTS]   (make push)
# Images: REGISTRY/nasop:VERSION, REGISTRY/nasop-trainer:VERSION (cuda) and
# REGISTRY/nasop-trainer:VERSION-cpu. VARIANTS: the trainer variants, "cuda cpu" by default;
# "python" adds REGISTRY/python:3.11-slim, a plain Python image for the end-to-end test's
# unmodified script (examples/k8s/unmodified-script.yaml).
# The engine is docker when a Docker engine answers, else podman or buildah (Debian's
# packages; run as root). IMAGE_BASES=local builds the base images from Debian's packages
# first (tools/images/bases.sh), for machines that reach no public container registry.
# An image whose inputs (the files its build reads) are unchanged since it was last built
# is tagged again, not rebuilt; the Dockerfiles' cache mounts keep cargo's work between builds.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?usage: scripts/images.sh build|push REGISTRY VERSION [VARIANTS]}
registry=${2:?registry}
version=${3:?version}
variants=${4:-cuda cpu}

if [ -n "${ENGINE:-}" ]; then engine=$ENGINE
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
elif command -v podman >/dev/null; then engine=podman
elif command -v buildah >/dev/null; then engine=buildah
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's buildah (no container engine here)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
  engine=buildah
else
  echo "no container engine: install Docker, or Debian's buildah (apt-get install buildah runc)" >&2
  exit 1
fi
# buildah and podman run each RUN step with an OCI runtime, which Debian's packages only
# recommend: without one a build fails at its first RUN ("exec: no command").
if [ "$engine" != docker ] && ! command -v runc >/dev/null && ! command -v crun >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's runc (buildah and podman need an OCI runtime)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc >/dev/null
  else
    echo "$engine needs an OCI runtime: install runc or crun (apt-get install runc)" >&2
    exit 1
  fi
fi

# name, Dockerfile, extra build args, the files the build reads
operator_inputs="Dockerfile Cargo.toml Cargo.lock src core data trainer/Cargo.toml"
trainer_inputs="trainer/Dockerfile Cargo.toml Cargo.lock core trainer scripts/libtorch.sh"
images=("nasop:$version|Dockerfile||$operator_inputs")
for v in $variants; do
  case $v in
    cuda) images+=("nasop-trainer:$version|trainer/Dockerfile|--build-arg VARIANT=cuda|$trainer_inputs") ;;
    cpu) images+=("nasop-trainer:$version-cpu|trainer/Dockerfile|--build-arg VARIANT=cpu|$trainer_inputs") ;;
    python) images+=("python:3.11-slim|tools/images/python.Dockerfile||tools/images/python.Dockerfile") ;;
    *) echo "unknown variant $v: use cuda, cpu or python" >&2; exit 1 ;;
  esac
done

# An image's inputs label, and an image's ID (buildah has its own inspect).
label() {
  case $engine in
    buildah) buildah inspect --type image --format '{{index .OCIv1.Config.Labels "nasop.dev/inputs"}}' "$1" ;;
    *) "$engine" image inspect --format '{{index .Config.Labels "nasop.dev/inputs"}}' "$1" ;;
  esac 2>/dev/null || true
}
image_id() {
  case $engine in
    buildah) buildah inspect --type image --format '{{.FromImageID}}' "$1" ;;
    *) "$engine" image inspect --format '{{.Id}}' "$1" ;;
  esac 2>/dev/null || true
}
if [ "$action" = build ]; then
  bases=""
  if [ "${IMAGE_BASES:-public}" = local ]; then
    python=""
    case " $variants " in *" cuda "*|*" python "*) python=python ;; esac
    bases=$(tools/images/bases.sh "$engine" $python)
  fi
  for entry in "${images[@]}"; do
    IFS='|' read -r name file args inputs <<< "$entry"
    image=$registry/$name
    # The key: every input file's content, the build arguments and the bases' IDs.
    key=$( { git ls-files -co --exclude-standard -- $inputs | sort | xargs -d '\n' sha256sum
             echo "$args"
             for b in $bases; do
               case $b in *=*) if grep -q "^ARG ${b%%=*}=" "$file"; then echo "$b $(image_id "${b#*=}")"; fi ;; esac
             done
           } | sha256sum | cut -c1-16)
    if [ "$(label "$image")" = "$key" ]; then
      echo "$image: up to date" >&2
      continue
    fi
    # Built before under another name (another registry): tag it.
    # awk, not head: head exits after the first line, and with pipefail the engine's SIGPIPE
    # (exit 141) would end the script when several tags carry the label.
    same=$("$engine" images --filter "label=nasop.dev/inputs=$key" --format '{{.ID}}' 2>/dev/null | awk 'NR == 1')
    if [ -n "$same" ]; then
      "$engine" tag "$same" "$image"
      echo "$image: tagged (built before)" >&2
      continue
    fi
    started=$(date +%s)
    echo "building $image ($engine)" >&2
    if [ "$engine" = docker ]; then
      DOCKER_BUILDKIT=1 docker build -f "$file" $args $bases --label "nasop.dev/inputs=$key" -t "$image" .
    else
      "$engine" build --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
        --layers -f "$file" $args $bases --label "nasop.dev/inputs=$key" -t "$image" .
    fi
    echo "$image: built in $(( $(date +%s) - started )) s, $("$engine" images --format '{{.Size}}' "$image" | awk 'NR == 1')" >&2
  done
  # The build stages' layers (the sources, the compilers) are of no use once the inputs
  # change; cargo's own cache lives in the Dockerfiles' cache mounts.
  case $engine in buildah) buildah rmi --prune >/dev/null 2>&1 || true ;; podman) podman image prune -f >/dev/null 2>&1 || true ;; esac
elif [ "$action" = push ]; then
  for entry in "${images[@]}"; do
    IFS='|' read -r name _ <<< "$entry"
    image=$registry/$name
    # A local registry that already holds this image (its storage outlives the test
    # cluster): nothing to push. Compared by the config digest, which is the image ID.
    case $registry in
      localhost[:/]*|127.0.0.1[:/]*)
        host=${registry%%/*}; repo=${image#"$host"/}; tag=${repo##*:}; repo=${repo%:*}
        held=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
                 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
                 "http://$host/v2/$repo/manifests/$tag" |
               python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"])' 2>/dev/null || true)
        id=$(image_id "$image")
        if [ -n "$held" ] && [ "$held" = "sha256:${id#sha256:}" ]; then
          echo "$image: already in the registry" >&2
          continue
        fi ;;
    esac
    echo "pushing $image" >&2
    case $engine in
      docker) docker push "$image" ;;
      *) tls=""
         case $registry in localhost[:/]*|127.0.0.1[:/]*) tls=--tls-verify=false ;; esac
         "$engine" push $tls "$image" "docker://$image" ;;
    esac
  done
else
  echo "unknown action $action: build or push" >&2; exit 1
fi
