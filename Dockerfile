# The nasop operator image: one static (musl) nasop binary on distroless/static, non-root.
# Build from the repository root:
#   docker build -t ghcr.io/nasop/nasop:0.1.0 .          (or: make images)
# `make static` runs the same build here, without a container engine.
# The bases are build arguments so that a machine without access to public registries can
# pass its own (tools/images/bases.sh builds stand-ins from Debian's packages).
ARG RUST_IMAGE=rust:1.89-bookworm
ARG STATIC_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG TARGETARCH
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# ring (TLS, HMAC) and mimalloc (musl's allocator is slow) compile C with musl-gcc; the
# binary loses its line tables (150 MB -> 24 MB).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    case "${TARGETARCH:-amd64}" in \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) target=x86_64-unknown-linux-musl ;; \
    esac \
 && rustup target add "$target" \
 && cargo build --release --locked --target "$target" --bin nasop \
 && strip -o /nasop "target/$target/release/nasop"

FROM ${STATIC_IMAGE}
COPY --from=build /nasop /nasop
# distroless's nonroot user; the chart also sets runAsNonRoot and a read-only root.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/nasop"]
CMD ["operator"]
