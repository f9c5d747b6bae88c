// Command alerter consumes the COORDS stream with the durable "alerter",
// evaluates the rules of alert.rules_file (geofences, overspeed, offline,
// low battery, panic, impossible jumps), keeps per-device state in the KV
// bucket DEVICES, publishes alerts to the ALERTS stream and notifies them
// (JSON webhook, Slack-style webhook, log).
//
//	alerter --config alerter.yaml
//	alerter --config alerter.yaml --replay-since 2025-03-03T08:00:00-06:00
//	alerter --config alerter.yaml --replay-since 6h
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/cmd/internal/cli"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/alert"
)

func main() { cli.Main("alerter", run) }

const replayHelp = `
Replay:
      --replay-since string                 recompute the alerts of COORDS from this RFC 3339 time or
                                            duration ago (90m, 36h) with a new durable
                                            (alerter-replay-<time>), publish to ALERTS what was never
                                            alerted, print a JSON report and exit; nothing is notified twice
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args, since, err := splitReplaySince(args)
	if err != nil {
		return err
	}
	l, err := config.Load(config.Alerter, args, stdout)
	if err != nil {
		if errors.Is(err, config.ErrShown) && wantsHelp(args) {
			fmt.Fprint(stdout, replayHelp)
		}
		return err
	}
	if len(l.Args) > 0 {
		return fmt.Errorf("unexpected argument %q (see alerter --help; a true/false flag is written --key=false)", l.Args[0])
	}
	log, flushLog := cli.NewLogger(l.Log, "alerter", stderr)
	defer flushLog()

	rules, err := alert.LoadRules(l.Alert.RulesFile)
	if err != nil {
		return fmt.Errorf("config: alert.rules_file: %w", err)
	}
	var start time.Time
	if since != "" {
		if start, err = alert.ParseSince(since, time.Now()); err != nil {
			return err
		}
	}
	cfg, err := alerterConfig(l, rules)
	if err != nil {
		return err
	}
	log.Info().Str("version", config.Version).Interface("config", l.Masked()).Msg("configuration")

	nc, err := cli.ConnectWaiting(ctx, cli.ConnConfig(l.NATS, "ubiqo-alerter"), log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Msg("alerter stopped while waiting for NATS")
			return nil
		}
		return err
	}
	defer func() { _ = cli.Drain(nc, l.HTTP.ShutdownTimeout) }()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	if since != "" {
		rep, err := alert.Replay(ctx, js, cfg, start, log)
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		return err
	}
	a, err := alert.New(js, cfg, log)
	if err != nil {
		return err
	}
	if err := a.Run(ctx); err != nil {
		return err
	}
	log.Info().Msg("alerter stopped")
	return nil
}

// alerterConfig turns the loaded configuration into the alerter's own.
func alerterConfig(l *config.Loaded, rules *alert.Rules) (alert.Config, error) {
	consumer, err := cli.ConsumerConfig(l.Config, config.Alerter)
	if err != nil {
		return alert.Config{}, fmt.Errorf("config: %w", err)
	}
	cfg := alert.Config{
		Rules:         rules,
		Consumer:      consumer,
		ManageStreams: l.Stream.Manage,
		Replicas:      l.Stream.Replicas,
		ScanInterval:  l.Alert.ScanInterval,
		Timeout:       l.Alert.Timeout,
		LogAlerts:     l.Alert.LogAlerts,
		Notify: alert.NotifyConfig{
			WebhookURL:  l.Alert.WebhookURL,
			SlackURL:    l.Alert.SlackURL,
			Timeout:     l.Alert.NotifyTimeout,
			MaxAttempts: l.Alert.NotifyMaxAttempts,
			Backoff:     l.Alert.NotifyBackoff,
			BackoffMax:  l.Alert.NotifyBackoffMax,
			Kinds:       l.Alert.NotifyKinds,
		},
	}
	if l.Stream.Manage {
		sc := cli.CoordsConfig(l.Stream).StreamConfig()
		cfg.Coords = &sc
	}
	return cfg, nil
}

// splitReplaySince takes --replay-since VALUE (or =VALUE) out of args: it
// is an action of this binary, not a configuration key.
func splitReplaySince(args []string) (rest []string, since string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return append(rest, args[i:]...), since, nil
		case a == "--replay-since" || a == "-replay-since":
			if i+1 >= len(args) {
				return nil, "", errors.New("--replay-since needs a value: an RFC 3339 time or a duration such as 6h")
			}
			since = args[i+1]
			i++
		case strings.HasPrefix(a, "--replay-since="):
			since = strings.TrimPrefix(a, "--replay-since=")
			if since == "" {
				return nil, "", errors.New("--replay-since needs a value: an RFC 3339 time or a duration such as 6h")
			}
		default:
			rest = append(rest, a)
		}
	}
	return rest, since, nil
}

func wantsHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" {
			return true
		}
	}
	return false
}
