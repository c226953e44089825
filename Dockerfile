# syntax=docker/dockerfile:1
#
# Ballast container image: a release build in the official Rust image, run as a non-root user
# in Debian slim.
#
#   docker build -t ballast .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9190:9190 ballast    # default config (placeholder backends)
#   docker run --rm -v "$PWD/my.yaml:/etc/ballast/ballast.yaml:ro" ballast
#   docker run --rm ballast check                                   # validate the mounted file
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9190:9190 ballast demo --listen 0.0.0.0:8080 --admin-listen 0.0.0.0:9190
#   docker kill --signal HUP <container>                            # reload the configuration
#
# crates/ballast/tests/deploy.rs runs this file's runtime steps outside Docker (same user, same
# config path, same HEALTHCHECK command, same stop signal); keep them in the plain forms it reads.

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore): `ballast demo` embeds configs/demo.yaml.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ballast \
 && install -D -m 0755 target/release/ballast /out/ballast \
 && strip --strip-debug /out/ballast \
 && /out/ballast --version

FROM debian:bookworm-slim
# curl is the HEALTHCHECK's client (the binary has no probe subcommand).
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volume permissions
# are predictable.
RUN groupadd --system --gid 10001 ballast \
 && useradd --system --uid 10001 --gid ballast --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ballast
COPY --from=build /out/ballast /usr/local/bin/ballast
COPY deploy/docker/ballast.yaml /etc/ballast/ballast.yaml

ENV BALLAST_CONFIG=/etc/ballast/ballast.yaml
# Where the HEALTHCHECK asks; change it with the admin address of a mounted config.
ENV BALLAST_HEALTHCHECK_URL=http://127.0.0.1:9190/healthz
USER 10001:10001

# 8080: the default config's listener (and `ballast demo`'s); 9190: admin API and /metrics,
# to be published on loopback only (`-p 127.0.0.1:9190:9190`): see docs/runbooks.md,
# "Exposing the admin port safely".
# Listeners below 1024 work without capabilities: Docker sets
# net.ipv4.ip_unprivileged_port_start=0 in each container's network namespace.
EXPOSE 8080/tcp 9190/tcp

# /healthz answers while the process serves its admin API. Docker reserves exit code 2, so
# every curl failure (refused, timeout, HTTP error) becomes 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS -o /dev/null "$BALLAST_HEALTHCHECK_URL" || exit 1

# Ballast runs as PID 1 and handles the signals itself: SIGTERM stops accepting, drains open
# sessions for up to drain_timeout (keep it below `docker stop -t`, 10 s by default) and
# exits 0; SIGHUP reloads the configuration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ballast"]
CMD ["run"]
