# The quorumkv binary: every role (coordinator, storage, repair, migrate) and
# the CLI. docker-compose.yml runs one container per process from it.
#
#   docker build -t quorumkv .
#   docker run --rm quorumkv --help

FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Pure Go (Pebble falls back to its Go zstd without cgo), so the binary runs
# on any base image.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/quorumkv ./cmd/quorumkv

FROM alpine:3.22
# ca-certificates for TLS to NATS, PostgreSQL and Redis; wget (busybox) for
# health checks. Storage nodes keep their data under /data.
RUN apk add --no-cache ca-certificates \
 && adduser -D -H -u 10001 quorumkv \
 && mkdir /data && chown quorumkv:quorumkv /data
COPY --from=build /out/quorumkv /usr/local/bin/quorumkv
USER quorumkv
VOLUME ["/data"]
ENTRYPOINT ["quorumkv"]
CMD ["help"]
