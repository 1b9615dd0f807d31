# syntax=docker/dockerfile:1
# The artifactd image. The first stage builds the release binary with the toolchain that
# rust-toolchain.toml pins (`--locked`: exactly Cargo.lock's dependencies); the second runs it
# from distroless `cc` (glibc and libgcc, nothing else: no shell, no package manager) as an
# unprivileged user. The health check asks the gRPC health service whether ArtifactService is
# serving, through the binary's own `health` command, so the image needs no probe tool.
#
#   docker build -t artifactd:0.1.0 .
#   docker run -p 50051:50051 -p 9464:9464 artifactd:0.1.0
#
# deploy/compose/compose.yaml runs it with Postgres, MinIO and a fallback S3 endpoint.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin artifactd \
    && install -D -m 0755 target/release/artifactd /out/artifactd \
    && install -d -m 0700 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/artifactd /usr/local/bin/artifactd
# The data directory holds the embedded SQLite catalog, the filesystem store and the search
# index; mount a volume here (Kubernetes: an emptyDir or a PersistentVolumeClaim).
COPY --from=build --chown=65532:65532 /out/data /var/lib/artifactd
USER 65532:65532
ENV ARTIFACTD_DATA_DIR=/var/lib/artifactd \
    ARTIFACTD_SERVER__GRPC_ADDR=0.0.0.0:50051 \
    ARTIFACTD_SERVER__HTTP_ADDR=0.0.0.0:9464 \
    ARTIFACTD_LOG__FORMAT=json
VOLUME ["/var/lib/artifactd"]
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/artifactd", "health", "--server", "http://127.0.0.1:50051", "--service", "artifactd.v1.ArtifactService", "--timeout", "4"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/artifactd"]
CMD ["serve"]
