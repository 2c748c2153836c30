# syntax=docker/dockerfile:1
# The operator image: a static (musl) release binary on distroless/static, running as nonroot.
#   docker build -t tokenmint:dev .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 (the builder runs per platform).

# On Alpine the host target is musl, so the release binary is fully static without a cross toolchain.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir across builds; the binary is copied out of the
# mounted target dir because the mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tokenmint \
    && cp target/release/tokenmint /tokenmint

# No shell, no package manager; CA certificates and /etc/passwd with nonroot (65532) only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tokenmint /tokenmint
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tokenmint", "run"]
