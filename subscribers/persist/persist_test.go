package persist_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/persist"
)

func runtimeConfig(durable string) subscribers.Config {
	return subscribers.Config{
		Durable: durable, AckWait: 10 * time.Second, BatchSize: 200, BatchWait: 20 * time.Millisecond,
		Backoff:      []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond},
		DrainTimeout: 10 * time.Second, LagInterval: 200 * time.Millisecond,
	}
}

// runPersister runs persist.Run in the background until the test ends (or
// stop is called).
func runPersister(t *testing.T, j *js, d *database, rc subscribers.Config) (rt *subscribers.Runtime, stop func() error) {
	t.Helper()
	rt, err := subscribers.New(j.js, rc, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- persist.Run(ctx, rt, d.cfg, testLog(t)) }()
	done := false
	var runErr error
	stop = func() error {
		if !done {
			done = true
			cancel()
			runErr = <-errc
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return rt, stop
}

// TestEveryCoordinateStoredOnce publishes a fleet's coordinates with every
// kind of duplicate the system produces and checks the table holds exactly
// the unique ones:
//   - the same Nats-Msg-Id published twice within the dedupe window (the
//     stream keeps one message);
//   - the same coordinate published again after the window and without the
//     header (two stream messages, one msg id: the persister derives it);
//   - redeliveries: the first delivery of every batch is committed and then
//     failed, so the server redelivers messages whose rows already exist;
//   - a replay: a second durable reads the whole stream into the same table.
func TestEveryCoordinateStoredOnce(t *testing.T) {
	for _, driver := range databases(t) {
		t.Run(driver, func(t *testing.T) {
			d := newDatabase(t, driver)
			j := newJS(t, 500*time.Millisecond)
			const unique, devices = 3000, 40
			cs := make([]coord.Coord, unique)
			for i := range cs {
				cs[i] = fleetCoord(i, devices)
			}
			j.publishAll(t, cs, true)
			j.publishAll(t, cs[:1000], true) // within the window: dropped by the stream
			time.Sleep(600 * time.Millisecond)
			j.publishAll(t, cs[500:1500], true)   // after the window: stored again
			j.publishAll(t, cs[2000:2500], false) // no header: same derived id
			inStream := j.streamMsgs(t)
			if inStream != unique+1000+500 {
				t.Fatalf("stream holds %d messages, want %d", inStream, unique+1500)
			}

			// The persister, wrapped so that each batch's first delivery is
			// committed and then reported failed: the server redelivers it.
			rt, err := subscribers.New(j.js, runtimeConfig("persister"), testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			p, err := persist.Open(context.Background(), d.cfg, testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			var redelivered atomic.Int64
			h := subscribers.BatchHandlerFunc(func(ctx context.Context, msgs []*subscribers.Msg) []error {
				if res := p.HandleBatch(ctx, msgs); res != nil {
					return res
				}
				out := make([]error, len(msgs))
				for i, m := range msgs {
					if m.NumDelivered == 1 {
						out[i] = errors.New("ack lost")
					} else {
						redelivered.Add(1)
					}
				}
				return out
			})
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- rt.RunBatch(ctx, h) }()
			eventually(t, 60*time.Second, "every message redelivered and acked", func() bool {
				return redelivered.Load() == int64(inStream)
			})
			cancel()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			rows := d.count(t)
			distinct := d.query(t, "SELECT count(DISTINCT msg_id) FROM coords")
			t.Logf("%s: published %d unique coordinates as %d stream messages; %d redelivered; rows %d (distinct msg ids %d)",
				driver, unique, inStream, redelivered.Load(), rows, distinct)
			if rows != unique || distinct != unique {
				t.Fatalf("rows = %d, distinct msg ids = %d, want %d", rows, distinct, unique)
			}

			// A replay of the whole stream on a new durable adds nothing.
			_, stop := runPersister(t, j, d, runtimeConfig("replay"))
			eventually(t, 60*time.Second, "the replay to finish", func() bool {
				c, err := j.js.Consumer(context.Background(), "COORDS", "replay")
				if err != nil {
					return false
				}
				info, err := c.Info(context.Background())
				return err == nil && info.AckFloor.Stream == inStream
			})
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if rows := d.count(t); rows != unique {
				t.Fatalf("after a replay: rows = %d, want %d", rows, unique)
			}
			// The first stream message of a coordinate is the stored one.
			if n := d.query(t, "SELECT count(*) FROM coords WHERE stream_seq > 3000"); n != 0 {
				t.Errorf("%d rows carry the stream sequence of a later copy", n)
			}
			t.Logf("%s: after replaying %d messages on a second durable: rows %d", driver, inStream, d.count(t))
		})
	}
}

// TestRowContent checks a stored row field by field (NUL bytes included,
// which PostgreSQL text cannot hold), and that a row the database refuses is
// dead-lettered alone while the rest of its batch lands.
func TestRowContent(t *testing.T) {
	for _, driver := range databases(t) {
		t.Run(driver, func(t *testing.T) {
			d := newDatabase(t, driver)
			j := newJS(t, time.Minute)
			c := fleetCoord(7, 10)
			c.Event = "panic\x00button" // NUL: PostgreSQL text cannot hold it
			c.Attrs["note"] = "a\x00b"
			c.TSMissing = true
			j.publishAll(t, []coord.Coord{c, fleetCoord(8, 10)}, true)
			runPersister(t, j, d, runtimeConfig("persister"))
			eventually(t, 20*time.Second, "two rows", func() bool { return d.count(t) == 2 })

			var tsCheck string
			switch driver {
			case persist.DriverSQLite:
				tsCheck = fmt.Sprintf("ts = '%s'", c.TS.UTC().Format("2006-01-02T15:04:05.000000000Z"))
			default:
				tsCheck = fmt.Sprintf("ts = '%s'", c.TS.UTC().Format(time.RFC3339Nano))
			}
			q := fmt.Sprintf(`SELECT count(*) FROM coords WHERE msg_id = '%s' AND device_id = 'unit-0007' AND %s
				AND lat = %v AND lon = %v AND alt_m = 2240 AND speed_kmh = 7 AND heading_deg = 7 AND accuracy_m = 4.5
				AND battery_pct = 93 AND ts_missing AND event IS NOT NULL AND attrs IS NOT NULL AND raw IS NOT NULL`,
				c.MsgID(), tsCheck, c.Lat, c.Lon)
			if n := d.query(t, q); n != 1 {
				t.Errorf("row content does not match the coordinate")
			}
			attr := "json_extract(attrs, '$.odometer_km')"
			if driver == persist.DriverPostgres {
				attr = "(attrs->>'odometer_km')::int"
			}
			if n := d.query(t, "SELECT "+attr+" FROM coords WHERE device_id = 'unit-0007'"); n != 10000 {
				t.Errorf("attrs.odometer_km = %d, want 10000", n)
			}

			// An operator's rule makes the database refuse one device's rows.
			rule := `CREATE TRIGGER refuse BEFORE INSERT ON coords WHEN NEW.device_id = 'refused'
				BEGIN SELECT RAISE(ABORT, 'device refused'); END`
			if driver == persist.DriverPostgres {
				rule = `ALTER TABLE coords ADD CONSTRAINT refuse CHECK (device_id <> 'refused')`
			}
			if _, err := d.try(rule); err != nil && !strings.Contains(err.Error(), "no rows") {
				t.Fatal(err)
			}
			batch := make([]coord.Coord, 10)
			for i := range batch {
				batch[i] = fleetCoord(100+i, 1000)
			}
			batch[4].DeviceID = "refused"
			j.publishAll(t, batch, true)
			eventually(t, 20*time.Second, "the nine good rows", func() bool { return d.count(t) == 11 })
			eventually(t, 10*time.Second, "the refused one in the DLQ", func() bool { return j.dlqCount(t) == 1 })
			time.Sleep(300 * time.Millisecond)
			if n := d.count(t); n != 11 {
				t.Errorf("rows = %d, want 11", n)
			}
			t.Logf("%s: batch of 10 with one refused row: rows 2 -> %d, DLQ %d", driver, d.count(t), j.dlqCount(t))
		})
	}
}
