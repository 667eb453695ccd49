# syntax=docker/dockerfile:1.7
#
# One multi-stage build for the whole Cargo workspace, one target per binary:
#
#   docker build --target gateway   -t roomcast-gateway   .
#   docker build --target fanout    -t roomcast-fanout    .
#   docker build --target persister -t roomcast-persister .
#   docker build --target roomcast  -t roomcast           .   (also the default target)
#
# The builder compiles every binary once (protox compiles the .proto files, so no
# protoc is installed). Each runtime image is distroless "cc" (glibc + libgcc, no
# shell, no package manager), runs as the distroless `nonroot` user (65532) and
# needs nothing writable: run it with a read-only root filesystem.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# The commit being built (.git is not in the context): roomcast_build_info{version}.
#   docker build --build-arg ROOMCAST_BUILD_VERSION="0.1.0+$(git rev-parse --short=9 HEAD)" .
ARG ROOMCAST_BUILD_VERSION=""
ENV ROOMCAST_BUILD_VERSION=${ROOMCAST_BUILD_VERSION}
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the binaries are
# copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/gateway target/release/fanout target/release/persister target/release/roomcast /out/ \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER nonroot:nonroot
ENV RUST_LOG=info

FROM runtime AS gateway
COPY --from=builder /out/gateway /usr/local/bin/gateway
# HTTP + WebSocket, metrics/health
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM runtime AS fanout
COPY --from=builder /out/fanout /usr/local/bin/fanout
# gRPC, metrics/health
EXPOSE 50051 9091
ENTRYPOINT ["/usr/local/bin/fanout"]

FROM runtime AS persister
COPY --from=builder /out/persister /usr/local/bin/persister
# gRPC, metrics/health
EXPOSE 50052 9092
ENTRYPOINT ["/usr/local/bin/persister"]

# Standalone: gateway, in-memory broker and on-disk store in one process. Its data
# directory is the only writable path; mount a volume there.
FROM runtime AS roomcast
COPY --from=builder --chown=65532:65532 /out/data /data
COPY --from=builder /out/roomcast /usr/local/bin/roomcast
VOLUME ["/data"]
# HTTP + WebSocket, metrics/health
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/roomcast"]
CMD ["--listen", "0.0.0.0:8080", "--metrics-listen", "0.0.0.0:9090", "--data-dir", "/data"]
