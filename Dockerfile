# syntax=docker/dockerfile:1
# Multi-stage build: static binaries of every ubiqo-bridge program in one
# minimal, non-root image. Pick the program with the command, e.g.
#   docker run ubiqo-bridge bridge --help
#   docker run ubiqo-bridge persister
# deploy/deploy_test.go checks that every program under cmd/ is built and
# copied, that the build is static (CGO_ENABLED=0) and that the image does
# not run as root.

# The build runs on the builder's own platform and cross-compiles (pure Go,
# no cgo), so `docker buildx build --platform linux/amd64,linux/arm64` needs
# no emulation.
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X github.com/ubiqo-bridge/ubiqo-bridge/config.Version=${VERSION}" \
      -o /out/ ./cmd/bridge ./cmd/persister ./cmd/alerter ./cmd/forwarder ./cmd/simulator
# The working directory of the programs: their relative defaults
# (./data/spool, ./data/nats, file:./data/coords.db) land in
# /var/lib/ubiqo-bridge/data, the path to mount a volume on. It is owned by
# the non-root user so a fresh named volume inherits a writable directory.
RUN mkdir -p /out/state/data

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="ubiqo-bridge" \
      org.opencontainers.image.description="UBIQO GPS webhooks to NATS JetStream: bridge, persister, alerter, forwarder, simulator" \
      org.opencontainers.image.source="https://github.com/ubiqo-bridge/ubiqo-bridge"
COPY --from=build /out/bridge /out/persister /out/alerter /out/forwarder /out/simulator /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/state /var/lib/ubiqo-bridge
WORKDIR /var/lib/ubiqo-bridge
USER 65532:65532
# http.addr of the bridge; subscribers serve /healthz, /readyz and /metrics
# there when UBIQO_HTTP_ADDR is set.
EXPOSE 8080
CMD ["bridge"]
