// Command bridge receives UBIQO GPS webhooks and stores every coordinate as a
// JetStream message on ubiqo.coords.<device token>, answering only once it is
// stored. With no nats.url it embeds a JetStream server.
//
//	bridge [flags]                 serve the webhook
//	bridge token [flags] DEVICE_ID print the subject of a device id
//	bridge set-aside [--publish]   list (or store) the coordinates set aside
//	                               in spool.dir for their size
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"
	_ "time/tzdata" // ingest.default_timezone must load in minimal images

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/cmd/internal/cli"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

func main() {
	// The bridge's heap is small (a few MB of buffers in flight): collecting
	// it less often saves about 6% CPU per request for a few MB of RSS
	// (measured with make bench). GOGC and GOMEMLIMIT still override.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(300)
	}
	cli.Main("bridge", run)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runToken(args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "set-aside" {
		return runSetAside(ctx, args[1:], stdout)
	}
	l, err := config.Load(config.Bridge, args, stdout)
	if err != nil {
		return err
	}
	if len(l.Args) > 0 {
		return fmt.Errorf("unexpected argument %q (see bridge --help; a true/false flag is written --key=false)", l.Args[0])
	}
	cfg := l.Config
	log, flushLog := cli.NewLogger(cfg.Log, "bridge", stderr)
	defer flushLog()
	log.Info().Str("version", config.Version).Interface("config", l.Masked()).Msg("starting")
	if cfg.Auth.Open() {
		log.Warn().Msg("auth.tokens is empty: the webhook accepts calls from anyone; set auth.tokens in production")
	}
	for _, t := range cfg.Auth.Tokens {
		if placeholderToken(t) {
			// docker-compose.yml's default: anyone who read it knows it.
			log.Warn().Msg("auth.tokens holds a placeholder (change-me, changeme, secret, token...): set a real secret")
			break
		}
	}

	natsURL := cfg.NATS.URL
	var embedded *server.Server
	if natsURL == "" {
		embedded, err = stream.StartEmbedded(stream.EmbeddedConfig{
			Listen:   cfg.NATS.Embedded.Listen,
			StoreDir: cfg.NATS.Embedded.StoreDir,
			MaxStore: cfg.NATS.Embedded.MaxStore,
		}, log)
		if err != nil {
			return err
		}
		defer func() {
			embedded.Shutdown()
			embedded.WaitForShutdown()
			log.Info().Msg("embedded nats server stopped")
		}()
		natsURL = embedded.ClientURL()
		log.Info().Str("url", natsURL).Str("store_dir", cfg.NATS.Embedded.StoreDir).Msg("embedded JetStream server running; subscribers and the nats CLI connect here")
	}

	conn := cli.ConnConfig(cfg.NATS, "ubiqo-bridge")
	conn.URL = natsURL
	conn.NoReconnectBuffer = true
	nc, err := stream.Connect(conn, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	var sp *spool.Spool
	if cfg.Spool.Mode == "spool" {
		sp, err = spool.Open(cfg.Spool.Dir, cfg.Spool.MaxBytes)
		if err != nil {
			return fmt.Errorf("spool.dir: %w", err)
		}
		defer sp.Close()
		for _, r := range sp.Repaired {
			log.Warn().Str("repair", r).Msg("spool: repaired at open (a torn record left by a crash is cut off; damaged bytes before sound records are moved aside)")
		}
		if n, b := sp.Stats(); n > 0 {
			log.Info().Int64("records", n).Int64("bytes", b).Msg("spool holds coordinates from before; replaying them")
		}
		if fi, err := os.Stat(sp.AsidePath()); err == nil && fi.Size() > 0 {
			log.Warn().Str("file", sp.AsidePath()).Int64("bytes", fi.Size()).
				Msg("coordinates set aside earlier (the server refused them for their size) wait in this file; bridge set-aside lists them, bridge set-aside --publish stores them once the limit allows")
		}
	}

	srv, err := bridge.New(bridge.Options{
		Addr:              cfg.HTTP.Addr,
		Path:              cfg.HTTP.Path,
		MaxBodyBytes:      cfg.HTTP.MaxBodyBytes,
		MaxBatch:          cfg.HTTP.MaxBatch,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		ShutdownTimeout:   cfg.HTTP.ShutdownTimeout,
		PublishTimeout:    cfg.NATS.PublishTimeout,
		MaxPending:        cfg.NATS.MaxPending,
		TLSCert:           cfg.HTTP.TLSCert,
		TLSKey:            cfg.HTTP.TLSKey,
		AdminAddr:         cfg.HTTP.AdminAddr,
		Pprof:             cfg.HTTP.Pprof,
		MaxInFlight:       cfg.HTTP.MaxInFlight,
		AllowIPs:          cfg.HTTP.AllowIPs,
		RateLimit:         cfg.HTTP.RateLimit,
		RateBurst:         cfg.HTTP.RateBurst,
		Tokens:            cfg.Auth.Tokens,
		BasicUser:         cfg.Auth.BasicUser,
		BasicPassword:     cfg.Auth.BasicPassword,
		AccessLog:         cfg.Log.Access,
		Decode: coord.Options{
			Location:     cfg.Ingest.Location(),
			Aliases:      cfg.Ingest.Aliases,
			MaxFuture:    cfg.Ingest.MaxFuture,
			BatteryScale: cfg.Ingest.BatteryScale,
		},
		Stream:       cli.CoordsConfig(cfg.Stream),
		ManageStream: cfg.Stream.Manage,
	}, bridge.Deps{Log: log, Conn: nc, JS: js, Spool: sp})
	if err != nil {
		return err
	}

	// A stream the server refuses to reconcile is a configuration error:
	// exit and say so. A NATS server that is not there yet is a fault: serve
	// (not ready) and keep trying.
	if nc.IsConnected() {
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := srv.EnsureStream(ectx)
		cancel()
		if errors.Is(err, stream.ErrIncompatible) {
			return err
		}
		if err != nil {
			log.Error().Err(err).Msg("coordinate stream not ready yet; will keep trying")
		}
	} else {
		log.Warn().Msg("nats not reachable yet; serving with /readyz false until it is")
	}

	runErr := srv.Run(ctx)

	// In-flight requests are done (or timed out), each having waited for
	// its own acks: drain the connection.
	if err := cli.Drain(nc, 10*time.Second); err != nil {
		log.Warn().Err(err).Msg("nats drain")
	}
	log.Info().Msg("stopped")
	return runErr
}

// runToken prints the subject that carries a device's coordinates.
func runToken(args []string, stdout io.Writer) error {
	l, err := config.Load(config.Bridge, args, stdout)
	if err != nil {
		return err
	}
	if len(l.Args) != 1 {
		return errors.New("usage: bridge token [flags] DEVICE_ID")
	}
	subj, err := coord.Subject(l.Stream.SubjectPrefix, l.Args[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, subj)
	return nil
}

// placeholderToken reports whether t is one of the words examples and
// templates put where a secret goes.
func placeholderToken(t string) bool {
	switch strings.ToLower(strings.TrimSpace(t)) {
	case "change-me", "changeme", "change_me", "secret", "token", "password", "test", "example":
		return true
	}
	return false
}
