// Package config owns the configuration of every ubiqo-bridge binary: the keys
// and their defaults, loading from a YAML file, UBIQO_* environment variables
// and flags (in that order of precedence, flags last), validation that names the
// bad key, and masking of secrets when the effective configuration is shown.
//
// It is the only package that imports viper; it hands out plain structs.
package config

import (
	"time"
)

// Config is the effective configuration of a binary.
type Config struct {
	HTTP    HTTP    `mapstructure:"http"`
	Auth    Auth    `mapstructure:"auth"`
	NATS    NATS    `mapstructure:"nats"`
	Stream  Stream  `mapstructure:"stream"`
	Ingest  Ingest  `mapstructure:"ingest"`
	Spool   Spool   `mapstructure:"spool"`
	Persist Persist `mapstructure:"persist"`
	Log     Log     `mapstructure:"log"`

	// Subscriber sections; each is defined, with its keys and checks, in a
	// file of its own (subscribers.go, forward.go, alert.go).
	Consumer Consumer `mapstructure:"consumer"`
	Forward  Forward  `mapstructure:"forward"`
	Alert    Alert    `mapstructure:"alert"`

	// Simulator configures cmd/simulator, in a file of its own (simulator.go).
	Simulator SimulatorConfig `mapstructure:"simulator"`
}

// HTTP configures the HTTP listener.
type HTTP struct {
	Addr              string        `mapstructure:"addr"`
	Path              string        `mapstructure:"path"`
	MaxBodyBytes      int64         `mapstructure:"max_body_bytes"`
	MaxBatch          int           `mapstructure:"max_batch"`
	ReadHeaderTimeout time.Duration `mapstructure:"read_header_timeout"`
	ReadTimeout       time.Duration `mapstructure:"read_timeout"`
	WriteTimeout      time.Duration `mapstructure:"write_timeout"`
	IdleTimeout       time.Duration `mapstructure:"idle_timeout"`
	ShutdownTimeout   time.Duration `mapstructure:"shutdown_timeout"`
	TLSCert           string        `mapstructure:"tls_cert"`
	TLSKey            string        `mapstructure:"tls_key"`
	MaxInFlight       int           `mapstructure:"max_in_flight"`
	AllowIPs          []string      `mapstructure:"allow_ips"`
	RateLimit         float64       `mapstructure:"rate_limit"`
	RateBurst         int           `mapstructure:"rate_burst"`
	AdminAddr         string        `mapstructure:"admin_addr"`
	Pprof             bool          `mapstructure:"pprof"`
}

// Auth configures how webhook calls authenticate.
type Auth struct {
	Tokens        []string `mapstructure:"tokens"`
	BasicUser     string   `mapstructure:"basic_user"`
	BasicPassword string   `mapstructure:"basic_password"`
}

// Open reports whether no credential is configured, so every call is accepted.
func (a Auth) Open() bool { return len(a.Tokens) == 0 && a.BasicUser == "" }

// NATS configures the connection to NATS, or the embedded server.
type NATS struct {
	URL            string        `mapstructure:"url"`
	User           string        `mapstructure:"user"`
	Password       string        `mapstructure:"password"`
	Token          string        `mapstructure:"token"`
	CredsFile      string        `mapstructure:"creds_file"`
	TLSCA          string        `mapstructure:"tls_ca"`
	TLSCert        string        `mapstructure:"tls_cert"`
	TLSKey         string        `mapstructure:"tls_key"`
	Name           string        `mapstructure:"name"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	PublishTimeout time.Duration `mapstructure:"publish_timeout"`
	MaxPending     int           `mapstructure:"max_pending"`
	Embedded       Embedded      `mapstructure:"embedded"`
}

// Embedded configures the embedded JetStream server used when NATS.URL is empty.
type Embedded struct {
	Listen   string `mapstructure:"listen"`
	StoreDir string `mapstructure:"store_dir"`
	MaxStore int64  `mapstructure:"max_store"`
}

// Stream configures the COORDS stream.
type Stream struct {
	Name            string        `mapstructure:"name"`
	SubjectPrefix   string        `mapstructure:"subject_prefix"`
	Replicas        int           `mapstructure:"replicas"`
	MaxAge          time.Duration `mapstructure:"max_age"`
	MaxBytes        int64         `mapstructure:"max_bytes"`
	DuplicateWindow time.Duration `mapstructure:"duplicate_window"`
	Compression     string        `mapstructure:"compression"`
	AllowDirect     bool          `mapstructure:"allow_direct"`
	Manage          bool          `mapstructure:"manage"`
}

// Spool configures the bridge's local spool.
type Spool struct {
	Mode     string `mapstructure:"mode"`
	Dir      string `mapstructure:"dir"`
	MaxBytes int64  `mapstructure:"max_bytes"`
}

// Ingest configures the webhook decoder.
type Ingest struct {
	DefaultTimezone string              `mapstructure:"default_timezone"`
	MaxFuture       time.Duration       `mapstructure:"max_future"`
	BatteryScale    string              `mapstructure:"battery_scale"`
	Aliases         map[string][]string `mapstructure:"aliases"`
}

// Location returns the zone of DefaultTimezone; Validate has checked it loads.
func (i Ingest) Location() *time.Location {
	loc, err := time.LoadLocation(i.DefaultTimezone)
	if err != nil {
		return time.UTC
	}
	return loc
}

// Persist configures the persister's database.
type Persist struct {
	Driver            string        `mapstructure:"driver"`
	DSN               string        `mapstructure:"dsn"`
	MaxConns          int           `mapstructure:"max_conns"`
	WriteTimeout      time.Duration `mapstructure:"write_timeout"`
	BusyTimeout       time.Duration `mapstructure:"busy_timeout"`
	SQLiteSynchronous string        `mapstructure:"sqlite_synchronous"`
}

// Log configures logging.
type Log struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
	Access string `mapstructure:"access"`
}
