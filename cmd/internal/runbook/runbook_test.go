package runbook_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

var readmePath = flag.String("readme", "../../../README.md", "the README whose Operations runbook is run")

// The devices of the runbook. deviceID is the one its commands name.
const (
	deviceID    = "356938035643809" // drives into the depot of deploy/alerter/rules.yaml
	panicDevice = "van-9"           // presses the panic button
	dlqDevice   = "truck-17"        // refused by the backup target: dead-lettered
)

// step is what the test knows about one runbook command: how to run it and
// what its output must show.
type step struct {
	cmd    string   // exactly as in the README (see operationsCommands)
	skip   string   // why the test does not run it
	tty    bool     // it needs a terminal: run under script(1)
	needs  []string // programs it uses besides bash, coreutils, nats and ours; missing = not run (logged)
	live   *live    // it runs until stopped
	before func(t *testing.T, r *runbook)
	want   []string // substrings of its output (stdout and stderr)
	check  func(t *testing.T, r *runbook, out string)
	after  func(t *testing.T, r *runbook)
}

// live describes a command that runs until interrupted, as an operator
// would Ctrl-C it.
type live struct {
	// ready is in its output once it runs; then during runs.
	ready  string
	during func(t *testing.T, r *runbook)
	// until holds once it did its work; then it gets SIGINT.
	until func(ctx context.Context, r *runbook, out string) (bool, error)
	// clean: it must exit 0 on SIGINT.
	clean bool
}

// runbook is the running system plus what the test fed it.
type runbook struct {
	*system
	ts     map[string]string // fix times (RFC 3339) by name
	byHand bool              // the by-hand re-drive ran
}

// steps is the expectation table: one entry per command of the runbook.
func steps() []step {
	subj := "ubiqo.coords." + deviceID
	return []step{
		// Connecting.
		{cmd: "go install github.com/nats-io/natscli/nats@v0.5.0", skip: "the test installs the same release with streamtest.NATSCLI"},
		{cmd: "export NATS_URL=nats://127.0.0.1:4222", skip: "the test sets NATS_URL to its own embedded server"},
		{cmd: "export NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224", skip: "the test has no cluster"},
		{cmd: "nats --version", want: []string{"v0.5.0"}},

		// 1. The stream and its subjects.
		{cmd: "nats stream info COORDS", want: []string{
			"Subjects: ubiqo.coords.>", "Duplicate Window: 10m0s", "Messages: 5", "Active Consumers: 3", "Number of Subjects: 3",
		}},
		{cmd: "nats stream subjects COORDS", check: func(t *testing.T, r *runbook, out string) {
			wantCounts(t, out, map[string]string{subj: "2", "ubiqo.coords." + dlqDevice: "2", "ubiqo.coords." + panicDevice: "1"})
		}},

		// 2. A device's history.
		{cmd: "bridge token " + deviceID, check: func(t *testing.T, r *runbook, out string) {
			if strings.TrimSpace(out) != subj {
				t.Errorf("prints %q, want %q", out, subj)
			}
		}},
		{cmd: `nats stream view COORDS --subject "$(bridge token 356938035643809)" --since 1h`, tty: true,
			want: []string{"Ubiqo-Device: " + deviceID, "Nats-Msg-Id: ", `"device_id":"` + deviceID + `"`, `"lat":20.6,`, `"lat":20.5888,`, "Reached apparent end of data"},
			check: func(t *testing.T, r *runbook, out string) {
				wantCount(t, out, "Subject: "+subj, 2)
				wantNot(t, out, dlqDevice, panicDevice)
			}},
		{cmd: `nats sub --stream COORDS "$(bridge token 356938035643809)" --since 1h -T --wait 2s`,
			check: func(t *testing.T, r *runbook, out string) {
				wantCount(t, out, "Received JetStream message: stream: COORDS", 2)
				wantIn(t, out, `"ts":"`+r.ts["outside"]+`"`, `"ts":"`+r.ts["inside"]+`"`, "subject: "+subj)
				wantNot(t, out, dlqDevice, panicDevice)
			}},

		// 3. The last position.
		{cmd: `nats stream get COORDS --last-for "$(bridge token 356938035643809)"`,
			want: []string{"on Subject " + subj, "Ubiqo-Device: " + deviceID, `"lat":20.5888,"lon":-100.3899`},
			check: func(t *testing.T, r *runbook, out string) {
				wantIn(t, out, `"ts":"`+r.ts["inside"]+`"`)
				wantNot(t, out, r.ts["outside"])
			}},
		{cmd: "nats kv get DEVICES 356938035643809 --raw", want: []string{`"zones":["depot-qro"]`},
			check: func(t *testing.T, r *runbook, out string) {
				wantIn(t, out, `"last":{"ts":"`+r.ts["inside"]+`","lat":20.5888,"lon":-100.3899`)
			}},

		// 4. Replaying a time range.
		{cmd: "nats consumer add COORDS replay-2h --pull --deliver 2h --defaults",
			want: []string{"Name: replay-2h", "Pull Mode: true", "Deliver Policy: Since", "Unprocessed Messages: 5"}},
		{cmd: "nats consumer next COORDS replay-2h --count 3",
			want: []string{"str seq: 1 ", "str seq: 3 ", `"device_id":"` + deviceID + `"`},
			check: func(t *testing.T, r *runbook, out string) {
				wantCount(t, out, "Acknowledged message", 3)
				info, err := r.consumerInfo(context.Background(), "replay-2h")
				if err != nil || info.AckFloor.Stream != 3 || info.NumPending != 2 {
					t.Errorf("replay-2h after next: %+v %v; want ack floor 3, 2 pending", info, err)
				}
			}},
		{cmd: `persister --consumer.durable persister-replay --consumer.deliver_policy by_start_time --consumer.start_time "$(date -u -d '2 hours ago' +%Y-%m-%dT%H:%M:%SZ)"`,
			live: &live{
				ready: `"message":"consuming"`,
				until: func(ctx context.Context, r *runbook, _ string) (bool, error) {
					return caughtUp(ctx, r, "persister-replay", 5)
				},
				clean: true,
			},
			want: []string{`"consumer":"persister-replay"`, `"deliver_policy":"by_start_time"`},
			check: func(t *testing.T, r *runbook, out string) {
				if n, err := r.rows(context.Background()); n != 5 || err != nil {
					t.Errorf("database rows after the replay: %d %v; want 5 (each coordinate once)", n, err)
				}
			}},
		{cmd: "nats consumer info COORDS persister-replay",
			want: []string{"Deliver Policy: Since", "Unprocessed Messages: 0", "Acknowledgment Floor: Consumer sequence: 5 Stream sequence: 5"}},
		{cmd: "alerter --replay-since 2h",
			want: []string{`"durable": "alerter-replay-`, `"fixes": 5`, `"alerts_computed": 2`, `"alerts_published": 0`, `"alerts_suppressed": 2`},
			check: func(t *testing.T, r *runbook, out string) {
				if n, err := r.streamMsgs(context.Background(), "ALERTS"); n != 2 || err != nil {
					t.Errorf("ALERTS after the replay: %d messages %v; want 2 (nothing alerted twice)", n, err)
				}
				wantConsumers(t, r, "alerter", "forward-backup", "persister", "persister-replay", "replay-2h")
			}},
		{cmd: "nats consumer rm COORDS replay-2h -f", check: func(t *testing.T, r *runbook, _ string) {
			wantConsumers(t, r, "alerter", "forward-backup", "persister", "persister-replay")
		}},
		{cmd: "nats consumer rm COORDS persister-replay -f", check: func(t *testing.T, r *runbook, _ string) {
			wantConsumers(t, r, "alerter", "forward-backup", "persister")
		}},

		// 5. Consumer lag.
		{cmd: "nats consumer report COORDS", want: []string{"Consumer report for COORDS with "},
			check: func(t *testing.T, r *runbook, out string) {
				for _, c := range []string{"alerter", "forward-backup", "persister"} {
					info, err := r.consumerInfo(context.Background(), c)
					if err != nil {
						t.Fatal(err)
					}
					row := tableRow(out, c)
					// Unprocessed reads "0", or "N / P%" (P: share of the stream).
					unprocessed := "0"
					if info.NumPending > 0 {
						total, _ := r.streamMsgs(context.Background(), "COORDS")
						unprocessed = fmt.Sprintf("%d / %d%%", info.NumPending, info.NumPending*100/max(total, 1))
					}
					want := map[string]string{
						"Unprocessed": unprocessed,
						"Ack Pending": fmt.Sprint(info.NumAckPending),
						"Ack Floor":   fmt.Sprint(info.AckFloor.Stream),
					}
					for col, v := range want {
						if row[col] != v {
							t.Errorf("consumer %s: %s = %q, want %q (row %v)", c, col, row[col], v, row)
						}
					}
				}
			}},
		{cmd: "nats consumer info COORDS persister", want: consumerCaughtUp("persister", 5)},
		{cmd: "nats consumer info COORDS alerter", want: consumerCaughtUp("alerter", 5)},
		{cmd: "nats consumer info COORDS forward-backup", want: consumerCaughtUp("forward-backup", 5)},

		// 6. Alerts.
		{cmd: "nats sub 'ubiqo.alerts.>'",
			live: &live{
				ready: "Subscribing on ubiqo.alerts.>",
				during: func(t *testing.T, r *runbook) {
					r.ts["panic2"] = time.Now().UTC().Format(time.RFC3339)
					r.post(t, fix{"device_id": panicDevice, "lat": 19.4301, "lon": -99.1301, "event": "SOS", "timestamp": r.ts["panic2"]})
				},
				until: func(_ context.Context, r *runbook, out string) (bool, error) {
					return strings.Contains(out, `"kind":"panic"`), nil
				},
			},
			want: []string{`Received on "ubiqo.alerts.panic.van-9"`, "Ubiqo-Alert-Kind: panic", `"rule":"panic-button"`},
			check: func(t *testing.T, r *runbook, out string) {
				wantIn(t, out, `"ts":"`+r.ts["panic2"]+`"`)
				wantNot(t, out, "geofence_enter") // live: only what is published now
			},
			after: func(t *testing.T, r *runbook) { r.settled(t, 6, 3, 2) }},
		{cmd: "nats sub --stream ALERTS 'ubiqo.alerts.>' --since 1h -T --wait 2s",
			want: []string{
				"subject: ubiqo.alerts.geofence_enter." + deviceID, `"kind":"geofence_enter","rule":"depot-qro"`,
				`"message":"` + deviceID + ` entered Depot Querétaro"`, "subject: ubiqo.alerts.panic.van-9",
			},
			check: func(t *testing.T, r *runbook, out string) {
				wantCount(t, out, "Received JetStream message: stream: ALERTS", 3)
			}},
		{cmd: "nats sub --stream ALERTS 'ubiqo.alerts.panic.>' --since 24h -T --wait 2s",
			check: func(t *testing.T, r *runbook, out string) {
				wantCount(t, out, "Received JetStream message: stream: ALERTS", 2)
				wantCount(t, out, `"kind":"panic"`, 2)
				wantNot(t, out, "geofence_enter")
			}},
		{cmd: "nats stream view ALERTS", tty: true,
			want:  []string{"Subject: ubiqo.alerts.geofence_enter." + deviceID, "Ubiqo-Alert-Kind: panic", "Reached apparent end of data"},
			check: func(t *testing.T, r *runbook, out string) { wantCount(t, out, "Subject: ubiqo.alerts.", 3) }},

		// 7. The DLQ.
		{cmd: "nats stream subjects DLQ", check: func(t *testing.T, r *runbook, out string) {
			wantCounts(t, out, map[string]string{"ubiqo.dlq.forward-backup." + dlqDevice: "2"})
		}},
		{cmd: "nats stream subjects DLQ 'ubiqo.dlq.forward-backup.>'", check: func(t *testing.T, r *runbook, out string) {
			wantCounts(t, out, map[string]string{"ubiqo.dlq.forward-backup." + dlqDevice: "2"})
		}},
		{cmd: "nats sub --stream DLQ 'ubiqo.dlq.forward-backup.>' --all -T --wait 2s",
			want: []string{
				"stream: DLQ seq: 1 ", "stream: DLQ seq: 2 ",
				`Ubiqo-Error: permanent: forward to backup: HTTP 400 Bad Request: {"error":"unknown unit"}`,
				"Ubiqo-Original-Subject: ubiqo.coords." + dlqDevice, "Ubiqo-Consumer: forward-backup",
			},
			check: func(t *testing.T, r *runbook, out string) {
				wantCount(t, out, "Received JetStream message: stream: DLQ", 2)
			}},
		{cmd: "nats stream get DLQ 1",
			want: []string{"Item: DLQ#1 ", "Ubiqo-Error: permanent: forward to backup: HTTP 400", "Ubiqo-Attempts: 1", "Ubiqo-Original-Seq: "},
			check: func(t *testing.T, r *runbook, out string) {
				wantIn(t, out, `"device_id":"`+dlqDevice+`","ts":"`+r.ts["dlq1"]+`"`)
			}},
		{cmd: "forwarder redrive --target backup --dry-run",
			want: []string{"would send seq=1 ", "would send seq=2 ", `error="permanent: forward to backup: HTTP 400`, "redrive backup: found 2, delivered 0, failed 0, skipped 0"},
			check: func(t *testing.T, r *runbook, _ string) {
				wantDLQ(t, r, 2)
				if got := r.sink.of(dlqDevice); len(got) != 0 {
					t.Errorf("a dry run sent %v", got)
				}
			}},
		{cmd: "export BACKUP_URL=https://backup.example.com/ubiqo/coords", skip: "the test sets BACKUP_URL to its target"},
		{cmd: `nats stream get DLQ 1 --json | jq -r .data | base64 -d | curl -fsS -X POST -H 'Content-Type: application/json' --data-binary @- "$BACKUP_URL" && nats stream rmm DLQ 1 -f`,
			needs:  []string{"jq", "curl", "base64"},
			before: func(t *testing.T, r *runbook) { r.sink.accept() }, // the target is fixed
			check: func(t *testing.T, r *runbook, _ string) {
				r.byHand = true
				wantDLQ(t, r, 1)
				if got := r.sink.of(dlqDevice); !equal(got, []string{r.ts["dlq1"]}) {
					t.Errorf("the target got %v, want the first dead letter (%s)", got, r.ts["dlq1"])
				}
			}},
		{cmd: "forwarder redrive --target backup --device truck-17",
			want: []string{"delivered seq=2 "},
			check: func(t *testing.T, r *runbook, out string) {
				if r.byHand {
					wantIn(t, out, "redrive backup: found 1, delivered 1, failed 0, skipped 0")
				} else {
					wantIn(t, out, "redrive backup: found 2, delivered 2, failed 0, skipped 0")
				}
				wantDLQ(t, r, 0)
				if got := r.sink.of(dlqDevice); !equal(got, []string{r.ts["dlq1"], r.ts["dlq2"]}) {
					t.Errorf("the target got %v, want both dead letters in order", got)
				}
			}},
		{cmd: "forwarder redrive --target backup", want: []string{"redrive backup: found 0, delivered 0, failed 0, skipped 0"}},

		// 8. Purging a device.
		{cmd: `nats stream purge COORDS --subject "$(bridge token 356938035643809)" -f`, want: []string{"Purged 2 messages from COORDS"},
			check: func(t *testing.T, r *runbook, _ string) {
				if n, err := r.subjectMsgs(context.Background(), "COORDS", subj); n != 0 || err != nil {
					t.Errorf("%s after the purge: %d messages %v", subj, n, err)
				}
				if n, err := r.streamMsgs(context.Background(), "COORDS"); n != 4 || err != nil {
					t.Errorf("COORDS after the purge: %d messages %v; want the other devices' 4", n, err)
				}
			}},
		{cmd: "nats stream purge ALERTS --subject 'ubiqo.alerts.*.356938035643809' -f", want: []string{"Purged 1 messages from ALERTS"},
			check: func(t *testing.T, r *runbook, _ string) {
				if n, err := r.streamMsgs(context.Background(), "ALERTS"); n != 2 || err != nil {
					t.Errorf("ALERTS after the purge: %d messages %v; want the 2 panics of %s", n, err, panicDevice)
				}
			}},
		{cmd: "nats stream purge DLQ --subject 'ubiqo.dlq.*.356938035643809' -f", want: []string{"Purged 0 messages from DLQ"}},
		{cmd: "nats kv del DEVICES 356938035643809 -f", check: func(t *testing.T, r *runbook, _ string) {
			kv, err := r.js.KeyValue(context.Background(), "DEVICES")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Get(context.Background(), deviceID); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("DEVICES %s after kv del: %v, want it gone", deviceID, err)
			}
		}},
	}
}

func TestRunbook(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the whole system")
	}
	readme, err := os.ReadFile(*readmePath)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := operationsCommands(string(readme))
	if err != nil {
		t.Fatalf("%s: %v", *readmePath, err)
	}
	table := steps()
	byCmd, err := match(cmds, table)
	if err != nil {
		t.Fatalf("%s: the runbook and the test's expectations differ:\n%v", *readmePath, err)
	}
	if _, err := exec.LookPath("script"); err != nil {
		t.Fatal("commands that need a terminal run under script(1) (util-linux): ", err)
	}

	natsCLI := streamtest.NATSCLI(t)
	began := time.Now()
	r := &runbook{system: startSystem(t, natsCLI), ts: map[string]string{}}
	r.seed(t)
	t.Logf("system built and started, data in, in %v", time.Since(began).Round(time.Millisecond))
	began = time.Now()

	ran := 0
	for _, c := range cmds {
		st := byCmd[c.line]
		t.Run(c.line, func(t *testing.T) {
			if r.runStep(t, c, st) {
				ran++
			}
		})
		if err := r.exited(); err != nil {
			t.Fatalf("after %q: %v", c.line, err)
		}
	}
	t.Logf("runbook: %d commands run, %d not run, in %v", ran, len(cmds)-ran, time.Since(began).Round(time.Millisecond))
}

// match pairs every runbook command with its step: a command without one,
// a step without a command, or a command written twice is an error.
func match(cmds []command, table []step) (map[string]*step, error) {
	byCmd := map[string]*step{}
	var errs []error
	for i := range table {
		if byCmd[table[i].cmd] != nil {
			errs = append(errs, fmt.Errorf("the test has two steps for %q", table[i].cmd))
		}
		byCmd[table[i].cmd] = &table[i]
	}
	seen := map[string]bool{}
	for _, c := range cmds {
		switch {
		case seen[c.line]:
			errs = append(errs, fmt.Errorf("README line %d: %q is in the runbook twice; the test checks each command once", c.at, c.line))
		case byCmd[c.line] == nil:
			errs = append(errs, fmt.Errorf("README line %d: %q has no expectation: add a step for it in cmd/internal/runbook/runbook_test.go", c.at, c.line))
		}
		seen[c.line] = true
	}
	for _, st := range table {
		if !seen[st.cmd] {
			errs = append(errs, fmt.Errorf("the step for %q matches no command of the runbook: did it lose one, or change it?", st.cmd))
		}
	}
	return byCmd, errors.Join(errs...)
}

// seed posts the runbook's data and waits until the subscribers handled it:
// deviceID drives into the depot (geofence_enter), panicDevice presses the
// panic button, dlqDevice is refused by the backup target (two dead letters).
func (r *runbook) seed(t *testing.T) {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	at := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339) }
	r.ts["outside"], r.ts["inside"] = at(-3*time.Minute), at(-2*time.Minute)
	r.ts["panic"] = at(-2 * time.Minute)
	r.ts["dlq1"], r.ts["dlq2"] = at(-2*time.Minute), at(-time.Minute)
	r.post(t,
		fix{"imei": deviceID, "lat": 20.6, "lng": -100.3899, "speed": 38, "timestamp": r.ts["outside"]},
		fix{"imei": deviceID, "lat": 20.5888, "lng": -100.3899, "speed": 12, "timestamp": r.ts["inside"]},
		fix{"device_id": panicDevice, "lat": 19.43, "lon": -99.13, "event": "SOS", "timestamp": r.ts["panic"]},
		fix{"device_id": dlqDevice, "lat": 19.5, "lon": -99.2, "speed": 50, "timestamp": r.ts["dlq1"]},
		fix{"device_id": dlqDevice, "lat": 19.501, "lon": -99.2, "speed": 50, "timestamp": r.ts["dlq2"]},
	)
	r.settled(t, 5, 2, 2)
}

// runStep runs one command and checks its output; false if it was not run.
func (r *runbook) runStep(t *testing.T, c command, st *step) bool {
	if st.skip != "" {
		t.Logf("$ %s\n    (not run: %s)", c.line, st.skip)
		return false
	}
	if st.before != nil {
		st.before(t, r)
	}
	for _, p := range st.needs {
		if _, err := exec.LookPath(p); err != nil {
			t.Logf("$ %s\n    (not run: %s is not installed)", c.line, p)
			return false
		}
	}
	began := time.Now()
	out, err := r.exec(t, st, c.line)
	t.Logf("$ %s    [%v]\n%s", c.line, time.Since(began).Round(time.Millisecond), indent(headLines(out, 14)))
	if err != nil {
		t.Fatalf("README line %d: %v\n%s", c.at, err, out)
	}
	wantIn(t, out, st.want...)
	if st.check != nil {
		st.check(t, r, out)
	}
	if st.after != nil {
		st.after(t, r)
	}
	return true
}

// exec runs line in bash (under script(1) for a tty step) with the
// runbook's environment; a live step is interrupted once its until holds.
func (r *runbook) exec(t *testing.T, st *step, line string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	if st.tty {
		cmd = exec.CommandContext(ctx, "script", "-qec", line, "/dev/null")
	} else {
		cmd = exec.CommandContext(ctx, "bash", "-c", line)
	}
	cmd.Env = r.env
	cmd.Dir = r.dir
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a timeout or an interrupt reaches the
	// whole pipeline.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if st.live == nil {
		err := cmd.Run()
		return tidy(out.String()), err
	}

	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	poll := func(what string, cond func() (bool, error)) error {
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok, err := cond()
			if ok {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: not after 30s (%v)", what, err)
			}
			select {
			case err := <-done:
				done <- err
				return fmt.Errorf("exited (%v) before %s", err, what)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	err := poll(fmt.Sprintf("output %q", st.live.ready), func() (bool, error) {
		return strings.Contains(out.String(), st.live.ready), nil
	})
	if err == nil && st.live.during != nil {
		// nats sub logs "Subscribing on" just before it subscribes: give
		// the subscription time to reach the server.
		time.Sleep(500 * time.Millisecond)
		st.live.during(t, r)
	}
	if err == nil {
		err = poll("its work", func() (bool, error) {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return st.live.until(c, r, tidy(out.String()))
		})
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) // Ctrl-C
	exit := <-done
	if err == nil && st.live.clean && exit != nil {
		err = fmt.Errorf("exit after Ctrl-C: %v", exit)
	}
	return tidy(out.String()), err
}

// caughtUp reports whether a COORDS consumer acked every one of n messages.
func caughtUp(ctx context.Context, r *runbook, consumer string, n uint64) (bool, error) {
	info, err := r.consumerInfo(ctx, consumer)
	if err != nil {
		return false, err
	}
	return info.AckFloor.Stream == n && info.NumPending == 0 && info.NumAckPending == 0, nil
}

// consumerCaughtUp is what `nats consumer info` shows for a consumer that
// acked the stream's n messages.
func consumerCaughtUp(name string, n int) []string {
	return []string{
		"Name: " + name, "Unprocessed Messages: 0", "Outstanding Acks: 0",
		fmt.Sprintf("Acknowledgment Floor: Consumer sequence: %d Stream sequence: %d", n, n),
	}
}

func wantIn(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q", s)
		}
	}
}

func wantNot(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if strings.Contains(out, s) {
			t.Errorf("output has %q, which it should not", s)
		}
	}
}

func wantCount(t *testing.T, out, sub string, n int) {
	t.Helper()
	if got := strings.Count(out, sub); got != n {
		t.Errorf("output has %q %d times, want %d", sub, got, n)
	}
}

// wantCounts checks the subject counts of a `nats stream subjects` table.
func wantCounts(t *testing.T, out string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, cells := range tableRows(out) {
		for i := 0; i+1 < len(cells); i += 2 {
			if strings.HasPrefix(cells[i], "ubiqo.") {
				got[cells[i]] = cells[i+1]
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("subjects %v, want %v", got, want)
	}
	for s, n := range want {
		if got[s] != n {
			t.Errorf("subject %s: count %q, want %q", s, got[s], n)
		}
	}
}

// wantConsumers checks the durable consumers of COORDS. Ephemeral ones
// (those of `nats sub --stream`, which the server removes a few seconds
// after the command) are left out.
func wantConsumers(t *testing.T, r *runbook, names ...string) {
	t.Helper()
	st, err := r.js.Stream(context.Background(), "COORDS")
	if err != nil {
		t.Fatal(err)
	}
	l := st.ListConsumers(context.Background())
	var got []string
	for c := range l.Info() {
		if c.Config.Durable != "" {
			got = append(got, c.Name)
		}
	}
	if l.Err() != nil {
		t.Fatal(l.Err())
	}
	if !sameSet(got, names) {
		t.Errorf("durable consumers of COORDS: %v, want %v", got, names)
	}
}

func wantDLQ(t *testing.T, r *runbook, n uint64) {
	t.Helper()
	if got, err := r.streamMsgs(context.Background(), "DLQ"); got != n || err != nil {
		t.Errorf("DLQ holds %d messages (%v), want %d", got, err, n)
	}
}

// tableRows returns the cells of the rows of a natscli table with more
// than one column (the title row has one).
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "│") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "│"), "│")
		if len(cells) < 2 {
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	return rows
}

// tableRow returns the row of a natscli table whose first cell is name, by
// column title (the first row).
func tableRow(out, name string) map[string]string {
	rows := tableRows(out)
	if len(rows) == 0 {
		return nil
	}
	for _, cells := range rows[1:] {
		if cells[0] != name {
			continue
		}
		row := map[string]string{}
		for i, title := range rows[0] {
			if i < len(cells) {
				row[title] = cells[i]
			}
		}
		return row
	}
	return nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		if m[s]--; m[s] < 0 {
			return false
		}
	}
	return true
}

func equal(a, b []string) bool {
	return len(a) == len(b) && strings.Join(a, "\n") == strings.Join(b, "\n")
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]")

// tidy removes what a terminal adds: carriage returns and escape sequences.
func tidy(s string) string {
	return ansi.ReplaceAllString(strings.ReplaceAll(s, "\r", ""), "")
}

func headLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("... (%d more lines)", len(lines)-n))
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

// syncBuffer collects a command's output while the test reads it.
type syncBuffer = streamtest.Logs
