// Command persister stores every coordinate of the COORDS stream exactly once
// in SQLite (the default, ./data/coords.db) or PostgreSQL, on the durable
// consumer "persister". With no nats.url it connects to the embedded server
// the bridge serves on nats://127.0.0.1:4222.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/cmd/internal/cli"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/persist"
)

func main() { cli.Main("persister", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	l, err := config.Load(config.Persister, args, stdout)
	if err != nil {
		return err
	}
	if len(l.Args) > 0 {
		return fmt.Errorf("unexpected argument %q (see persister --help; a true/false flag is written --key=false)", l.Args[0])
	}
	cfg := l.Config
	log, flushLog := cli.NewLogger(cfg.Log, "persister", stderr)
	defer flushLog()
	// Masked() shows persist.dsn with its password hidden (config.MaskDSN).
	log.Info().Str("version", config.Version).Interface("config", l.Masked()).Msg("starting")

	consumer, err := cli.ConsumerConfig(cfg, config.Persister)
	if err != nil {
		return err
	}

	// Empty nats.url: the embedded server the bridge runs (nats.DefaultURL,
	// nats://127.0.0.1:4222). Not reachable yet is not fatal: Connect keeps
	// trying and the runtime waits for the stream.
	nc, err := stream.Connect(cli.ConnConfig(cfg.NATS, "ubiqo-persister"), log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := ensureDLQ(ctx, js, cfg, nc, log); err != nil {
		return err
	}

	rt, err := subscribers.New(js, consumer, log)
	if err != nil {
		return err
	}
	log.Info().Str("driver", cfg.Persist.Driver).Str("dsn", config.MaskDSN(cfg.Persist.DSN)).
		Str("consumer", consumer.Durable).Msg("persisting coordinates")
	runErr := persist.Run(ctx, rt, persist.Config{
		Driver:            cfg.Persist.Driver,
		DSN:               cfg.Persist.DSN,
		MaxConns:          cfg.Persist.MaxConns,
		WriteTimeout:      cfg.Persist.WriteTimeout,
		BusyTimeout:       cfg.Persist.BusyTimeout,
		SQLiteSynchronous: cfg.Persist.SQLiteSynchronous,
	}, log)

	// The last acks are on their way: flush them before closing.
	if err := nc.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn().Err(err).Msg("nats flush at shutdown")
	}
	return runErr
}

// ensureDLQ creates or updates the DLQ stream when stream.manage is on. A
// server that refuses the settings is a configuration error; a server that
// is not there yet is not (dead-lettering retries until the stream exists).
func ensureDLQ(ctx context.Context, js jetstream.JetStream, cfg *config.Config, nc *nats.Conn, log zerolog.Logger) error {
	if !cfg.Stream.Manage {
		return nil
	}
	if !nc.IsConnected() {
		log.Warn().Msg("nats not reachable yet; the DLQ stream is not checked")
		return nil
	}
	ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := stream.Ensure(ectx, js, stream.DLQConfig(cfg.Stream.Replicas))
	if errors.Is(err, stream.ErrIncompatible) {
		return err
	}
	if err != nil {
		log.Warn().Err(err).Msg("DLQ stream not ensured; permanent failures are retried until it exists")
	}
	return nil
}
