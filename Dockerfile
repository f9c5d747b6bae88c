# syntax=docker/dockerfile:1
# Multi-stage build: static binaries of every ubiqo-bridge program in a
# minimal, non-root image. Pick the program with the command, e.g.
#   docker run ubiqo-bridge bridge --help
#   docker run ubiqo-bridge persister
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/ubiqo-bridge/ubiqo-bridge/config.Version=${VERSION}" \
      -o /out/ ./cmd/bridge ./cmd/persister ./cmd/alerter ./cmd/forwarder ./cmd/simulator
RUN mkdir -p /out/data && chown 65532:65532 /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bridge /out/persister /out/alerter /out/forwarder /out/simulator /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
USER 65532:65532
EXPOSE 8080
ENTRYPOINT []
CMD ["bridge"]
