// Command persist is the persister's load run: it starts an in-process
// JetStream server (file storage in a temporary directory), preloads a
// backlog of canonical coordinates into COORDS, then times the persister
// draining that backlog into SQLite and, when a DSN is given, PostgreSQL. Each
// drain runs in a child process (this program with -child), so the peak RSS
// printed is the persister's alone.
//
//	go run ./bench/persist                 # 1,000,000 coordinates, SQLite (+ PostgreSQL if UBIQO_TEST_POSTGRES_DSN)
//	go run ./bench/persist -n 100000 -pg postgres://postgres@127.0.0.1:5432/test?sslmode=disable
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	_ "modernc.org/sqlite"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/persist"
)

type options struct {
	n          int
	devices    int
	pg         string
	sqlite     string
	batch      int
	sync       string
	keep       bool
	only       string
	child      bool
	natsURL    string
	driver     string
	dsn        string
	durable    string
	maxPending int
	cpuProfile string
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 1_000_000, "coordinates to preload and drain")
	flag.IntVar(&o.devices, "devices", 10_000, "devices in the simulated fleet")
	flag.StringVar(&o.pg, "pg", os.Getenv("UBIQO_TEST_POSTGRES_DSN"), "PostgreSQL URL (default $UBIQO_TEST_POSTGRES_DSN); empty = SQLite only. A schema of its own is created and dropped")
	flag.StringVar(&o.sqlite, "sqlite", "", "SQLite file (default: in the temporary directory)")
	flag.IntVar(&o.batch, "batch", config.PersisterBatchSize, "consumer.batch_size (default: the persister's)")
	flag.StringVar(&o.sync, "sqlite-synchronous", "full", "persist.sqlite_synchronous")
	flag.IntVar(&o.maxPending, "max-ack-pending", subscribers.DefaultMaxAckPending, "consumer.max_ack_pending")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory and the PostgreSQL schema")
	flag.StringVar(&o.only, "only", "", "run only sqlite or postgres")
	// Child mode: the persister under test.
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write the persister's CPU profile to this file (suffixed with the driver)")
	flag.BoolVar(&o.child, "child", false, "internal: run the persister until the backlog is drained")
	flag.StringVar(&o.natsURL, "nats", "", "internal: NATS URL")
	flag.StringVar(&o.driver, "driver", "", "internal: persist.driver")
	flag.StringVar(&o.dsn, "dsn", "", "internal: persist.dsn")
	flag.StringVar(&o.durable, "durable", "", "internal: consumer name")
	flag.Parse()

	var err error
	if o.child {
		err = runChild(o)
	} else {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/persist:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "ubiqo-bench-persist-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("data in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx := context.Background()
	env, err := streamtest.StartLoadEnv(ctx, filepath.Join(dir, "nats"), 8192, zerolog.Nop())
	if err != nil {
		return err
	}
	defer env.Close()
	js := env.JS

	fmt.Printf("preloading %d coordinates from %d devices into COORDS (file storage, as the bridge makes it) ...\n", o.n, o.devices)
	began := time.Now()
	bytes, err := preload(js, o.n, o.devices)
	if err != nil {
		return err
	}
	took := time.Since(began)
	fmt.Printf("preloaded in %s: %.0f msgs/s, %.1f MB of bodies (avg %d B)\n", took.Round(time.Millisecond),
		float64(o.n)/took.Seconds(), float64(bytes)/1e6, bytes/int64(o.n))

	if o.only == "none" {
		return drain(o, env.Server.ClientURL(), "none", "", "bench-none", func() (int64, error) { return int64(o.n), nil })
	}
	if o.only == "" || o.only == "sqlite" {
		path := o.sqlite
		if path == "" {
			path = filepath.Join(dir, "coords.db")
		}
		if err := drain(o, env.Server.ClientURL(), persist.DriverSQLite, "file:"+path, "bench-sqlite", func() (int64, error) {
			return countSQLite(path)
		}); err != nil {
			return err
		}
	}
	if o.pg != "" && (o.only == "" || o.only == "postgres") {
		dsn, cleanup, err := pgSchema(ctx, o.pg, o.keep)
		if err != nil {
			return err
		}
		defer cleanup()
		if err := drain(o, env.Server.ClientURL(), persist.DriverPostgres, dsn, "bench-postgres", func() (int64, error) {
			return countPG(ctx, dsn)
		}); err != nil {
			return err
		}
	} else if o.only != "sqlite" {
		fmt.Println("postgres: skipped (no -pg and no UBIQO_TEST_POSTGRES_DSN)")
	}
	return nil
}

// preload publishes n realistic coordinates asynchronously.
func preload(js jetstream.JetStream, n, devices int) (int64, error) {
	var total int64
	var buf []byte
	for i := range n {
		c := benchCoord(i, devices)
		buf = c.AppendJSON(buf[:0])
		m := nats.NewMsg("ubiqo.coords." + c.DeviceID)
		m.Data = append([]byte(nil), buf...)
		m.Header.Set("Content-Type", "application/json")
		m.Header.Set("Ubiqo-Device", c.DeviceID)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		total += int64(len(m.Data))
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			return 0, fmt.Errorf("publish %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		return 0, errors.New("publish acks still pending after 2m")
	}
	return total, nil
}

// benchCoord is fix i of a fleet: device i%devices, every 10 s, with the
// optional measurements, a few attrs and the raw item as a UBIQO-like
// webhook would carry them.
func benchCoord(i, devices int) coord.Coord {
	d := i % devices
	k := i / devices
	dev := fmt.Sprintf("ubq-%06d", d)
	f := func(v float64) *float64 { return &v }
	ts := time.Date(2025, 3, 1, 6, 0, 0, 0, time.UTC).Add(time.Duration(k)*10*time.Second + time.Duration(d)*time.Millisecond)
	lat := 19.2 + float64(d%500)*0.001 + float64(k)*1e-5
	lon := -99.3 + float64(d/500)*0.001 + float64(k)*1e-5
	c := coord.Coord{
		V: coord.Version, DeviceID: dev, TS: ts, ReceivedAt: ts.Add(1500 * time.Millisecond),
		Lat: lat, Lon: lon, AltM: f(2240 + float64(k%40)), SpeedKmh: f(float64((k * 7) % 95)),
		HeadingDeg: f(float64((k * 13) % 360)), AccuracyM: f(3 + float64(k%7)), BatteryPct: f(float64(100 - k%100)),
		Attrs: map[string]any{
			"ignition":    json.Number("1"),
			"odometer_km": json.Number(strconv.Itoa(12000 + k)),
			"satellites":  json.Number(strconv.Itoa(6 + k%6)),
			"employee":    fmt.Sprintf("EMP-%05d", d),
		},
	}
	if k%30 == 0 {
		c.Event = "stop"
	}
	c.Raw = []byte(fmt.Sprintf(`{"imei":"%s","latitud":"%.6f","longitud":"%.6f","fechaHora":"%s","velocidad":"%d","rumbo":%d,"bateria":%d,"ignition":1,"odometer_km":%d,"satellites":%d,"employee":"EMP-%05d"}`,
		dev, lat, lon, ts.Format("2006-01-02 15:04:05"), (k*7)%95, (k*13)%360, 100-k%100, 12000+k, 6+k%6, d))
	return c
}

// drain runs the persister as a child process until the backlog is stored,
// and prints its rate and peak RSS.
func drain(o options, natsURL, driver, dsn, durable string, count func() (int64, error)) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "-child", "-nats", natsURL, "-driver", driver, "-dsn", dsn, "-durable", durable,
		"-n", strconv.Itoa(o.n), "-batch", strconv.Itoa(o.batch), "-sqlite-synchronous", o.sync,
		"-max-ack-pending", strconv.Itoa(o.maxPending))
	if o.cpuProfile != "" {
		cmd.Args = append(cmd.Args, "-cpuprofile", o.cpuProfile+"."+driver)
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	fmt.Printf("%s: draining with the persister (child process, batch %d) ...\n", driver, o.batch)
	if err := cmd.Start(); err != nil {
		return err
	}
	var result string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		result = sc.Text()
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s persister: %w", driver, err)
	}
	var r childResult
	if err := json.Unmarshal([]byte(result), &r); err != nil {
		return fmt.Errorf("%s persister result %q: %w", driver, result, err)
	}
	rows, err := count()
	if err != nil {
		return err
	}
	status := "OK"
	if rows != int64(o.n) {
		status = fmt.Sprintf("MISMATCH: want %d rows", o.n)
	}
	fmt.Printf("%-8s %d rows in %s = %.0f rows/s; persister peak RSS %.1f MB, CPU %.1fs user + %.1fs sys; rows in table %d %s\n",
		driver+":", r.Rows, time.Duration(r.Nanos).Round(time.Millisecond), float64(r.Rows)/time.Duration(r.Nanos).Seconds(),
		float64(r.PeakRSSKB)/1024, r.UserSec, r.SysSec, rows, status)
	return nil
}

type childResult struct {
	Rows      int64   `json:"rows"`
	Nanos     int64   `json:"nanos"`
	PeakRSSKB int64   `json:"peak_rss_kb"`
	UserSec   float64 `json:"user_s"`
	SysSec    float64 `json:"sys_s"`
}

// runChild is the persister under test: the subscriber runtime and
// persist.Run exactly as cmd/persister wires them, stopped (gracefully) once
// the consumer has nothing pending and nothing unacked.
func runChild(o options) error {
	lvl := zerolog.WarnLevel
	if os.Getenv("BENCH_DEBUG") != "" {
		lvl = zerolog.DebugLevel
	}
	log := zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Logger()
	nc, err := nats.Connect(o.natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	rt, err := subscribers.New(js, subscribers.Config{
		Durable: o.durable, BatchSize: o.batch, MaxAckPending: o.maxPending, LagInterval: time.Second,
	}, log)
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	began := time.Now()
	errc := make(chan error, 1)
	go func() {
		if o.driver == "none" {
			// The runtime alone: decode, batch, ack. The ceiling any
			// database write can reach on this machine.
			errc <- rt.RunBatch(ctx, subscribers.BatchHandlerFunc(func(context.Context, []*subscribers.Msg) []error { return nil }))
			return
		}
		errc <- persist.Run(ctx, rt, persist.Config{Driver: o.driver, DSN: o.dsn, SQLiteSynchronous: o.sync}, log)
	}()
	var done time.Time
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
wait:
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("persister stopped early: %w", err)
		case <-t.C:
			c, err := js.Consumer(ctx, "COORDS", o.durable)
			if err != nil {
				continue
			}
			info, err := c.Info(ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= uint64(o.n) {
				done = time.Now()
				break wait
			}
		}
	}
	cancel()
	if err := <-errc; err != nil {
		return err
	}
	user, sys := cpuTimes()
	return json.NewEncoder(os.Stdout).Encode(childResult{
		Rows: int64(o.n), Nanos: done.Sub(began).Nanoseconds(), PeakRSSKB: peakRSSKB(), UserSec: user, SysSec: sys,
	})
}

// peakRSSKB reads VmHWM, the process's peak resident set, in kB.
func peakRSSKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return -1
}

// cpuTimes reads the process's user and system CPU seconds.
func cpuTimes() (user, sys float64) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0, 0
	}
	u, _ := strconv.ParseFloat(fields[11], 64)
	k, _ := strconv.ParseFloat(fields[12], 64)
	return u / 100, k / 100 // clock ticks (USER_HZ = 100 on Linux)
}

func countSQLite(path string) (int64, error) {
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var n int64
	err = db.QueryRow("SELECT count(*) FROM coords").Scan(&n)
	return n, err
}

func countPG(ctx context.Context, dsn string) (int64, error) {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	var n int64
	err = c.QueryRow(ctx, "SELECT count(*) FROM coords").Scan(&n)
	return n, err
}

// pgSchema creates a schema of its own for the run and returns a DSN whose
// search_path points at it.
func pgSchema(ctx context.Context, base string, keep bool) (string, func(), error) {
	c, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", nil, fmt.Errorf("postgres: %w", err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	schema := "ubiqo_bench_" + hex.EncodeToString(b)
	if _, err := c.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		c.Close(ctx)
		return "", nil, err
	}
	u, err := url.Parse(base)
	if err != nil {
		c.Close(ctx)
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	cleanup := func() {
		if !keep {
			_, _ = c.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
		} else {
			fmt.Println("postgres schema kept:", schema)
		}
		c.Close(ctx)
	}
	return u.String(), cleanup, nil
}
