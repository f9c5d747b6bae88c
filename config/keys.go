package config

import "time"

// Binary names the program that loads the configuration. Some defaults and
// the keys shown in --help depend on it.
type Binary string

// The binaries of ubiqo-bridge.
const (
	Bridge    Binary = "bridge"
	Persister Binary = "persister"
	Alerter   Binary = "alerter"
	Forwarder Binary = "forwarder"
	Simulator Binary = "simulator"
)

// subscribers are the binaries that consume COORDS.
var subscribers = []Binary{Persister, Alerter, Forwarder}

// services are the long-running binaries: the bridge and the subscribers
// (not the simulator, which only calls a webhook).
var services = []Binary{Bridge, Persister, Alerter, Forwarder}

// Key describes one configuration key: its name (dotted, as in the YAML file),
// its default, its help text, and whether its value is a secret that must be
// masked wherever the configuration is shown.
type Key struct {
	Name    string
	Default any
	Usage   string
	Secret  bool
	// Only lists the binaries that use the key; nil means every binary.
	Only []Binary
}

// EnvName is the environment variable that sets the key: UBIQO_ + the key
// upper-cased with dots as underscores.
func (k Key) EnvName() string { return envName(k.Name) }

// usedBy reports whether binary b uses the key.
func (k Key) usedBy(b Binary) bool {
	if k.Only == nil {
		return true
	}
	for _, o := range k.Only {
		if o == b {
			return true
		}
	}
	return false
}

func bins(b ...Binary) []Binary { return b }

// Keys lists every configuration key with its default. The Config struct and
// this table must agree; a test checks that they do.
var Keys = []Key{
	// HTTP front end (bridge) or health/metrics listener (subscribers).
	{Name: "http.addr", Default: ":8080", Usage: "listen address; for subscribers the health and metrics listener, empty = off", Only: services},
	{Name: "http.path", Default: "/webhook/ubiqo", Usage: "ingest path, POST and GET", Only: bins(Bridge)},
	{Name: "http.max_body_bytes", Default: int64(1 << 20), Usage: "largest accepted request body; larger answers 413", Only: bins(Bridge)},
	{Name: "http.max_batch", Default: 1000, Usage: "most coordinates in one request; more answers 413", Only: bins(Bridge)},
	{Name: "http.read_header_timeout", Default: 5 * time.Second, Usage: "time allowed to read request headers", Only: bins(Bridge)},
	{Name: "http.read_timeout", Default: 30 * time.Second, Usage: "time allowed to read a whole request", Only: bins(Bridge)},
	{Name: "http.write_timeout", Default: 30 * time.Second, Usage: "time allowed to write a response", Only: bins(Bridge)},
	{Name: "http.idle_timeout", Default: 120 * time.Second, Usage: "keep-alive idle timeout", Only: bins(Bridge)},
	{Name: "http.shutdown_timeout", Default: 20 * time.Second, Usage: "grace period for in-flight requests on shutdown", Only: services},
	{Name: "http.tls_cert", Default: "", Usage: "PEM certificate file; with http.tls_key serves HTTPS", Only: bins(Bridge)},
	{Name: "http.tls_key", Default: "", Usage: "PEM private key file for http.tls_cert", Only: bins(Bridge)},
	{Name: "http.max_in_flight", Default: 1024, Usage: "most requests served at once; more answer 429 with Retry-After", Only: bins(Bridge)},
	{Name: "http.rate_limit", Default: 0.0, Usage: "ingest requests per second per client address; more answer 429; 0 = off", Only: bins(Bridge)},
	{Name: "http.rate_burst", Default: 0, Usage: "requests a client may send above http.rate_limit in a burst; 0 = one second's worth", Only: bins(Bridge)},
	{Name: "http.allow_ips", Default: []string{}, Usage: "client IPs or CIDRs allowed to call the webhook; empty = any", Only: bins(Bridge)},
	{Name: "http.admin_addr", Default: "", Usage: "second listener for /healthz, /readyz, /metrics and /debug/pprof (keep it internal); set, /metrics leaves http.addr; empty = off", Only: bins(Bridge)},
	{Name: "http.pprof", Default: false, Usage: "serve /debug/pprof: on http.admin_addr (bridge) or http.addr (subscribers)", Only: services},

	// Authentication of webhook calls.
	{Name: "auth.tokens", Default: []string{}, Usage: "accepted tokens (Authorization: Bearer, X-Ubiqo-Token or ?token=); empty = open", Secret: true, Only: bins(Bridge)},
	{Name: "auth.basic_user", Default: "", Usage: "HTTP basic auth user accepted besides tokens", Only: bins(Bridge)},
	{Name: "auth.basic_password", Default: "", Usage: "HTTP basic auth password", Secret: true, Only: bins(Bridge)},

	// NATS connection.
	{Name: "nats.url", Default: "", Usage: "NATS server URLs, comma-separated; empty = embedded JetStream server", Only: services},
	{Name: "nats.user", Default: "", Usage: "user for NATS user/password auth", Only: services},
	{Name: "nats.password", Default: "", Usage: "password for NATS user/password auth", Secret: true, Only: services},
	{Name: "nats.token", Default: "", Usage: "NATS auth token", Secret: true, Only: services},
	{Name: "nats.creds_file", Default: "", Usage: "NATS credentials (.creds) file", Only: services},
	{Name: "nats.tls_ca", Default: "", Usage: "CA file to verify the NATS server", Only: services},
	{Name: "nats.tls_cert", Default: "", Usage: "client certificate for NATS TLS", Only: services},
	{Name: "nats.tls_key", Default: "", Usage: "client key for NATS TLS", Only: services},
	{Name: "nats.name", Default: "", Usage: "connection name shown by the server (default: the binary name)", Only: services},
	{Name: "nats.connect_timeout", Default: 5 * time.Second, Usage: "time to wait for the first connection", Only: services},
	{Name: "nats.publish_timeout", Default: 5 * time.Second, Usage: "longest wait for a JetStream publish ack", Only: bins(Bridge)},
	{Name: "nats.max_pending", Default: 4096, Usage: "most publishes awaiting their ack at once (at most 1048576); beyond, a request waits for room up to nats.publish_timeout", Only: bins(Bridge)},
	{Name: "nats.embedded.listen", Default: "127.0.0.1:4222", Usage: "where the embedded server listens (subscribers and the nats CLI connect here)", Only: bins(Bridge)},
	{Name: "nats.embedded.store_dir", Default: "./data/nats", Usage: "storage directory of the embedded server", Only: bins(Bridge)},
	{Name: "nats.embedded.max_store", Default: int64(0), Usage: "file storage limit of the embedded server in bytes; 0 = server default", Only: bins(Bridge)},

	// COORDS stream.
	{Name: "stream.name", Default: "COORDS", Usage: "coordinate stream", Only: services},
	{Name: "stream.subject_prefix", Default: "ubiqo.coords", Usage: "subject = prefix + . + device token", Only: services},
	{Name: "stream.replicas", Default: 1, Usage: "stream replicas; 3 in a cluster", Only: services},
	{Name: "stream.max_age", Default: 720 * time.Hour, Usage: "retention of coordinates", Only: services},
	{Name: "stream.max_bytes", Default: int64(-1), Usage: "stream size limit in bytes; -1 = unlimited", Only: services},
	{Name: "stream.duplicate_window", Default: 10 * time.Minute, Usage: "dedupe window for Nats-Msg-Id", Only: services},
	{Name: "stream.compression", Default: "none", Usage: "stream compression: none or s2 (s2: about 3.5x less disk, for fewer coordinates/s and a longer latency tail)", Only: services},
	{Name: "stream.allow_direct", Default: true, Usage: "allow direct get (nats stream get --last-for)", Only: services},
	{Name: "stream.manage", Default: true, Usage: "create or update the stream at start; false = only check it exists", Only: services},

	// Local spool for when JetStream cannot store.
	{Name: "spool.mode", Default: "spool", Usage: "spool: write to the local spool and answer 202 when JetStream cannot store; reject: answer 503", Only: bins(Bridge)},
	{Name: "spool.dir", Default: "./data/spool", Usage: "spool directory (fsync'd append-only segments)", Only: bins(Bridge)},
	{Name: "spool.max_bytes", Default: int64(1 << 30), Usage: "largest spool; when full the webhook answers 503", Only: bins(Bridge)},

	// Ingest decoding.
	{Name: "ingest.default_timezone", Default: "UTC", Usage: "zone for timestamps that carry none (IANA name)", Only: bins(Bridge)},
	{Name: "ingest.max_future", Default: 10 * time.Minute, Usage: "fixes further in the future than this are rejected", Only: bins(Bridge)},
	{Name: "ingest.battery_scale", Default: "auto", Usage: "how a battery level without % is read: percent (0-100), fraction (0-1), or auto (a value in [0, 1] with a decimal point is a fraction)", Only: bins(Bridge)},
	{Name: "ingest.aliases", Default: map[string][]string{}, Usage: "extra source field names per canonical field (file only), e.g. lat: [gps_lat]", Only: bins(Bridge)},

	// Persister.
	{Name: "persist.driver", Default: "sqlite", Usage: "sqlite or postgres", Only: bins(Persister)},
	{Name: "persist.dsn", Default: "file:./data/coords.db", Usage: "database: SQLite file URI or a libpq URL", Secret: true, Only: bins(Persister)},
	{Name: "persist.max_conns", Default: 4, Usage: "PostgreSQL connection pool size", Only: bins(Persister)},
	{Name: "persist.write_timeout", Default: 20 * time.Second, Usage: "longest one batch transaction may take before it is rolled back and retried", Only: bins(Persister)},
	{Name: "persist.busy_timeout", Default: 5 * time.Second, Usage: "SQLite: how long a write waits for a lock held by another connection", Only: bins(Persister)},
	{Name: "persist.sqlite_synchronous", Default: "full", Usage: "SQLite synchronous pragma: full (a commit, and so an ack, survives power loss) or normal (faster)", Only: bins(Persister)},

	// Logging.
	{Name: "log.level", Default: "info", Usage: "debug, info, warn or error"},
	{Name: "log.format", Default: "json", Usage: "json, or console for people"},
	{Name: "log.access", Default: "all", Usage: "access log: all requests, errors (non-2xx) or none", Only: bins(Bridge)},
}

// defaultsFor returns the per-binary default overrides.
func defaultsFor(b Binary) map[string]any {
	switch b {
	case Bridge:
		return nil
	case Persister:
		return map[string]any{"http.addr": "", "consumer.batch_size": PersisterBatchSize}
	default:
		return map[string]any{"http.addr": ""}
	}
}

// PersisterBatchSize is the persister's default consumer.batch_size, the
// rows of one transaction. Draining a 1,000,000 backlog (make
// bench-persist, one machine, back to back) against 500, the other
// subscribers' default: SQLite 17,200 -> 18,800-22,300 rows/s, PostgreSQL
// 24,600 -> 28,100-35,000 rows/s, for 13 MB (SQLite) or 19 MB (PostgreSQL)
// more peak RSS. 2,000 gained little more on PostgreSQL (200,000 rows) and
// took SQLite's RSS near 150 MB.
const PersisterBatchSize = 1000
