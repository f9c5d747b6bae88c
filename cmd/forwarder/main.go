// Command forwarder delivers every coordinate on COORDS to secondary HTTP
// servers (UBIQO's "HTTP backup"): one durable consumer forward-<name> per
// target, per-device order, retries, circuit breaker, dead-letter queue.
//
//	forwarder [flags]                                   forward until SIGINT/SIGTERM
//	forwarder redrive --target NAME [--device ID] [--dry-run] [flags]
//	                                                    send a target's DLQ again
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/cmd/internal/cli"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/forward"
)

func main() { cli.Main("forwarder", run) }

const subcommandUsage = `
Subcommands:
  forwarder redrive --target NAME [--device ID] [--dry-run] [flags]
      deliver the target's dead-lettered coordinates (DLQ subjects
      ubiqo.dlq.forward-NAME.<token>) to it again, in order, deleting each
      one delivered; --dry-run only lists them.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "redrive" {
		return runRedrive(ctx, args[1:], stdout, stderr)
	}
	l, err := config.Load(config.Forwarder, args, stdout)
	if errors.Is(err, config.ErrShown) && wantsHelp(args) {
		fmt.Fprint(stdout, subcommandUsage)
	}
	if err != nil {
		return err
	}
	if len(l.Args) > 0 {
		return fmt.Errorf("unexpected argument %q (see forwarder --help; a true/false flag is written --key=false)", l.Args[0])
	}
	cfg := l.Config
	log, flushLog := cli.NewLogger(cfg.Log, "forwarder", stderr)
	defer flushLog()
	// forward.targets shows masked whole here; each target logs itself,
	// secrets left out, when it starts.
	log.Info().Str("version", config.Version).Interface("config", l.Masked()).Msg("starting")

	opts, err := options(cfg)
	if err != nil {
		return err
	}
	nc, js, err := connect(ctx, cfg, log, true)
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Msg("forwarder stopped while waiting for NATS")
			return nil
		}
		return err
	}
	defer nc.Close()
	// The DLQ stream is ours to ensure; COORDS is the bridge's (it has the
	// stream.* settings), so it is only used here.
	ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = stream.Ensure(ectx, js, stream.DLQConfig(cfg.Stream.Replicas))
	cancel()
	if err != nil {
		return fmt.Errorf("dead-letter stream: %w", err)
	}

	svc, err := forward.New(js, opts, log)
	if err != nil {
		return err
	}
	if a := svc.HTTPAddr(); a != nil {
		log.Info().Str("addr", a.String()).Msg("serving /healthz /readyz /metrics")
	}
	runErr := svc.Run(ctx)
	if err := cli.Drain(nc, 10*time.Second); err != nil {
		log.Warn().Err(err).Msg("nats drain")
	}
	log.Info().Msg("stopped")
	return runErr
}

func wantsHelp(args []string) bool {
	return slices.Contains(args, "--help") || slices.Contains(args, "-h")
}

// options maps the configuration to the forwarder's own options.
func options(cfg *config.Config) (forward.Options, error) {
	k := cfg.Consumer
	policy, err := subscribers.ParseDeliverPolicy(k.DeliverPolicy)
	if err != nil {
		return forward.Options{}, fmt.Errorf("config: consumer.deliver_policy: %w", err)
	}
	o := forward.Options{
		Runtime: subscribers.Config{
			Stream:         cfg.Stream.Name,
			SubjectPrefix:  cfg.Stream.SubjectPrefix,
			FilterSubjects: k.FilterSubjects,
			AckWait:        k.AckWait,
			MaxAckPending:  k.MaxAckPending,
			BatchSize:      k.BatchSize,
			BatchWait:      k.BatchWait,
			DeliverPolicy:  policy,
			StartTime:      k.StartAt(),
			DLQPrefix:      stream.DLQSubjectPrefix,
			DrainTimeout:   k.DrainTimeout,
			LagInterval:    k.LagInterval,
		},
		HTTPAddr:        cfg.HTTP.Addr,
		Pprof:           cfg.HTTP.Pprof,
		ShutdownTimeout: cfg.HTTP.ShutdownTimeout,
		Version:         config.Version,
	}
	for _, t := range cfg.Forward.Targets {
		ft, err := target(t, cfg.Stream.SubjectPrefix)
		if err != nil {
			return forward.Options{}, err
		}
		o.Targets = append(o.Targets, ft)
	}
	return o, nil
}

// target maps one configured target; its devices become subjects.
func target(t config.ForwardTarget, prefix string) (forward.Target, error) {
	filter := slices.Clone(t.Subjects)
	for _, id := range t.Devices {
		subj, err := coord.Subject(prefix, id)
		if err != nil {
			return forward.Target{}, fmt.Errorf("config: forward.targets[%s].devices: %w", t.Name, err)
		}
		filter = append(filter, subj)
	}
	return forward.Target{
		Name:            t.Name,
		URL:             t.URL,
		Method:          t.Method,
		Headers:         t.Headers,
		Timeout:         t.Timeout,
		Format:          t.Format,
		BatchSize:       t.BatchSize,
		RawForm:         t.RawContentType == "form",
		FilterSubjects:  filter,
		SigningSecret:   t.SigningSecret,
		Concurrency:     t.Concurrency,
		MaxDeliver:      t.MaxDeliver,
		MaxAge:          t.MaxAge,
		BackoffMin:      t.BackoffMin,
		BackoffMax:      t.BackoffMax,
		BreakerFailures: t.BreakerFailures,
		BreakerCooldown: t.BreakerCooldown,
	}, nil
}

// connect connects to NATS; wait: while no server answers, wait for one
// (the service) rather than fail at once (redrive, a command).
func connect(ctx context.Context, cfg *config.Config, log zerolog.Logger, wait bool) (*nats.Conn, jetstream.JetStream, error) {
	conn := cli.ConnConfig(cfg.NATS, "ubiqo-forwarder")
	var nc *nats.Conn
	var err error
	if wait {
		nc, err = cli.ConnectWaiting(ctx, conn, log)
	} else {
		conn.WaitConnected = true
		nc, err = stream.Connect(conn, log)
	}
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

const redriveUsage = `Usage: forwarder redrive --target NAME [--device ID] [--dry-run] [flags]

Delivers the coordinates dead-lettered for target NAME (DLQ stream, subjects
ubiqo.dlq.forward-NAME.<token>) straight to the target again, oldest first,
with the target's format, headers and signature; each one delivered is
deleted from the DLQ. One still failing stays, and so do the later ones of its
device. Nothing is republished to COORDS.

  --target NAME   the target, as named in forward.targets (required)
  --device ID     only this device id's coordinates
  --dry-run       list what would be sent; send and delete nothing

The configuration flags of forwarder (--config, --nats.url, ...) apply too.
`

// runRedrive parses its own flags out of args and hands the rest to
// config.Load.
func runRedrive(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var targetName, device string
	var dryRun bool
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		switch name {
		case "--help", "-h":
			fmt.Fprint(stdout, redriveUsage)
			return config.ErrShown
		case "--target", "--device":
			if !hasVal {
				if i+1 >= len(args) {
					return fmt.Errorf("redrive: %s needs a value", name)
				}
				i++
				val = args[i]
			}
			if name == "--target" {
				targetName = val
			} else {
				device = val
			}
		case "--dry-run":
			dryRun = !hasVal || val == "true"
		default:
			rest = append(rest, a)
		}
	}
	if targetName == "" {
		return errors.New("redrive: --target is required (see forwarder redrive --help)")
	}
	l, err := config.Load(config.Forwarder, rest, stdout)
	if err != nil {
		return err
	}
	if len(l.Args) > 0 {
		return fmt.Errorf("redrive: unexpected argument %q", l.Args[0])
	}
	cfg := l.Config
	var tc *config.ForwardTarget
	var names []string
	for i, t := range cfg.Forward.Targets {
		names = append(names, t.Name)
		if t.Name == targetName {
			tc = &cfg.Forward.Targets[i]
		}
	}
	if tc == nil {
		return fmt.Errorf("redrive: no target %q in forward.targets (have %s)", targetName, strings.Join(names, ", "))
	}
	t, err := target(*tc, cfg.Stream.SubjectPrefix)
	if err != nil {
		return err
	}
	log, flushLog := cli.NewLogger(cfg.Log, "forwarder", stderr)
	defer flushLog()
	nc, js, err := connect(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer nc.Close()
	rep, err := forward.Redrive(ctx, js, forward.RedriveOptions{
		Target: t, Device: device, DryRun: dryRun,
		DLQStream: stream.DLQStream, DLQPrefix: stream.DLQSubjectPrefix, Version: config.Version,
	}, stdout)
	fmt.Fprintf(stdout, "redrive %s: %s\n", targetName, rep)
	if err != nil {
		return err
	}
	if rep.Failed > 0 {
		return fmt.Errorf("redrive: %d coordinates still failing, left in the DLQ", rep.Failed)
	}
	return nil
}
