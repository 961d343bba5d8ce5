# syntax=docker/dockerfile:1
# Build: docker build -t ratchet .
# Run:   docker run -e DATABASE_URL=postgres://user:pass@db:5432/ratchet -v ratchet-data:/var/lib/ratchet -p 50051:50051 -p 8080:8080 ratchet
#        (without DATABASE_URL: SQLite in the volume, /var/lib/ratchet/ratchet.db; one container only)
# Keys:  the key directory is /var/lib/ratchet/keys (or mount one at RATCHET_KEYS_DIR, the same for
#        every replica); manage it with `docker run ... ratchet keys list|generate|activate|retire`.
# Kubernetes: deploy/kubernetes/ (README, "Deploying").
#
# Checked by tests/deploy.rs: hadolint passes, and the build stage's cargo command, run as written
# on the files this context sends (.dockerignore applied), builds a binary that runs.
# No HEALTHCHECK on purpose: Kubernetes probes the gRPC health service itself (a HEALTHCHECK would
# need a client binary in the image, and Kubernetes ignores it).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build directory between builds without baking them into a
# layer; the binary is copied out because the target directory is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ratchet \
    && cp target/release/ratchet /ratchet \
    && mkdir -p /data

# glibc and libgcc only: the binary links nothing else (TLS and crypto are aws-lc, built in).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ratchet /usr/local/bin/ratchet
COPY --from=build --chown=65532:65532 /data /var/lib/ratchet
# /metrics on a port of its own, so that it is never on the JWKS port, which may face the internet.
ENV RATCHET_LISTEN=0.0.0.0:50051 \
    RATCHET_HTTP_LISTEN=0.0.0.0:8080 \
    RATCHET_METRICS_LISTEN=0.0.0.0:9090 \
    RATCHET_DATA_DIR=/var/lib/ratchet \
    RATCHET_LOG_FORMAT=json
VOLUME /var/lib/ratchet
# gRPC; HTTP serves the JWKS and discovery metadata; Prometheus metrics
EXPOSE 50051 8080 9090
# Numeric (distroless's nonroot): Kubernetes' runAsNonRoot can only verify a numeric user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ratchet"]
CMD ["serve"]
