package config

import (
	"fmt"
	"strings"
	"time"
)

// Consumer configures the durable JetStream consumer every subscriber
// binary (persister, alerter, forwarder) runs on COORDS. Its keys are
// appended to Keys in init and its checks to extraValidators, so this file is
// the whole section.
type Consumer struct {
	// Durable is the consumer name; empty = the binary's (persister,
	// alerter; the forwarder names its consumers forward-<target>).
	Durable        string          `mapstructure:"durable"`
	FilterSubjects []string        `mapstructure:"filter_subjects"`
	AckWait        time.Duration   `mapstructure:"ack_wait"`
	MaxDeliver     int             `mapstructure:"max_deliver"`
	MaxAckPending  int             `mapstructure:"max_ack_pending"`
	Backoff        []time.Duration `mapstructure:"backoff"`
	BatchSize      int             `mapstructure:"batch_size"`
	BatchWait      time.Duration   `mapstructure:"batch_wait"`
	DeliverPolicy  string          `mapstructure:"deliver_policy"`
	// StartTime is RFC 3339; used with deliver_policy by_start_time. See
	// StartAt.
	StartTime    string        `mapstructure:"start_time"`
	DrainTimeout time.Duration `mapstructure:"drain_timeout"`
	LagInterval  time.Duration `mapstructure:"lag_interval"`
}

// DurableFor returns the durable consumer name binary b uses: consumer.durable
// when set, otherwise the binary's name.
func (c Consumer) DurableFor(b Binary) string {
	if c.Durable != "" {
		return c.Durable
	}
	return string(b)
}

// StartAt returns consumer.start_time parsed; the zero time when it is empty.
// Validate has checked that it parses.
func (c Consumer) StartAt() time.Time {
	t, err := time.Parse(time.RFC3339Nano, c.StartTime)
	if err != nil {
		return time.Time{}
	}
	return t
}

// DeliverPolicies are the accepted values of consumer.deliver_policy.
var DeliverPolicies = []string{"all", "new", "last", "last_per_subject", "by_start_time"}

func init() {
	sub := subscribers
	Keys = append(Keys, []Key{
		{Name: "consumer.durable", Default: "", Usage: "durable consumer name; empty = the binary's name (the forwarder uses forward-<target>)", Only: sub},
		{Name: "consumer.filter_subjects", Default: []string{}, Usage: "consume only these subjects (wildcards allowed); empty = the whole stream", Only: sub},
		{Name: "consumer.ack_wait", Default: 30 * time.Second, Usage: "how long the server waits for an ack before it redelivers", Only: sub},
		{Name: "consumer.max_deliver", Default: -1, Usage: "deliveries before a message that keeps failing is dead-lettered; -1 = retry for ever (an outage never dead-letters data)", Only: sub},
		{Name: "consumer.max_ack_pending", Default: 10000, Usage: "most messages delivered and not yet acked", Only: sub},
		{Name: "consumer.backoff", Default: []string{"1s", "2s", "5s", "10s", "30s", "1m"}, Usage: "retry delays by attempt; the last one repeats", Only: sub},
		{Name: "consumer.batch_size", Default: 500, Usage: "most messages handled (persister: written in one transaction) at once", Only: sub},
		{Name: "consumer.batch_wait", Default: 200 * time.Millisecond, Usage: "longest a partial batch waits for more messages", Only: sub},
		{Name: "consumer.deliver_policy", Default: "all", Usage: "where a new durable starts: " + strings.Join(DeliverPolicies, ", ") + "; fixed once the durable exists", Only: sub},
		{Name: "consumer.start_time", Default: "", Usage: "RFC 3339 start for deliver_policy by_start_time (use a new consumer.durable to replay)", Only: sub},
		{Name: "consumer.drain_timeout", Default: 20 * time.Second, Usage: "on shutdown, longest wait for the batch in flight to finish and be acked", Only: sub},
		{Name: "consumer.lag_interval", Default: 5 * time.Second, Usage: "how often consumer lag (pending, ack pending) is read from the server", Only: sub},
	}...)
	extraValidators = append(extraValidators, validateConsumer)
}

func validateConsumer(c *Config, b Binary) []error {
	used := false
	for _, s := range subscribers {
		used = used || s == b
	}
	if !used {
		return nil
	}
	var v validator
	k := c.Consumer
	if k.Durable != "" && !validName(k.Durable) {
		v.bad("consumer.durable", k.Durable, "must be a name without spaces, dots, *, >, / or \\")
	}
	for _, s := range k.FilterSubjects {
		if strings.TrimSpace(s) == "" || strings.ContainsAny(s, " \t\r\n") {
			v.bad("consumer.filter_subjects", s, "must be subjects without spaces")
		}
	}
	v.duration("consumer.ack_wait", k.AckWait)
	if k.MaxDeliver == 0 || k.MaxDeliver < -1 {
		v.bad("consumer.max_deliver", k.MaxDeliver, "must be -1 (for ever) or positive")
	}
	v.positive("consumer.max_ack_pending", int64(k.MaxAckPending))
	if len(k.Backoff) == 0 {
		v.bad("consumer.backoff", "", "must list at least one delay")
	}
	for _, d := range k.Backoff {
		if d <= 0 {
			v.bad("consumer.backoff", d, "delays must be positive")
		}
	}
	v.positive("consumer.batch_size", int64(k.BatchSize))
	if k.BatchSize > 0 && k.MaxAckPending > 0 && k.BatchSize > k.MaxAckPending {
		v.bad("consumer.batch_size", k.BatchSize, fmt.Sprintf("must not exceed consumer.max_ack_pending (%d)", k.MaxAckPending))
	}
	v.duration("consumer.batch_wait", k.BatchWait)
	known := false
	for _, p := range DeliverPolicies {
		known = known || p == k.DeliverPolicy
	}
	if !known {
		v.bad("consumer.deliver_policy", k.DeliverPolicy, "must be one of "+strings.Join(DeliverPolicies, ", "))
	}
	switch {
	case k.DeliverPolicy == "by_start_time" && k.StartTime == "":
		v.bad("consumer.start_time", "", "must be set (RFC 3339) with deliver_policy by_start_time")
	case k.StartTime != "":
		if _, err := time.Parse(time.RFC3339Nano, k.StartTime); err != nil {
			v.bad("consumer.start_time", k.StartTime, "must be an RFC 3339 time such as 2025-01-31T00:00:00Z")
		} else if k.DeliverPolicy != "by_start_time" {
			v.bad("consumer.start_time", k.StartTime, "is only used with deliver_policy by_start_time")
		}
	}
	v.duration("consumer.drain_timeout", k.DrainTimeout)
	v.duration("consumer.lag_interval", k.LagInterval)
	return v.errs
}

// The persist.* keys beyond driver and dsn are the persister's tuning; their
// checks live here with the rest of the subscriber configuration.
func init() {
	extraValidators = append(extraValidators, func(c *Config, b Binary) []error {
		if b != Persister {
			return nil
		}
		var v validator
		p := c.Persist
		v.positive("persist.max_conns", int64(p.MaxConns))
		v.duration("persist.write_timeout", p.WriteTimeout)
		v.duration("persist.busy_timeout", p.BusyTimeout)
		switch p.SQLiteSynchronous {
		case "full", "normal":
		default:
			v.bad("persist.sqlite_synchronous", p.SQLiteSynchronous, "must be full or normal")
		}
		if p.WriteTimeout > 0 && c.Consumer.AckWait > 0 && p.WriteTimeout >= c.Consumer.AckWait {
			v.bad("persist.write_timeout", p.WriteTimeout, fmt.Sprintf("must be shorter than consumer.ack_wait (%s), or a slow batch is redelivered while it commits", c.Consumer.AckWait))
		}
		return v.errs
	})
}
