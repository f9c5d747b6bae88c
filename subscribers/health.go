package subscribers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readyCheckTimeout bounds each ReadyCheck of one /readyz request.
const readyCheckTimeout = 2 * time.Second

// health answers /healthz and /readyz.
type health struct {
	nc *nats.Conn

	mu       sync.Mutex
	consumer error // nil once the durable exists, as last seen
	pull     error // non-nil while pull requests keep failing
	checks   map[string]ReadyCheck
}

var errConsumerNotSetUp = errors.New("consumer not set up yet")

func newHealth(nc *nats.Conn) *health {
	return &health{nc: nc, consumer: errConsumerNotSetUp, checks: map[string]ReadyCheck{}}
}

func (h *health) add(name string, check ReadyCheck) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = check
}

func (h *health) pullFailing(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pull = err
}

func (h *health) consumerOK(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.consumer = err
}

// status runs every check; the map holds "ok" or the error per check.
func (h *health) status(ctx context.Context) (map[string]string, error) {
	h.mu.Lock()
	consumerErr := h.consumer
	if consumerErr == nil {
		consumerErr = h.pull
	}
	names := make([]string, 0, len(h.checks))
	for n := range h.checks {
		names = append(names, n)
	}
	checks := make(map[string]ReadyCheck, len(h.checks))
	for n, c := range h.checks {
		checks[n] = c
	}
	h.mu.Unlock()
	sort.Strings(names)

	out := map[string]string{}
	var errs []error
	record := func(name string, err error) {
		if err != nil {
			out[name] = err.Error()
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return
		}
		out[name] = "ok"
	}
	var natsErr error
	if h.nc == nil || !h.nc.IsConnected() {
		natsErr = errors.New("not connected")
		if h.nc != nil {
			natsErr = fmt.Errorf("not connected (%s)", h.nc.Status())
		}
	}
	record("nats", natsErr)
	record("consumer", consumerErr)
	for _, n := range names {
		cctx, cancel := context.WithTimeout(ctx, readyCheckTimeout)
		err := checks[n](cctx)
		cancel()
		record(n, err)
	}
	return out, errors.Join(errs...)
}

func (h *health) ready(ctx context.Context) error {
	_, err := h.status(ctx)
	return err
}

func (h *health) handler(reg *prometheus.Registry, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		checks, err := h.status(req.Context())
		body := struct {
			Ready  bool              `json:"ready"`
			Checks map[string]string `json:"checks"`
		}{err == nil, checks}
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if withPprof {
		MountPprof(mux)
	}
	return mux
}

// MountPprof serves /debug/pprof on mux: the named profiles, the CPU profile,
// the trace and symbols for go tool pprof. Not /debug/pprof/cmdline: the
// command line may hold secrets given as flags.
func MountPprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not served: the command line may hold secrets", http.StatusNotFound)
	})
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
