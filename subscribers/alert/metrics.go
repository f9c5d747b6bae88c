package alert

import "github.com/prometheus/client_golang/prometheus"

// metrics are the alerter's Prometheus collectors, served on the
// subscriber runtime's /metrics.
type metrics struct {
	fixes     *prometheus.CounterVec
	alerts    *prometheus.CounterVec
	notify    *prometheus.CounterVec
	conflicts prometheus.Counter
	loads     prometheus.Counter
	writes    prometheus.Counter
	devices   prometheus.GaugeFunc
	scans     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, devices func() float64) *metrics {
	m := &metrics{
		fixes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_alerter_fixes_total",
			Help: "Fixes evaluated, by result: applied (newer than the device's last fix) or stale (out of order or redelivered; no state change).",
		}, []string{"result"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_alerter_alerts_total",
			Help: "Alerts raised, by kind and result: published (stored in ALERTS), duplicate (already in ALERTS), suppressed (replay: alerted before), computed (not published).",
		}, []string{"kind", "result"}),
		notify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_alerter_notifications_total",
			Help: "Notification attempts, by notifier and result: sent, retry, failed (given up).",
		}, []string{"notifier", "result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ubiqo_alerter_state_conflicts_total",
			Help: "Device state writes that lost compare-and-set to another writer and were re-evaluated.",
		}),
		loads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ubiqo_alerter_state_loads_total",
			Help: "Device states read from the DEVICES bucket (cache misses and reloads after conflicts).",
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ubiqo_alerter_state_writes_total",
			Help: "Device states written to the DEVICES bucket.",
		}),
		scans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ubiqo_alerter_offline_scans_total",
			Help: "Offline scans run.",
		}),
		devices: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ubiqo_alerter_devices",
			Help: "Devices whose state this alerter holds in memory.",
		}, devices),
	}
	if reg != nil {
		reg.MustRegister(m.fixes, m.alerts, m.notify, m.conflicts, m.loads, m.writes, m.scans, m.devices)
	}
	return m
}
