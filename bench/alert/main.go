// Command alert is the alerter's load run: fixes per second through 1,000
// circle and 100 polygon geofences (plus overspeed, offline, battery, panic
// and jump rules) for 10,000 devices, measured two ways:
//
//   - engine: the rules engine alone, in memory (alert.Engine.Apply on a
//     State per device): the geometry, the spatial index and every rule,
//     nothing else. Run on one goroutine and on GOMAXPROCS goroutines
//     (devices partitioned), and once more with the State JSON-encoded after
//     every fix (the CPU cost of a KV write, without the write).
//
//   - e2e: the alerter binary's path: an in-process JetStream server (file
//     storage in a temporary directory) is preloaded with the fixes in
//     COORDS, then alert.New(...).Run drains them: consume (pull, batches of
//     500), decode, evaluate, one compare-and-set write of the device's
//     state to KV DEVICES per device per batch, alerts published to ALERTS,
//     acks. The server shares the machine's cores with the alerter.
//
//     go run ./bench/alert                        # both, 10,000 devices × 20 fixes
//     go run ./bench/alert -mode engine -rounds 100
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/alert"
)

type options struct {
	mode     string
	devices  int
	rounds   int
	circles  int
	polygons int
	batch    int
	area     float64
	seed     uint64
	cpuprof  string
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "all", "engine, e2e or all")
	flag.IntVar(&o.devices, "devices", 10000, "devices")
	flag.IntVar(&o.rounds, "rounds", 20, "fixes per device (one every 10 s of fix time)")
	flag.IntVar(&o.circles, "circles", 1000, "circle geofences")
	flag.IntVar(&o.polygons, "polygons", 100, "polygon geofences (octagons, every third with a hole)")
	flag.IntVar(&o.batch, "batch", 500, "e2e: consumer batch size")
	flag.Float64Var(&o.area, "area", 0.3, "side in degrees of the square (from 20.45 N, 100.55 W) holding the zones and the fleet; 0.3 is the Querétaro metro area (dense: a third of the fixes alert)")
	flag.Uint64Var(&o.seed, "seed", 1, "random seed")
	flag.StringVar(&o.cpuprof, "cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/alert:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	maxLat, maxLon = minLat+o.area, minLon+o.area
	dir, err := os.MkdirTemp("", "ubiqo-bench-alert-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rulesFile, err := writeRules(dir, o)
	if err != nil {
		return err
	}
	rules, err := alert.LoadRules(rulesFile)
	if err != nil {
		return err
	}
	fixes := fleet(o)
	fmt.Printf("alerter load run: %d devices × %d fixes = %d fixes over %.2f°×%.2f°; rules %v; GOMAXPROCS %d, %s\n",
		o.devices, o.rounds, len(fixes), o.area, o.area, rules.Counts(), runtime.GOMAXPROCS(0), runtime.Version())
	if o.cpuprof != "" {
		f, err := os.Create(o.cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if o.mode == "engine" || o.mode == "all" {
		engine(rules, fixes, o)
	}
	if o.mode == "e2e" || o.mode == "all" {
		if err := e2e(rules, fixes, dir, o); err != nil {
			return err
		}
	}
	return nil
}

// The area holding the zones and the fleet: from the south-west corner of
// the Querétaro metro area, -area degrees a side.
const minLat, minLon = 20.45, -100.55

var maxLat, maxLon = minLat + 0.3, minLon + 0.3

func writeRules(dir string, o options) (string, error) {
	rng := rand.New(rand.NewPCG(o.seed, 99))
	var b strings.Builder
	b.WriteString("version: 1\nhysteresis_m: 20\nrules:\n")
	for i := 0; i < o.circles; i++ {
		fmt.Fprintf(&b, "  - {name: c%04d, type: geofence, circle: {lat: %.6f, lon: %.6f, radius_m: %.0f}}\n",
			i, minLat+rng.Float64()*(maxLat-minLat), minLon+rng.Float64()*(maxLon-minLon), 80+rng.Float64()*520)
	}
	ring := func(lat, lon, r float64, n int) string {
		var pts []string
		for k := 0; k <= n; k++ {
			a := 2 * math.Pi * float64(k%n) / float64(n)
			rr := r * (0.8 + 0.4*rng.Float64())
			if k == n {
				return strings.Join(append(pts, pts[0]), ", ")
			}
			dLat := rr * math.Sin(a) / 111195
			dLon := rr * math.Cos(a) / (111195 * math.Cos(lat*math.Pi/180))
			pts = append(pts, fmt.Sprintf("[%.6f, %.6f]", lon+dLon, lat+dLat))
		}
		return strings.Join(pts, ", ")
	}
	for i := 0; i < o.polygons; i++ {
		lat, lon := minLat+rng.Float64()*(maxLat-minLat), minLon+rng.Float64()*(maxLon-minLon)
		r := 300 + rng.Float64()*1700
		fmt.Fprintf(&b, "  - name: p%03d\n    type: geofence\n    polygon:\n      - [%s]\n", i, ring(lat, lon, r, 8))
		if i%3 == 0 {
			fmt.Fprintf(&b, "      - [%s]\n", ring(lat, lon, r/4, 6))
		}
	}
	b.WriteString(`  - {name: speed, type: overspeed, limit_kmh: 90, min_duration: 30s, clear_margin_kmh: 5}
  - {name: silent, type: offline, after: 15m}
  - {name: battery, type: battery, below_pct: 15, clear_margin_pct: 5}
  - {name: sos, type: panic, events: [SOS]}
  - {name: glitch, type: jump, max_speed_kmh: 250}
`)
	f := filepath.Join(dir, "rules.yaml")
	return f, os.WriteFile(f, []byte(b.String()), 0o600)
}

// fleet drives every device in a straight line with small turns, 20 to
// 110 km/h, one fix every 10 s; batteries drain; rare SOS events and GPS
// glitches. Fixes come round by round (all devices, then all again), as a
// live fleet reports.
func fleet(o options) []coord.Coord {
	rng := rand.New(rand.NewPCG(o.seed, 7))
	type dev struct {
		id                    string
		lat, lon, hdg, v, bat float64
	}
	devs := make([]dev, o.devices)
	for i := range devs {
		devs[i] = dev{id: fmt.Sprintf("UNIT-%05d", i), lat: minLat + rng.Float64()*(maxLat-minLat), lon: minLon + rng.Float64()*(maxLon-minLon),
			hdg: rng.Float64() * 2 * math.Pi, v: 20 + rng.Float64()*90, bat: 10 + rng.Float64()*90}
	}
	t0 := time.Now().Add(-time.Duration(o.rounds) * 10 * time.Second).UTC().Truncate(time.Second)
	out := make([]coord.Coord, 0, o.devices*o.rounds)
	for r := 0; r < o.rounds; r++ {
		ts := t0.Add(time.Duration(r) * 10 * time.Second)
		for i := range devs {
			d := &devs[i]
			d.hdg += (rng.Float64() - 0.5) * 0.5
			d.v = math.Max(0, math.Min(130, d.v+(rng.Float64()-0.5)*20))
			step := d.v / 3.6 * 10
			d.lat += step * math.Sin(d.hdg) / 111195
			d.lon += step * math.Cos(d.hdg) / (111195 * math.Cos(d.lat*math.Pi/180))
			if d.lat < minLat || d.lat > maxLat || d.lon < minLon || d.lon > maxLon {
				d.hdg += math.Pi
			}
			d.bat = math.Max(0, d.bat-rng.Float64()*0.3)
			v, bat := d.v, d.bat
			c := coord.Coord{V: 1, DeviceID: d.id, TS: ts, ReceivedAt: ts, Lat: d.lat, Lon: d.lon, SpeedKmh: &v, BatteryPct: &bat}
			if rng.IntN(20000) == 0 {
				c.Event = "SOS"
			}
			if rng.IntN(50000) == 0 { // glitch: 50 km north
				c.Lat += 0.45
			}
			out = append(out, c)
		}
	}
	return out
}

func engine(rules *alert.Rules, fixes []coord.Coord, o options) {
	e := alert.NewEngine(rules)
	pass := func(workers int, encode bool) (time.Duration, map[string]int) {
		states := make([]map[string]*alert.State, workers)
		for i := range states {
			states[i] = make(map[string]*alert.State, o.devices/workers+1)
		}
		counts := make([]map[string]int, workers)
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				counts[w] = map[string]int{}
				var buf []alert.Alert
				for i := range fixes {
					c := &fixes[i]
					if workers > 1 && (i%o.devices)%workers != w { // device index = i mod devices
						continue
					}
					st := states[w][c.DeviceID]
					if st == nil {
						st = alert.NewState(c.DeviceID)
						states[w][c.DeviceID] = st
					}
					buf, _ = e.Apply(buf[:0], st, c)
					for _, a := range buf {
						counts[w][a.Kind]++
					}
					if encode {
						_, _ = json.Marshal(st)
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		total := map[string]int{}
		for _, c := range counts {
			for k, v := range c {
				total[k] += v
			}
		}
		return el, total
	}
	p := runtime.GOMAXPROCS(0)
	for _, run := range []struct {
		name    string
		workers int
		encode  bool
	}{
		{"engine, 1 goroutine", 1, false},
		{fmt.Sprintf("engine, %d goroutines", p), p, false},
		{fmt.Sprintf("engine + state JSON per fix, %d goroutines", p), p, true},
	} {
		runtime.GC()
		el, kinds := pass(run.workers, run.encode)
		fmt.Printf("%-45s %9.0f fixes/s  (%d fixes in %v; alerts %s)\n", run.name, float64(len(fixes))/el.Seconds(), len(fixes), el.Round(time.Millisecond), fmtCounts(kinds))
	}
}

func e2e(rules *alert.Rules, fixes []coord.Coord, dir string, o options) error {
	ctx := context.Background()
	env, err := streamtest.StartLoadEnv(ctx, filepath.Join(dir, "nats"), 4096, zerolog.Nop())
	if err != nil {
		return err
	}
	defer env.Close()
	js := env.JS
	start := time.Now()
	for i := range fixes {
		c := &fixes[i]
		m := nats.NewMsg(string(coord.AppendToken([]byte("ubiqo.coords."), c.DeviceID)))
		m.Data = c.AppendJSON(nil)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		if _, err := js.PublishMsgAsync(m); err != nil {
			return err
		}
		if i%2000 == 1999 {
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("preload did not complete")
	}
	fmt.Printf("%-45s %9.0f fixes/s  (preloading COORDS, not the alerter)\n", "publish", float64(len(fixes))/time.Since(start).Seconds())

	cfg := alert.Config{
		Rules:         rules,
		Consumer:      subscribers.Config{Durable: "alerter", BatchSize: o.batch, BatchWait: 20 * time.Millisecond, LagInterval: time.Second},
		ManageStreams: true,
		ScanInterval:  time.Minute,
	}
	a, err := alert.New(js, cfg, zerolog.Nop())
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- a.Run(runCtx) }()
	for {
		time.Sleep(20 * time.Millisecond)
		cons, err := js.Consumer(ctx, "COORDS", "alerter")
		if err != nil {
			continue
		}
		ci, err := cons.Info(ctx)
		if err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 && ci.AckFloor.Stream >= uint64(len(fixes)) {
			break
		}
		select {
		case err := <-done:
			cancel()
			return fmt.Errorf("alerter stopped: %v", err)
		default:
		}
	}
	el := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		return err
	}
	s, err := js.Stream(ctx, stream.AlertsStream)
	if err != nil {
		return err
	}
	info, _ := s.Info(ctx)
	m := gather(a.Runtime().Gatherer())
	fmt.Printf("%-45s %9.0f fixes/s  (%d fixes in %v incl. start-up; %d alerts in ALERTS; %0.f KV writes, %0.f CAS conflicts)\n",
		fmt.Sprintf("e2e alerter (KV per device per batch of %d)", o.batch), float64(len(fixes))/el.Seconds(), len(fixes), el.Round(time.Millisecond),
		info.State.Msgs, m["ubiqo_alerter_state_writes_total"], m["ubiqo_alerter_state_conflicts_total"])
	return nil
}

func gather(g prometheus.Gatherer) map[string]float64 {
	out := map[string]float64{}
	mfs, err := g.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if c := m.GetCounter(); c != nil {
				out[mf.GetName()] += c.GetValue()
			}
		}
	}
	return out
}

func fmtCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}
