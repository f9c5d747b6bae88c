// Package streamtest runs real JetStream servers for tests: in-process, on a
// random loopback port, with storage in the test's temporary directory, or as
// nats-server processes to kill; plus what tests of the programs share (the
// nats CLI, the default COORDS stream, a log buffer, free ports).
package streamtest

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// Server is a running in-process JetStream server.
type Server struct {
	*server.Server
	opts *server.Options
}

// Run starts a JetStream server on a random loopback port; it is shut down
// when the test ends.
func Run(t testing.TB) *Server {
	t.Helper()
	return RunWith(t, nil)
}

// RunWith is Run with the server options adjusted by mod (auth, TLS).
func RunWith(t testing.TB, mod func(*server.Options)) *Server {
	t.Helper()
	opts := &server.Options{
		ServerName: "test",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	if mod != nil {
		mod(opts)
	}
	s := start(t, opts)
	// Pin the port so Restart comes back where clients expect it.
	opts.Port = s.Addr().(*net.TCPAddr).Port
	return s
}

func start(t testing.TB, opts *server.Options) *Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("streamtest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatal("streamtest: server not ready")
	}
	ts := &Server{Server: s, opts: opts}
	t.Cleanup(ts.Stop)
	return ts
}

// Stop shuts the server down and waits until it is gone.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart stops the server and starts a new one on the same port with the
// same storage, as an operator restarting NATS would.
func (s *Server) Restart(t testing.TB) *Server {
	t.Helper()
	s.Stop()
	return start(t, s.opts)
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.ClientURL() }

// Connect returns a client connection and its JetStream context, closed when
// the test ends.
func Connect(t testing.TB, s *Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatalf("streamtest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("streamtest: jetstream: %v", err)
	}
	return nc, js
}

// Coords describes the COORDS stream as the bridge creates it with its
// default configuration (DESIGN.md), for tests and load runs that create it
// themselves.
func Coords() stream.CoordsConfig {
	return stream.CoordsConfig{
		Name: "COORDS", SubjectPrefix: "ubiqo.coords", Replicas: 1,
		MaxAge: 720 * time.Hour, MaxBytes: -1, DuplicateWindow: 10 * time.Minute,
		Compression: false, AllowDirect: true,
	}
}
