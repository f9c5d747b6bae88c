package persist_test

import (
	"context"
	"database/sql"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/persist"
)

// publishSteadily publishes cs in small groups over about `over`, like
// devices reporting, and returns when all are acked by the stream.
// It may run on its own goroutine: it reports with t.Error.
func (j *js) publishSteadily(t *testing.T, cs []coord.Coord, over time.Duration) {
	const groups = 40
	step := (len(cs) + groups - 1) / groups
	for i := 0; i < len(cs); i += step {
		if err := j.publish(cs[i:min(i+step, len(cs))], true); err != nil {
			t.Error(err)
			return
		}
		time.Sleep(over / groups)
	}
}

func gauge(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// outage is what the test saw while the database was away.
type outage struct {
	notReady, dbDown bool
	rowsDuring       int64
}

// TestDatabaseOutageUnderLoadLosesNothing takes the database away while
// coordinates keep arriving and brings it back: nothing is acked while it is
// away (readiness false, ubiqo_persist_db_up 0), and afterwards every
// coordinate is stored once.
//   - SQLite: another connection holds the write lock (BEGIN EXCLUSIVE).
//   - PostgreSQL: a TCP proxy between persister and server is cut (every
//     connection closed, new ones refused), then restored.
func TestDatabaseOutageUnderLoadLosesNothing(t *testing.T) {
	for _, driver := range databases(t) {
		t.Run(driver, func(t *testing.T) {
			d := newDatabase(t, driver)
			var takeAway, bringBack func()
			switch driver {
			case persist.DriverSQLite:
				path := strings.TrimPrefix(d.cfg.DSN, "file:")
				var locker *sql.Conn
				takeAway = func() {
					db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { db.Close() })
					locker, err = db.Conn(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					if _, err := locker.ExecContext(context.Background(), "BEGIN EXCLUSIVE"); err != nil {
						t.Fatal(err)
					}
				}
				bringBack = func() {
					if _, err := locker.ExecContext(context.Background(), "ROLLBACK"); err != nil {
						t.Fatal(err)
					}
					locker.Close()
				}
			case persist.DriverPostgres:
				p, dsn := proxyTo(t, d.cfg.DSN)
				d.cfg.DSN = dsn
				takeAway, bringBack = p.Close, func() { p.Restore(t) }
			}

			j := newJS(t, time.Minute)
			const n, devices = 12000, 300
			cs := make([]coord.Coord, n)
			for i := range cs {
				cs[i] = fleetCoord(i, devices)
			}
			rc := runtimeConfig("persister")
			rc.BatchSize = 100
			rt, _ := runPersister(t, j, d, rc)

			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); j.publishSteadily(t, cs, 4*time.Second) }()

			eventually(t, 20*time.Second, "the first rows", func() bool { return d.count(t) > 500 })
			takeAway()
			cutAt := time.Now()
			var seen outage
			before := d.count(t)
			for time.Since(cutAt) < 3*time.Second {
				if rt.Ready(context.Background()) != nil {
					seen.notReady = true
				}
				if gauge(t, rt.Gatherer(), "ubiqo_persist_db_up") == 0 {
					seen.dbDown = true
				}
				time.Sleep(50 * time.Millisecond)
			}
			seen.rowsDuring = d.count(t) - before
			bringBack()
			wg.Wait()

			eventually(t, 60*time.Second, "every coordinate stored", func() bool { return d.count(t) == n })
			eventually(t, 10*time.Second, "readiness back", func() bool { return rt.Ready(context.Background()) == nil })
			if up := gauge(t, rt.Gatherer(), "ubiqo_persist_db_up"); up != 1 {
				t.Errorf("ubiqo_persist_db_up = %v after the database came back", up)
			}
			distinct := d.query(t, "SELECT count(DISTINCT msg_id) FROM coords")
			t.Logf("%s: %d published under load; %d rows before the outage, %d stored during 3s away (readiness false: %v, db_up 0: %v); after: rows %d, distinct %d, DLQ %d",
				driver, n, before, seen.rowsDuring, seen.notReady, seen.dbDown, d.count(t), distinct, j.dlqCount(t))
			if !seen.notReady || !seen.dbDown {
				t.Errorf("while the database was away: readiness false %v, db_up 0 %v; want both", seen.notReady, seen.dbDown)
			}
			if seen.rowsDuring != 0 {
				t.Errorf("%d rows stored while the database was cut off", seen.rowsDuring)
			}
			if distinct != n || j.dlqCount(t) != 0 {
				t.Errorf("distinct %d (want %d), DLQ %d (want 0)", distinct, n, j.dlqCount(t))
			}
		})
	}
}

// proxyTo puts a TCP proxy between the test and the PostgreSQL server of
// dsn, and returns it with the DSN that goes through it: a real network
// fault for the persister, cut and restored on the same address.
func proxyTo(t *testing.T, dsn string) (*streamtest.Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if u.Hostname() == "" || strings.HasPrefix(u.Hostname(), "/") {
		t.Skipf("%s must name a TCP host for the proxy test", pgEnv)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	p := streamtest.NewProxy(t, target)
	u.Host = p.Addr()
	return p, u.String()
}
