package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Alert configures the alerter. Its keys are appended to Keys in init and
// its checks to extraValidators, so this file is the whole section.
type Alert struct {
	// RulesFile is the YAML rule file (format: docs/alerter.md).
	RulesFile    string        `mapstructure:"rules_file"`
	ScanInterval time.Duration `mapstructure:"scan_interval"`
	Timeout      time.Duration `mapstructure:"timeout"`
	LogAlerts    bool          `mapstructure:"log_alerts"`
	// WebhookURL and SlackURL usually carry a token: secrets.
	WebhookURL        string        `mapstructure:"webhook_url"`
	SlackURL          string        `mapstructure:"slack_url"`
	NotifyTimeout     time.Duration `mapstructure:"notify_timeout"`
	NotifyMaxAttempts int           `mapstructure:"notify_max_attempts"`
	NotifyBackoff     time.Duration `mapstructure:"notify_backoff"`
	NotifyBackoffMax  time.Duration `mapstructure:"notify_backoff_max"`
	NotifyKinds       []string      `mapstructure:"notify_kinds"`
}

// AlertKinds are the alert kinds notify_kinds accepts (the <kind> of
// ubiqo.alerts.<kind>.<token>).
var AlertKinds = []string{"geofence_enter", "geofence_exit", "overspeed", "overspeed_end", "offline", "online",
	"battery_low", "battery_ok", "panic", "jump"}

func init() {
	only := bins(Alerter)
	Keys = append(Keys, []Key{
		{Name: "alert.rules_file", Default: "./alert-rules.yaml", Usage: "YAML rule file: geofences, overspeed, offline, battery, panic, jump", Only: only},
		{Name: "alert.scan_interval", Default: 30 * time.Second, Usage: "how often devices are checked for offline rules (an alert comes at most this late)", Only: only},
		{Name: "alert.timeout", Default: 5 * time.Second, Usage: "longest wait for a DEVICES read or write or an ALERTS publish", Only: only},
		{Name: "alert.log_alerts", Default: true, Usage: "log every new alert at info level (the log notifier)", Only: only},
		{Name: "alert.webhook_url", Default: "", Usage: "POST every alert as JSON here; empty = off", Secret: true, Only: only},
		{Name: "alert.slack_url", Default: "", Usage: "Slack-style incoming webhook for alert texts; empty = off", Secret: true, Only: only},
		{Name: "alert.notify_timeout", Default: 10 * time.Second, Usage: "timeout of one notifier HTTP call", Only: only},
		{Name: "alert.notify_max_attempts", Default: 50, Usage: "tries per alert and notifier before it is dropped (logged); -1 = for ever", Only: only},
		{Name: "alert.notify_backoff", Default: time.Second, Usage: "first notifier retry delay, doubled per attempt", Only: only},
		{Name: "alert.notify_backoff_max", Default: 5 * time.Minute, Usage: "longest notifier retry delay", Only: only},
		{Name: "alert.notify_kinds", Default: []string{}, Usage: "notify only these kinds (" + strings.Join(AlertKinds, ", ") + "); empty = all", Only: only},
	}...)
	extraValidators = append(extraValidators, validateAlert)
}

func validateAlert(c *Config, b Binary) []error {
	if b != Alerter {
		return nil
	}
	var v validator
	a := c.Alert
	// Whether the file reads and compiles is checked by the alerter at
	// start (its error names alert.rules_file too): loading a config must
	// not depend on files other than the config file.
	if strings.TrimSpace(a.RulesFile) == "" {
		v.bad("alert.rules_file", a.RulesFile, "must name the rule file")
	}
	v.duration("alert.scan_interval", a.ScanInterval)
	v.duration("alert.timeout", a.Timeout)
	for _, k := range []struct{ name, val string }{{"alert.webhook_url", a.WebhookURL}, {"alert.slack_url", a.SlackURL}} {
		if k.val == "" {
			continue
		}
		if u, err := url.Parse(k.val); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The value holds a secret: say what is wrong, never echo it.
			v.errs = append(v.errs, fmt.Errorf("config: %s: must be an http:// or https:// URL (value not shown: it is a secret)", k.name))
		}
	}
	v.duration("alert.notify_timeout", a.NotifyTimeout)
	if a.NotifyMaxAttempts == 0 || a.NotifyMaxAttempts < -1 {
		v.bad("alert.notify_max_attempts", a.NotifyMaxAttempts, "must be -1 (for ever) or positive")
	}
	v.duration("alert.notify_backoff", a.NotifyBackoff)
	v.duration("alert.notify_backoff_max", a.NotifyBackoffMax)
	if a.NotifyBackoff > 0 && a.NotifyBackoffMax > 0 && a.NotifyBackoffMax < a.NotifyBackoff {
		v.bad("alert.notify_backoff_max", a.NotifyBackoffMax, "must not be shorter than alert.notify_backoff")
	}
	for _, k := range a.NotifyKinds {
		known := false
		for _, want := range AlertKinds {
			known = known || k == want
		}
		if !known {
			v.bad("alert.notify_kinds", k, "must be among "+strings.Join(AlertKinds, ", "))
		}
	}
	return v.errs
}
