package stream_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

func coordsConfig() stream.CoordsConfig {
	return stream.CoordsConfig{
		Name: "COORDS", SubjectPrefix: "ubiqo.coords", Replicas: 1,
		MaxAge: 720 * time.Hour, MaxBytes: -1, DuplicateWindow: 10 * time.Minute,
		Compression: true, AllowDirect: true,
	}
}

func TestEnsureCreatesThenUpdates(t *testing.T) {
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	ctx := context.Background()

	s, err := stream.Ensure(ctx, js, coordsConfig().StreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	got := s.CachedInfo().Config
	if got.Subjects[0] != "ubiqo.coords.>" || got.Duplicates != 10*time.Minute || got.Compression != jetstream.S2Compression || !got.AllowDirect || got.Storage != jetstream.FileStorage {
		t.Fatalf("created stream config = %+v", got)
	}

	// Same config again: no error, nothing changes.
	if _, err := stream.Ensure(ctx, js, coordsConfig().StreamConfig()); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}

	// Updatable settings are applied in place.
	cfg := coordsConfig()
	cfg.MaxAge = 48 * time.Hour
	cfg.DuplicateWindow = time.Minute
	cfg.Compression = false
	s, err = stream.Ensure(ctx, js, cfg.StreamConfig())
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxAge != 48*time.Hour || info.Config.Duplicates != time.Minute || info.Config.Compression != jetstream.NoCompression {
		t.Fatalf("update not applied: %+v", info.Config)
	}
}

func TestEnsureRefusesImmutableChange(t *testing.T) {
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	ctx := context.Background()
	mem := coordsConfig().StreamConfig()
	mem.Storage = jetstream.MemoryStorage
	if _, err := js.CreateStream(ctx, mem); err != nil {
		t.Fatal(err)
	}
	_, err := stream.Ensure(ctx, js, coordsConfig().StreamConfig())
	if !errors.Is(err, stream.ErrIncompatible) {
		t.Fatalf("want ErrIncompatible, got %v", err)
	}
	if !strings.Contains(err.Error(), "storage is Memory, want File") {
		t.Errorf("error does not say what differs: %v", err)
	}
	// Nothing was deleted.
	s, err := js.Stream(ctx, "COORDS")
	if err != nil || s.CachedInfo().Config.Storage != jetstream.MemoryStorage {
		t.Fatalf("stream changed or lost: %v", err)
	}
}

func TestEnsureExplainsSubjectOverlap(t *testing.T) {
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"ubiqo.>"}}); err != nil {
		t.Fatal(err)
	}
	_, err := stream.Ensure(ctx, js, coordsConfig().StreamConfig())
	if err == nil || !strings.Contains(err.Error(), "subject_prefix") {
		t.Fatalf("want an overlap error with a hint, got %v", err)
	}
}

func TestEnsureOtherStreams(t *testing.T) {
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	ctx := context.Background()
	for _, cfg := range []jetstream.StreamConfig{stream.DLQConfig(1), stream.AlertsConfig(1), coordsConfig().StreamConfig()} {
		if _, err := stream.Ensure(ctx, js, cfg); err != nil {
			t.Fatalf("%s: %v", cfg.Name, err)
		}
	}
}

func TestStartEmbedded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	// The port is taken: a clear error that says how to use the server there.
	_, err = stream.StartEmbedded(stream.EmbeddedConfig{Listen: addr, StoreDir: t.TempDir()}, zerolog.Nop())
	if !errors.Is(err, stream.ErrAddrInUse) || !strings.Contains(err.Error(), "nats.url") {
		t.Fatalf("want ErrAddrInUse naming nats.url, got %v", err)
	}
	l.Close()

	s, err := stream.StartEmbedded(stream.EmbeddedConfig{Listen: addr, StoreDir: t.TempDir()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	nc, err := stream.Connect(stream.ConnConfig{URL: "nats://" + addr, Name: "test", WaitConnected: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := stream.Ensure(context.Background(), js, coordsConfig().StreamConfig()); err != nil {
		t.Fatalf("JetStream not usable on the embedded server: %v", err)
	}
}

func TestConnectErrorRedactsSecrets(t *testing.T) {
	_, err := stream.Connect(stream.ConnConfig{URL: "nats://user:hunter2@127.0.0.1:1,nats://s3cr3ttoken@127.0.0.1:2,bob:n0scheme@127.0.0.1:3", WaitConnected: true, ConnectTimeout: 200 * time.Millisecond}, zerolog.Nop())
	if err == nil {
		t.Fatal("want a connection error")
	}
	for _, secret := range []string{"hunter2", "s3cr3ttoken", "n0scheme"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks %q: %v", secret, err)
		}
	}
}
