package bridge

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

// metrics are the bridge's Prometheus collectors, registered on a registry
// of their own so several servers can live in one process (tests).
type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	inFlight    prometheus.Gauge
	coords      *prometheus.CounterVec
	publish     prometheus.Histogram
	natsUp      prometheus.Gauge
	streamReady prometheus.Gauge

	replayed, setAside prometheus.Counter

	accepted, duplicate, rejected, spooled prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_bridge_http_requests_total",
			Help: "HTTP requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ubiqo_bridge_http_request_duration_seconds",
			Help:    "Time from request start to response, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ubiqo_bridge_http_requests_in_flight",
			Help: "Requests being served now.",
		}),
		coords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_bridge_coordinates_total",
			Help: "Coordinates received, by result: accepted (newly stored), duplicate (already stored), rejected (invalid), spooled (written to the local spool).",
		}, []string{"result"}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ubiqo_bridge_publish_duration_seconds",
			Help:    "Time to publish one request's coordinates and receive every JetStream ack.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}),
		natsUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ubiqo_bridge_nats_connected",
			Help: "1 while the bridge is connected to NATS.",
		}),
		streamReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ubiqo_bridge_stream_ready",
			Help: "1 while the coordinate stream exists and was reachable at the last check.",
		}),
	}
	m.replayed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ubiqo_bridge_spool_replayed_total",
		Help: "Coordinates replayed from the local spool into JetStream.",
	})
	m.setAside = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ubiqo_bridge_spool_set_aside_total",
		Help: "Spooled coordinates the server refused for their size (max_payload, max_msg_size), moved out of the replay into set-aside.jsonl in the spool directory.",
	})
	m.accepted = m.coords.WithLabelValues("accepted")
	m.spooled = m.coords.WithLabelValues("spooled")
	m.duplicate = m.coords.WithLabelValues("duplicate")
	m.rejected = m.coords.WithLabelValues("rejected")
	reg.MustRegister(m.requests, m.duration, m.inFlight, m.coords, m.publish, m.natsUp, m.streamReady, m.replayed, m.setAside)
	return m
}

// watchSpool exports the spool's backlog.
func (m *metrics) watchSpool(reg *prometheus.Registry, sp *spool.Spool) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ubiqo_bridge_spool_bytes",
			Help: "Bytes in the local spool waiting to be replayed.",
		}, func() float64 { _, b := sp.Stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ubiqo_bridge_spool_records",
			Help: "Coordinates in the local spool waiting to be replayed.",
		}, func() float64 { r, _ := sp.Stats(); return float64(r) }),
	)
}

// watchPublisher exports the acks the publisher awaits, those that came
// too late, and the publishes a lost connection cut off.
func (m *metrics) watchPublisher(reg *prometheus.Registry, p *Publisher) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ubiqo_bridge_publish_pending",
			Help: "Publishes awaiting their JetStream ack now (at most nats.max_pending).",
		}, func() float64 { return float64(p.Pending()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ubiqo_bridge_publish_late_acks_total",
			Help: "JetStream acks that arrived after their request had given up waiting (nats.publish_timeout); those coordinates were spooled or answered 503, and their message ids keep a retry from storing them twice.",
		}, func() float64 { return float64(p.LateAcks()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ubiqo_bridge_publish_cut_off_total",
			Help: "Publishes given up awaiting their JetStream ack because the NATS connection was lost; their coordinates were spooled (202) or answered 503 at once, and a copy the server did store is a duplicate at replay.",
		}, func() float64 { return float64(p.CutOff()) }),
	)
}

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// gaugeValue reads a gauge's current value.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil || m.Gauge == nil {
		return 0
	}
	return m.Gauge.GetValue()
}
