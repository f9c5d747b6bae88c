// Package stream owns the JetStream side of ubiqo-bridge: the topology as code
// (the COORDS, ALERTS and DLQ streams, and the DEVICES key-value bucket), the
// embedded nats-server used on a single machine, and connecting to an external
// server or cluster.
package stream

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of the streams, subjects and bucket fixed by the design contract.
const (
	AlertsStream        = "ALERTS"
	AlertsSubjectPrefix = "ubiqo.alerts"
	DLQStream           = "DLQ"
	DLQSubjectPrefix    = "ubiqo.dlq"
	DevicesBucket       = "DEVICES"
)

// CoordsConfig describes the COORDS stream.
type CoordsConfig struct {
	Name            string
	SubjectPrefix   string
	Replicas        int
	MaxAge          time.Duration
	MaxBytes        int64 // -1 = unlimited
	DuplicateWindow time.Duration
	Compression     bool // s2
	AllowDirect     bool
}

// StreamConfig returns the JetStream configuration of the COORDS stream:
// file storage, limits retention, one subject per device under the prefix.
func (c CoordsConfig) StreamConfig() jetstream.StreamConfig {
	sc := jetstream.StreamConfig{
		Name:              c.Name,
		Description:       "UBIQO coordinates, one subject per device (ubiqo-bridge)",
		Subjects:          []string{c.SubjectPrefix + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Discard:           jetstream.DiscardOld,
		Replicas:          c.Replicas,
		MaxAge:            c.MaxAge,
		MaxBytes:          c.MaxBytes,
		MaxMsgs:           -1,
		Duplicates:        c.DuplicateWindow,
		AllowDirect:       c.AllowDirect,
		MaxConsumers:      -1,
		MaxMsgsPerSubject: -1,
	}
	if c.MaxBytes == 0 {
		sc.MaxBytes = -1
	}
	if c.Compression {
		sc.Compression = jetstream.S2Compression
	}
	return sc
}

// DLQConfig is the dead-letter stream: subjects ubiqo.dlq.<consumer>.<token>,
// kept for 30 days so an operator has time to look and re-drive.
func DLQConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              DLQStream,
		Description:       "Messages a ubiqo-bridge subscriber gave up on, with the last error (ubiqo-bridge)",
		Subjects:          []string{DLQSubjectPrefix + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Discard:           jetstream.DiscardOld,
		Replicas:          replicas,
		MaxAge:            30 * 24 * time.Hour,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		MaxMsgsPerSubject: -1,
		Duplicates:        10 * time.Minute,
		AllowDirect:       true,
		Compression:       jetstream.S2Compression,
	}
}

// AlertsConfig is the ALERTS stream: subjects ubiqo.alerts.<kind>.<token>.
func AlertsConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              AlertsStream,
		Description:       "Alerts raised by the ubiqo-bridge alerter",
		Subjects:          []string{AlertsSubjectPrefix + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Discard:           jetstream.DiscardOld,
		Replicas:          replicas,
		MaxAge:            90 * 24 * time.Hour,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		MaxMsgsPerSubject: -1,
		Duplicates:        24 * time.Hour,
		AllowDirect:       true,
		Compression:       jetstream.S2Compression,
	}
}

// StreamManager is the part of the JetStream API that Ensure needs.
type StreamManager interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// ErrIncompatible is returned by Ensure when the stream exists with settings
// that the server cannot change in place.
var ErrIncompatible = errors.New("stream exists with settings the server cannot change")

// Ensure creates the stream described by want, or updates an existing one to
// match it. Settings the server cannot change in place (storage, retention,
// and whatever the server refuses) give an error that says what differs and
// what to do; nothing is deleted.
func Ensure(ctx context.Context, js StreamManager, want jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w%s", want.Name, err, hint(err))
		}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if d := immutableDiff(have, want); d != "" {
		return nil, fmt.Errorf("stream %s: %w: %s; the stream is left as it is: set the stream.* keys to match, or move the data to a new stream and delete this one (nats stream backup / rm)", want.Name, ErrIncompatible, d)
	}
	if sameConfig(have, want) {
		return s, nil
	}
	s, err = js.UpdateStream(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w: the server refused the update: %v%s", want.Name, ErrIncompatible, err, hint(err))
	}
	return s, nil
}

func hint(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "subjects overlap"):
		return " (another stream already takes these subjects: choose another stream.subject_prefix or remove the other stream)"
	case strings.Contains(msg, "insufficient resources"), strings.Contains(msg, "replicas"):
		return " (the cluster has fewer JetStream servers than stream.replicas, or not enough storage)"
	default:
		return ""
	}
}

// immutableDiff names the settings that differ and that the server never
// changes in place.
func immutableDiff(have, want jetstream.StreamConfig) string {
	var d []string
	if have.Storage != want.Storage {
		d = append(d, fmt.Sprintf("storage is %s, want %s", have.Storage, want.Storage))
	}
	if have.Retention != want.Retention {
		d = append(d, fmt.Sprintf("retention is %s, want %s", have.Retention, want.Retention))
	}
	return strings.Join(d, "; ")
}

// sameConfig reports whether have already carries every setting of want that
// Ensure manages, so no update request is needed.
func sameConfig(have, want jetstream.StreamConfig) bool {
	return reflect.DeepEqual(have.Subjects, want.Subjects) &&
		have.Replicas == want.Replicas &&
		have.MaxAge == want.MaxAge &&
		have.MaxBytes == want.MaxBytes &&
		have.MaxMsgs == want.MaxMsgs &&
		have.Duplicates == want.Duplicates &&
		have.Compression == want.Compression &&
		have.AllowDirect == want.AllowDirect &&
		have.Discard == want.Discard &&
		have.Description == want.Description
}
