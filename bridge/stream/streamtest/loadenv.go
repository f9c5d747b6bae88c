package streamtest

import (
	"context"
	"errors"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// LoadEnv is an embedded JetStream server with the COORDS and DLQ streams
// made as the bridge makes them, and a connection to it: what the load
// programs under bench/ (outside tests) run against.
type LoadEnv struct {
	Server *server.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
}

// StartLoadEnv starts the server storing under dir on a random loopback
// port, connects with room for asyncMaxPending asynchronous publishes, and
// ensures the streams. Close releases it all.
func StartLoadEnv(ctx context.Context, dir string, asyncMaxPending int, log zerolog.Logger) (*LoadEnv, error) {
	srv, err := stream.StartEmbedded(stream.EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: dir}, log)
	if err != nil {
		return nil, err
	}
	e := &LoadEnv{Server: srv}
	if e.NC, err = nats.Connect(srv.ClientURL()); err != nil {
		e.Close()
		return nil, err
	}
	if e.JS, err = jetstream.New(e.NC, jetstream.WithPublishAsyncMaxPending(asyncMaxPending)); err != nil {
		e.Close()
		return nil, err
	}
	_, err = stream.Ensure(ctx, e.JS, Coords().StreamConfig())
	if err == nil {
		_, err = stream.Ensure(ctx, e.JS, stream.DLQConfig(1))
	}
	if err != nil {
		e.Close()
		return nil, errors.Join(errors.New("create the streams"), err)
	}
	return e, nil
}

// Close closes the connection and shuts the server down.
func (e *LoadEnv) Close() {
	if e.NC != nil {
		e.NC.Close()
	}
	e.Server.Shutdown()
	e.Server.WaitForShutdown()
}
