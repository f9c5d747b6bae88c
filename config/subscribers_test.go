package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestConsumerDefaults(t *testing.T) {
	l, _, err := load(t, Persister)
	if err != nil {
		t.Fatal(err)
	}
	c := l.Consumer
	if got := c.DurableFor(Persister); got != "persister" {
		t.Errorf("durable = %q, want persister", got)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute}
	if !reflect.DeepEqual(c.Backoff, want) {
		t.Errorf("backoff = %v, want %v", c.Backoff, want)
	}
	if c.AckWait != 30*time.Second || c.MaxDeliver != -1 || c.MaxAckPending != 10000 ||
		c.BatchSize != PersisterBatchSize || c.BatchWait != 200*time.Millisecond || c.DeliverPolicy != "all" {
		t.Errorf("defaults: %+v", c)
	}
	// The other subscribers keep 500: the alerter writes device state per
	// batch, the forwarder batches per target.
	t.Setenv("UBIQO_FORWARD_TARGETS_JSON", `[{"name":"t","url":"http://127.0.0.1:1/x"}]`)
	for _, b := range []Binary{Alerter, Forwarder} {
		o, _, err := load(t, b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if o.Consumer.BatchSize != 500 {
			t.Errorf("%s consumer.batch_size default %d, want 500", b, o.Consumer.BatchSize)
		}
	}
	if l.HTTP.Addr != "" {
		t.Errorf("subscriber http.addr default = %q, want empty (off)", l.HTTP.Addr)
	}
	if l.Persist.SQLiteSynchronous != "full" || l.Persist.MaxConns != 4 {
		t.Errorf("persist defaults: %+v", l.Persist)
	}
}

func TestConsumerFromEnvAndFlags(t *testing.T) {
	t.Setenv("UBIQO_CONSUMER_BACKOFF", "100ms,3s")
	t.Setenv("UBIQO_CONSUMER_FILTER_SUBJECTS", "ubiqo.coords.a,ubiqo.coords.b")
	l, _, err := load(t, Alerter, "--consumer.durable=alerter-replay", "--consumer.deliver_policy=by_start_time",
		"--consumer.start_time=2025-01-31T06:00:00-06:00", "--consumer.max_deliver=5")
	if err != nil {
		t.Fatal(err)
	}
	c := l.Consumer
	if !reflect.DeepEqual(c.Backoff, []time.Duration{100 * time.Millisecond, 3 * time.Second}) {
		t.Errorf("backoff from env = %v", c.Backoff)
	}
	if !reflect.DeepEqual(c.FilterSubjects, []string{"ubiqo.coords.a", "ubiqo.coords.b"}) {
		t.Errorf("filter subjects = %q", c.FilterSubjects)
	}
	if c.DurableFor(Alerter) != "alerter-replay" || c.MaxDeliver != 5 {
		t.Errorf("flags lost: %+v", c)
	}
	if got, want := c.StartAt(), time.Date(2025, 1, 31, 12, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("start = %v, want %v", got, want)
	}
}

func TestConsumerValidation(t *testing.T) {
	tests := []struct {
		name string
		bin  Binary
		env  map[string]string
		want []string
	}{
		{"max deliver zero", Persister, map[string]string{"UBIQO_CONSUMER_MAX_DELIVER": "0"}, []string{"consumer.max_deliver"}},
		{"bad backoff", Forwarder, map[string]string{"UBIQO_CONSUMER_BACKOFF": "1s,soon"}, []string{"consumer.backoff"}},
		{"negative backoff", Persister, map[string]string{"UBIQO_CONSUMER_BACKOFF": "1s,-2s"}, []string{"consumer.backoff", "positive"}},
		{"batch beyond pending", Persister, map[string]string{"UBIQO_CONSUMER_BATCH_SIZE": "20000"}, []string{"consumer.batch_size", "max_ack_pending"}},
		{"policy", Alerter, map[string]string{"UBIQO_CONSUMER_DELIVER_POLICY": "yesterday"}, []string{"consumer.deliver_policy"}},
		{"start time missing", Alerter, map[string]string{"UBIQO_CONSUMER_DELIVER_POLICY": "by_start_time"}, []string{"consumer.start_time", "must be set"}},
		{"start time bad", Alerter, map[string]string{"UBIQO_CONSUMER_DELIVER_POLICY": "by_start_time", "UBIQO_CONSUMER_START_TIME": "monday"}, []string{"consumer.start_time", "RFC 3339"}},
		{"durable name", Persister, map[string]string{"UBIQO_CONSUMER_DURABLE": "per.sister"}, []string{"consumer.durable"}},
		{"synchronous", Persister, map[string]string{"UBIQO_PERSIST_SQLITE_SYNCHRONOUS": "off"}, []string{"persist.sqlite_synchronous"}},
		{"write timeout vs ack wait", Persister, map[string]string{"UBIQO_PERSIST_WRITE_TIMEOUT": "1m"}, []string{"persist.write_timeout", "consumer.ack_wait"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, _, err := load(t, tt.bin)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	// The bridge does not consume: a consumer value it never reads is not its error.
	t.Setenv("UBIQO_CONSUMER_MAX_DELIVER", "0")
	if _, _, err := load(t, Bridge); err != nil {
		t.Errorf("bridge rejected a consumer key it does not use: %v", err)
	}
}
