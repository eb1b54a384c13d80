//go:build tools

// Package deps pins the project's third-party modules in go.mod before every
// package that uses them exists, so that parallel work never edits go.mod.
// It is never built.
package deps

import (
	_ "github.com/cespare/xxhash/v2"
	_ "github.com/cockroachdb/pebble/v2"
	_ "github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/lmittmann/tint"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/nats-io/nats.go/micro"
	_ "github.com/pressly/goose/v3"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/redis/go-redis/v9"
	_ "github.com/vmihailenco/msgpack/v5"
)
