package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// ConnConfig maps the nats.* keys to a connection config. name is the
// connection name when nats.name is empty. An empty nats.url means the
// bridge's embedded server at nats://127.0.0.1:4222.
func ConnConfig(n config.NATS, name string) stream.ConnConfig {
	if n.Name != "" {
		name = n.Name
	}
	return stream.ConnConfig{
		URL: n.URL, User: n.User, Password: n.Password, Token: n.Token, CredsFile: n.CredsFile,
		TLSCA: n.TLSCA, TLSCert: n.TLSCert, TLSKey: n.TLSKey,
		Name: name, ConnectTimeout: n.ConnectTimeout,
	}
}

// ConsumerConfig maps the consumer.*, stream.* and http.addr keys to the
// subscriber runtime's configuration for binary b.
func ConsumerConfig(cfg *config.Config, b config.Binary) (subscribers.Config, error) {
	c := cfg.Consumer
	policy, err := subscribers.ParseDeliverPolicy(c.DeliverPolicy)
	if err != nil {
		return subscribers.Config{}, fmt.Errorf("consumer.deliver_policy: %w", err)
	}
	return subscribers.Config{
		Durable:        c.DurableFor(b),
		Stream:         cfg.Stream.Name,
		SubjectPrefix:  cfg.Stream.SubjectPrefix,
		FilterSubjects: c.FilterSubjects,
		AckWait:        c.AckWait,
		MaxDeliver:     c.MaxDeliver,
		MaxAckPending:  c.MaxAckPending,
		Backoff:        c.Backoff,
		BatchSize:      c.BatchSize,
		BatchWait:      c.BatchWait,
		DeliverPolicy:  policy,
		StartTime:      c.StartAt(),
		DLQPrefix:      stream.DLQSubjectPrefix,
		HTTPAddr:       cfg.HTTP.Addr,
		Pprof:          cfg.HTTP.Pprof,
		DrainTimeout:   c.DrainTimeout,
		LagInterval:    c.LagInterval,
	}, nil
}

// Drain drains nc (pending publishes flushed, subscriptions ended) and
// waits until it is closed, at most timeout.
func Drain(nc *nats.Conn, timeout time.Duration) error {
	if err := nc.Drain(); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for !nc.IsClosed() {
		if time.Now().After(deadline) {
			nc.Close()
			return errors.New("connection not closed after drain timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// CoordsConfig maps the stream.* keys to the COORDS stream's description.
func CoordsConfig(s config.Stream) stream.CoordsConfig {
	return stream.CoordsConfig{
		Name:            s.Name,
		SubjectPrefix:   s.SubjectPrefix,
		Replicas:        s.Replicas,
		MaxAge:          s.MaxAge,
		MaxBytes:        s.MaxBytes,
		DuplicateWindow: s.DuplicateWindow,
		Compression:     s.Compression == "s2",
		AllowDirect:     s.AllowDirect,
	}
}

// ConnectWaiting connects for a program that needs the connection up before
// it starts (it creates streams and KV buckets): while no server answers it
// waits, saying so now and then, rather than exit and be restarted; any
// other failure (credentials, TLS) is returned at once. It gives up when
// ctx ends.
func ConnectWaiting(ctx context.Context, cfg stream.ConnConfig, log zerolog.Logger) (*nats.Conn, error) {
	cfg.WaitConnected = true
	const every = 2 * time.Second
	var first time.Time
	lastSaid := time.Time{}
	for {
		nc, err := stream.Connect(cfg, log)
		if err == nil {
			if !first.IsZero() {
				log.Info().Dur("waited", time.Since(first)).Msg("NATS reachable")
			}
			return nc, nil
		}
		if !errors.Is(err, nats.ErrNoServers) {
			return nil, err
		}
		if first.IsZero() {
			first = time.Now()
		}
		if time.Since(lastSaid) >= 30*time.Second {
			log.Warn().Err(err).Str("nats_url", config.MaskURLs(cfg.URL)).
				Msg("waiting for NATS (nats.url); retrying every 2s")
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for NATS: %w", err)
		case <-time.After(every):
		}
	}
}
