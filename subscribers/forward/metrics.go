package forward

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// metrics are the forwarder's own series, labelled by target. Consumer lag
// (num_pending, num_ack_pending) comes from each target's runtime and is
// served beside them with a target label added (see labelGatherer).
type metrics struct {
	delivered  *prometheus.CounterVec
	retried    *prometheus.CounterVec
	dead       *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	breaker    *prometheus.GaugeVec
	outOfOrder *prometheus.CounterVec
	stale      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_forward_delivered_total",
			Help: "Coordinates the target accepted (2xx).",
		}, []string{"target"}),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_forward_retried_total",
			Help: "Coordinates scheduled for another attempt, by reason (http_<code>, timeout, network).",
		}, []string{"target", "reason"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_forward_dead_lettered_total",
			Help: "Coordinates given up and copied to the DLQ, by reason (http_<code>, max_deliver, max_age, encode).",
		}, []string{"target", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ubiqo_forward_request_duration_seconds",
			Help:    "Duration of requests to the target, by outcome (delivered, retryable, permanent).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"target", "outcome"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ubiqo_forward_breaker_state",
			Help: "Circuit breaker of the target: 0 closed, 1 half-open (probing), 2 open.",
		}, []string{"target"}),
		outOfOrder: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_forward_out_of_order_total",
			Help: "Coordinates that arrived after a newer one of the same device was already sent (two forwarders on one durable, or a crash).",
		}, []string{"target"}),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_forward_stale_redeliveries_total",
			Help: "Redeliveries of coordinates already settled (their ack came after ack_wait), acked and not sent again.",
		}, []string{"target"}),
	}
	reg.MustRegister(m.delivered, m.retried, m.dead, m.latency, m.breaker, m.outOfOrder, m.stale,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (o outcome) String() string {
	switch o {
	case delivered:
		return "delivered"
	case retryable:
		return "retryable"
	default:
		return "permanent"
	}
}

// labelGatherer serves a target runtime's own series (ubiqo_*, already
// labelled consumer="forward-<name>") with target="<name>" added; the Go and
// process series every runtime registry also holds are left out, the
// Service's registry has them once.
type labelGatherer struct {
	g           prometheus.Gatherer
	name, value string
}

func (l labelGatherer) Gather() ([]*dto.MetricFamily, error) {
	fams, err := l.g.Gather()
	out := fams[:0]
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "ubiqo_") {
			continue
		}
		for _, m := range f.Metric {
			has := false
			for _, lp := range m.Label {
				has = has || lp.GetName() == l.name
			}
			if !has {
				name, value := l.name, l.value
				m.Label = append(m.Label, &dto.LabelPair{Name: &name, Value: &value})
				slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
			}
		}
		out = append(out, f)
	}
	return out, err
}
