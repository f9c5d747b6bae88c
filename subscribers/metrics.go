package subscribers

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the runtime's collectors, every one labelled with the
// consumer (a constant label: one runtime, one consumer).
type metrics struct {
	acked, retried, deadLettered prometheus.Counter
	redelivered                  prometheus.Counter
	handlerErrors                *prometheus.CounterVec
	settleErrors                 *prometheus.CounterVec
	batchSeconds                 prometheus.Histogram
	batchSize                    prometheus.Histogram
	pending, ackPending          prometheus.Gauge
	dlq                          prometheus.Gauge
	unsettled                    prometheus.Gauge
	pullErrors                   prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, consumer string) *metrics {
	labels := prometheus.Labels{"consumer": consumer}
	processed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "ubiqo_subscriber_messages_total",
		Help:        "Messages settled, by outcome: acked, retried (nak with delay) or dead_lettered (copied to the DLQ and terminated).",
		ConstLabels: labels,
	}, []string{"outcome"})
	m := &metrics{
		acked:        processed.WithLabelValues("acked"),
		retried:      processed.WithLabelValues("retried"),
		deadLettered: processed.WithLabelValues("dead_lettered"),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "ubiqo_subscriber_redelivered_total",
			Help:        "Messages received that had been delivered before (delivery count > 1).",
			ConstLabels: labels,
		}),
		handlerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "ubiqo_subscriber_handler_errors_total",
			Help:        "Failed message outcomes, by kind: retryable or permanent (permanent includes invalid bodies).",
			ConstLabels: labels,
		}, []string{"kind"}),
		settleErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "ubiqo_subscriber_settle_errors_total",
			Help:        "Settlements that could not be sent, by operation: ack, nak, term, dead_letter.",
			ConstLabels: labels,
		}, []string{"op"}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "ubiqo_subscriber_batch_duration_seconds",
			Help:        "Time from handing a batch (async: one message) to the handler until it was settled.",
			ConstLabels: labels,
			Buckets:     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "ubiqo_subscriber_batch_messages",
			Help:        "Messages per batch handed to a batch handler.",
			ConstLabels: labels,
			Buckets:     []float64{1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000},
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "ubiqo_subscriber_pending_messages",
			Help:        "Consumer lag: messages in the stream not yet delivered to the consumer (num_pending, read from the server).",
			ConstLabels: labels,
		}),
		ackPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "ubiqo_subscriber_ack_pending_messages",
			Help:        "Messages delivered and not yet acknowledged (num_ack_pending, read from the server).",
			ConstLabels: labels,
		}),
		dlq: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "ubiqo_subscriber_dlq_messages",
			Help:        "Messages in the DLQ stream, every consumer's (read from the server with the lag; 0 while the stream does not exist). Non-zero means dead letters wait to be re-driven or purged.",
			ConstLabels: labels,
		}),
		pullErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "ubiqo_subscriber_pull_errors_total",
			Help:        "Pull requests that failed other than by timing out on an idle stream (no responders, disconnected, ...). Increasing steadily means nothing is being consumed.",
			ConstLabels: labels,
		}),
		unsettled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "ubiqo_subscriber_unsettled_messages",
			Help:        "Messages this process holds and has not settled yet.",
			ConstLabels: labels,
		}),
	}
	// Touch the label values so every series is exported from the start.
	for _, k := range []string{"retryable", "permanent"} {
		m.handlerErrors.WithLabelValues(k)
	}
	for _, op := range []string{"ack", "nak", "term", "dead_letter"} {
		m.settleErrors.WithLabelValues(op)
	}
	reg.MustRegister(processed, m.redelivered, m.handlerErrors, m.settleErrors, m.batchSeconds,
		m.batchSize, m.pending, m.ackPending, m.dlq, m.unsettled, m.pullErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
