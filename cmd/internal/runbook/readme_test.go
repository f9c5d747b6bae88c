// Package runbook_test runs the "## Operations" runbook of README.md, command
// by command, against a running system built from this repository (bridge
// with its embedded JetStream server, persister, alerter, forwarder) and the
// real nats CLI (natscli v0.5.0), and checks what each command prints, so the
// runbook cannot drift from what the binaries and the CLI do.
//
// Every command line of the section's shell blocks needs a step in steps()
// (runbook_test.go), and every step a command: a new, changed or lost line
// fails the test until the table follows. To try a draft:
//
//	go test -run TestRunbook -v ./cmd/internal/runbook/ -readme=/path/to/draft.md
package runbook_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// command is one command line of the runbook as an operator pastes it:
// continuation lines (ending in \, |, && or ||) joined with single spaces,
// a trailing comment removed.
type command struct {
	line string
	at   int // line number in the README, for messages
}

// shellFences are the fence languages whose lines are commands.
var shellFences = map[string]bool{"sh": true, "bash": true, "shell": true}

// operationsCommands returns the commands of the shell fences of the
// "## Operations" section (up to the next level-2 heading), in order.
func operationsCommands(readme string) ([]command, error) {
	lines := strings.Split(readme, "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimRight(l, " \t\r") == "## Operations" {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf(`no "## Operations" section`)
	}
	var (
		cmds    []command
		inFence bool
		isShell bool
		pending []string // a command continued on the next line
		at      int
	)
	for i := start + 1; i < len(lines); i++ {
		raw := strings.TrimRight(lines[i], " \t\r")
		trim := strings.TrimSpace(raw)
		if !inFence && strings.HasPrefix(raw, "## ") {
			break
		}
		if strings.HasPrefix(trim, "```") {
			if inFence && len(pending) > 0 {
				return nil, fmt.Errorf("README line %d: command continued past the end of its code block", at)
			}
			inFence = !inFence
			isShell = inFence && shellFences[strings.TrimSpace(strings.TrimPrefix(trim, "```"))]
			continue
		}
		if !inFence || !isShell {
			continue
		}
		if len(pending) == 0 && (trim == "" || strings.HasPrefix(trim, "#")) {
			continue
		}
		text := stripComment(trim)
		if len(pending) == 0 {
			at = i + 1
		}
		if cont, ok := strings.CutSuffix(text, `\`); ok {
			pending = append(pending, strings.TrimSpace(cont))
			continue
		}
		pending = append(pending, text)
		if strings.HasSuffix(text, "|") || strings.HasSuffix(text, "&&") || strings.HasSuffix(text, "||") {
			continue
		}
		cmds = append(cmds, command{line: strings.Join(pending, " "), at: at})
		pending = nil
	}
	if inFence {
		return nil, fmt.Errorf("the Operations section ends inside a code block")
	}
	return cmds, nil
}

// stripComment removes a shell comment: a # that starts a word outside
// quotes, and the blanks before it.
func stripComment(s string) string {
	var single, double bool
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && !single:
			i++ // the next byte is escaped
		case c == '\'' && !double:
			single = !single
		case c == '"' && !single:
			double = !double
		case c == '#' && !single && !double && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return strings.TrimRight(s[:i], " \t")
		}
	}
	return s
}

func TestOperationsCommands(t *testing.T) {
	b, err := os.ReadFile("testdata/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := operationsCommands(string(b))
	if err != nil {
		t.Fatal(err)
	}
	want := []command{
		{`nats stream info COORDS`, 13},
		{`nats sub 'ubiqo.alerts.#'`, 14},
		{`persister --consumer.durable replay --consumer.start_time "$(date -u +%FT%TZ)"`, 16},
		{`nats stream get DLQ 1 --json | jq -r .data | curl --data-binary @- "$URL" && nats stream rmm DLQ 1 -f`, 18},
		{`export NATS_URL=nats://127.0.0.1:4222`, 30},
	}
	if !slices.Equal(cmds, want) {
		t.Errorf("commands:\n%+v\nwant\n%+v", cmds, want)
	}

	for name, md := range map[string]string{
		"no section":            "# x\n\n## Usage\n",
		"unterminated fence":    "## Operations\n\n```sh\nnats stream ls\n",
		"dangling continuation": "## Operations\n\n```sh\nnats stream ls |\n```\n",
	} {
		if _, err := operationsCommands(md); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
