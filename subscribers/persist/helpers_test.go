package persist_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	_ "modernc.org/sqlite"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/persist"
)

const pgEnv = "UBIQO_TEST_POSTGRES_DSN"

// database is one test database: its persister configuration and a way to
// count what landed.
type database struct {
	name string
	cfg  persist.Config
	// query runs a single-value query on the database, from outside the
	// persister.
	query func(t *testing.T, q string) int64
	// try is query returning the error instead of failing the test.
	try func(q string) (int64, error)
}

// databases returns SQLite always and PostgreSQL when UBIQO_TEST_POSTGRES_DSN is set.
func databases(t *testing.T) []string {
	out := []string{persist.DriverSQLite}
	if os.Getenv(pgEnv) != "" {
		out = append(out, persist.DriverPostgres)
	} else {
		t.Logf("%s not set: PostgreSQL cases skipped", pgEnv)
	}
	return out
}

func newDatabase(t *testing.T, driver string) *database {
	t.Helper()
	switch driver {
	case persist.DriverSQLite:
		return newSQLite(t)
	case persist.DriverPostgres:
		return newPostgres(t, os.Getenv(pgEnv))
	}
	t.Fatalf("driver %s", driver)
	return nil
}

func newSQLite(t *testing.T) *database {
	t.Helper()
	// A directory that does not exist yet: the persister creates it.
	path := filepath.Join(t.TempDir(), "data", "coords.db")
	d := &database{name: "sqlite", cfg: persist.Config{Driver: persist.DriverSQLite, DSN: "file:" + path,
		WriteTimeout: 5 * time.Second, BusyTimeout: 200 * time.Millisecond}}
	d.try = func(q string) (int64, error) {
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
		if err != nil {
			return 0, err
		}
		defer db.Close()
		var n int64
		err = db.QueryRow(q).Scan(&n)
		return n, err
	}
	d.query = queryVia(d.try)
	return d
}

// newPostgres gives the test a schema of its own (search_path), dropped at the end.
func newPostgres(t *testing.T, base string) *database {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect %s: %v", pgEnv, err)
	}
	t.Cleanup(func() { admin.Close(ctx) })
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	schema := "ubiqo_test_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	if _, err := admin.Exec(ctx, "SET search_path TO "+schema); err != nil {
		t.Fatal(err)
	}
	dsn := withParam(t, base, "search_path", schema)
	d := &database{name: "postgres", cfg: persist.Config{Driver: persist.DriverPostgres, DSN: dsn,
		WriteTimeout: 5 * time.Second}}
	d.try = func(q string) (int64, error) {
		var n int64
		err := admin.QueryRow(ctx, q).Scan(&n)
		return n, err
	}
	d.query = queryVia(d.try)
	return d
}

func withParam(t *testing.T, dsn, k, v string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		t.Fatalf("%s must be a postgres:// URL", pgEnv)
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

func queryVia(try func(string) (int64, error)) func(*testing.T, string) int64 {
	return func(t *testing.T, q string) int64 {
		t.Helper()
		n, err := try(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
}

// count is the number of rows in coords; -1 while the table does not exist.
func (d *database) count(t *testing.T) int64 {
	n, err := d.try("SELECT count(*) FROM coords")
	if err != nil {
		return -1
	}
	return n
}

// js is a real JetStream server with the COORDS and DLQ streams.
type js struct {
	srv *streamtest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

func newJS(t *testing.T, dupWindow time.Duration) *js {
	t.Helper()
	srv := streamtest.Run(t)
	nc, j := streamtest.Connect(t, srv)
	ctx := context.Background()
	coords := streamtest.Coords()
	coords.DuplicateWindow = dupWindow // short: tests publish duplicates beyond it
	if _, err := stream.Ensure(ctx, j, coords.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Ensure(ctx, j, stream.DLQConfig(1)); err != nil {
		t.Fatal(err)
	}
	return &js{srv: srv, nc: nc, js: j}
}

// fleetCoord is coordinate i of a fleet of `devices` devices, with the
// optional fields and attrs a real device sends.
func fleetCoord(i, devices int) coord.Coord {
	dev := fmt.Sprintf("unit-%04d", i%devices)
	n := i / devices
	f := func(v float64) *float64 { return &v }
	c := coord.Coord{
		V: coord.Version, DeviceID: dev,
		TS:         time.Date(2025, 3, 1, 6, 0, 0, 0, time.UTC).Add(time.Duration(n)*10*time.Second + time.Duration(i%devices)*time.Millisecond),
		ReceivedAt: time.Date(2025, 3, 1, 6, 0, 2, 0, time.UTC).Add(time.Duration(n) * 10 * time.Second),
		Lat:        19.4 + float64(i%997)*1e-4, Lon: -99.1 - float64(i%991)*1e-4,
		AltM: f(2240), SpeedKmh: f(float64(i % 90)), HeadingDeg: f(float64(i % 360)), AccuracyM: f(4.5), BatteryPct: f(float64(100 - i%100)),
		Attrs: map[string]any{"ignition": i%2 == 0, "odometer_km": float64(10000 + n), "driver": "Pérez"},
	}
	if i%50 == 0 {
		c.Event = "stop"
	}
	c.Raw = []byte(fmt.Sprintf(`{"imei":%q,"lat":"%.4f","lng":"%.4f"}`, dev, c.Lat, c.Lon))
	return c
}

// publishAll publishes coordinates asynchronously with the contract's headers;
// withID=false leaves the Nats-Msg-Id out (the persister then derives it).
func (j *js) publishAll(t *testing.T, cs []coord.Coord, withID bool) {
	t.Helper()
	if err := j.publish(cs, withID); err != nil {
		t.Fatal(err)
	}
}

func (j *js) publish(cs []coord.Coord, withID bool) error {
	for _, c := range cs {
		tok, err := coord.Token(c.DeviceID)
		if err != nil {
			return err
		}
		m := nats.NewMsg("ubiqo.coords." + tok)
		m.Data = c.AppendJSON(nil)
		m.Header.Set("Content-Type", "application/json")
		m.Header.Set("Ubiqo-Device", c.DeviceID)
		if withID {
			m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		}
		if _, err := j.js.PublishMsgAsync(m, jetstream.WithStallWait(10*time.Second)); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	}
	select {
	case <-j.js.PublishAsyncComplete():
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("publish acks did not arrive")
	}
}

func (j *js) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	s, err := j.js.Stream(context.Background(), "COORDS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testLog(t *testing.T) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	}
	return zerolog.Nop()
}

func (j *js) dlqCount(t *testing.T) uint64 {
	t.Helper()
	s, err := j.js.Stream(context.Background(), "DLQ")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func consumerInfo(j *js, durable string) (*jetstream.ConsumerInfo, error) {
	c, err := j.js.Consumer(context.Background(), "COORDS", durable)
	if err != nil {
		return nil, err
	}
	return c.Info(context.Background())
}
