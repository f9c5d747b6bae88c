package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func load(t *testing.T, b Binary, args ...string) (*Loaded, string, error) {
	t.Helper()
	var out bytes.Buffer
	l, err := Load(b, args, &out)
	return l, out.String(), err
}

func TestDefaults(t *testing.T) {
	l, _, err := load(t, Bridge)
	if err != nil {
		t.Fatal(err)
	}
	c := l.Config
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"http.addr", c.HTTP.Addr, ":8080"},
		{"http.path", c.HTTP.Path, "/webhook/ubiqo"},
		{"http.max_body_bytes", c.HTTP.MaxBodyBytes, int64(1048576)},
		{"http.max_batch", c.HTTP.MaxBatch, 1000},
		{"auth.tokens", len(c.Auth.Tokens), 0},
		{"nats.url", c.NATS.URL, ""},
		{"nats.embedded.listen", c.NATS.Embedded.Listen, "127.0.0.1:4222"},
		{"nats.embedded.store_dir", c.NATS.Embedded.StoreDir, "./data/nats"},
		{"stream.name", c.Stream.Name, "COORDS"},
		{"stream.subject_prefix", c.Stream.SubjectPrefix, "ubiqo.coords"},
		{"stream.replicas", c.Stream.Replicas, 1},
		{"stream.max_age", c.Stream.MaxAge, 720 * time.Hour},
		{"stream.duplicate_window", c.Stream.DuplicateWindow, 10 * time.Minute},
		{"ingest.default_timezone", c.Ingest.DefaultTimezone, "UTC"},
		{"persist.driver", c.Persist.Driver, "sqlite"},
		{"persist.dsn", c.Persist.DSN, "file:./data/coords.db"},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "json"},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	p, _, err := load(t, Persister)
	if err != nil {
		t.Fatal(err)
	}
	if p.HTTP.Addr != "" {
		t.Errorf("persister http.addr default = %q, want empty (off)", p.HTTP.Addr)
	}
}

// Every key in the table must reach a Config field, and every Config field
// must have a key, so env vars and flags can never be silently ignored.
func TestKeysMatchStruct(t *testing.T) {
	fields := map[string]bool{}
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name := f.Tag.Get("mapstructure")
			if name == "" || name == ",squash" {
				t.Fatalf("field %s has no mapstructure tag", f.Name)
			}
			full := name
			if prefix != "" {
				full = prefix + "." + name
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
				walk(full, f.Type)
				continue
			}
			fields[full] = true
		}
	}
	walk("", reflect.TypeOf(Config{}))
	keys := map[string]bool{}
	for _, k := range Keys {
		if keys[k.Name] {
			t.Errorf("key %s listed twice", k.Name)
		}
		keys[k.Name] = true
		if !fields[k.Name] {
			t.Errorf("key %s has no Config field", k.Name)
		}
	}
	for f := range fields {
		if !keys[f] {
			t.Errorf("Config field %s has no key in Keys", f)
		}
	}
}

func TestPrecedenceFileEnvFlag(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bridge.yaml")
	if err := os.WriteFile(file, []byte("http:\n  addr: \":9001\"\n  max_batch: 10\nstream:\n  replicas: 3\nauth:\n  tokens: [a, b]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("UBIQO_HTTP_MAX_BATCH", "20")
	t.Setenv("UBIQO_STREAM_MAX_AGE", "48h")
	t.Setenv("UBIQO_AUTH_TOKENS", "x, y ,z")
	l, _, err := load(t, Bridge, "--config", file, "--stream.replicas=5", "--http.max_batch", "30")
	if err != nil {
		t.Fatal(err)
	}
	if l.HTTP.Addr != ":9001" {
		t.Errorf("file value lost: http.addr = %q", l.HTTP.Addr)
	}
	if l.Stream.MaxAge != 48*time.Hour {
		t.Errorf("env value lost: stream.max_age = %v", l.Stream.MaxAge)
	}
	if l.HTTP.MaxBatch != 30 || l.Stream.Replicas != 5 {
		t.Errorf("flags must win: max_batch=%d replicas=%d", l.HTTP.MaxBatch, l.Stream.Replicas)
	}
	if !reflect.DeepEqual(l.Auth.Tokens, []string{"x", "y", "z"}) {
		t.Errorf("env list: auth.tokens = %q, want [x y z]", l.Auth.Tokens)
	}
}

func TestValidationNamesKey(t *testing.T) {
	tests := []struct {
		name string
		bin  Binary
		env  map[string]string
		args []string
		want []string
	}{
		{"bad int", Bridge, map[string]string{"UBIQO_HTTP_MAX_BATCH": "lots"}, nil, []string{"http.max_batch"}},
		{"negative body", Bridge, nil, []string{"--http.max_body_bytes=-1"}, []string{"http.max_body_bytes", "must be positive"}},
		{"zone", Bridge, map[string]string{"UBIQO_INGEST_DEFAULT_TIMEZONE": "Mars/Olympus"}, nil, []string{"ingest.default_timezone"}},
		{"replicas", Bridge, nil, []string{"--stream.replicas=7"}, []string{"stream.replicas", "1 to 5"}},
		{"max pending", Bridge, nil, []string{"--nats.max_pending=100000000"}, []string{"nats.max_pending", "at most 1048576"}},
		{"nats url", Bridge, map[string]string{"UBIQO_NATS_URL": "http://x:4222"}, nil, []string{"nats.url", "scheme"}},
		{"driver", Persister, map[string]string{"UBIQO_PERSIST_DRIVER": "mysql"}, nil, []string{"persist.driver"}},
		{"tls pair", Bridge, nil, []string{"--http.tls_cert=c.pem"}, []string{"http.tls_cert and http.tls_key"}},
		{"subject prefix", Bridge, nil, []string{"--stream.subject_prefix=a.*"}, []string{"stream.subject_prefix"}},
		{"two errors", Bridge, nil, []string{"--log.format=xml", "--log.level=loud"}, []string{"log.format", "log.level"}},
		{"bad duration", Bridge, map[string]string{"UBIQO_STREAM_MAX_AGE": "forever"}, nil, []string{"stream.max_age"}},
		{"unknown flag", Bridge, nil, []string{"--nope"}, []string{"unknown flag: --nope"}},
		{"pprof without admin listener", Bridge, nil, []string{"--http.pprof"}, []string{"http.pprof", "needs http.admin_addr"}},
		{"admin on the webhook's address", Bridge, nil, []string{"--http.addr=:9000", "--http.admin_addr=:9000"}, []string{"http.admin_addr", "must differ"}},
		{"admin address", Bridge, nil, []string{"--http.admin_addr=nowhere"}, []string{"http.admin_addr"}},
		{"subscriber pprof without listener", Persister, nil, []string{"--http.pprof"}, []string{"http.pprof", "needs http.addr"}},
		{"port out of range", Bridge, nil, []string{"--http.addr=:99999"}, []string{"http.addr", "0 to 65535"}},
		{"nats port out of range", Bridge, nil, []string{"--nats.url=nats://h:99999"}, []string{"nats.url", "1 to 65535"}},
		{"postgres with the SQLite DSN", Persister, nil, []string{"--persist.driver=postgres"}, []string{"persist.dsn", "PostgreSQL URL"}},
		{"postgres with garbage", Persister, nil, []string{"--persist.driver=postgres", "--persist.dsn=garbage here"}, []string{"persist.dsn"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, _, err := load(t, tt.bin, tt.args...)
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
}

func TestUnknownFileKeyRejected(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("http:\n  adr: \":1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := load(t, Bridge, "--config", file)
	if err == nil || !strings.Contains(err.Error(), "adr") {
		t.Fatalf("want an error naming the misspelt key, got %v", err)
	}
}

func TestPrintConfigMasksSecrets(t *testing.T) {
	t.Setenv("UBIQO_AUTH_TOKENS", "tok-super-secret-1,tok-super-secret-2")
	t.Setenv("UBIQO_NATS_PASSWORD", "nats-pass-secret")
	t.Setenv("UBIQO_NATS_USER", "svc")
	t.Setenv("UBIQO_AUTH_BASIC_USER", "ubiqo")
	t.Setenv("UBIQO_AUTH_BASIC_PASSWORD", "basic-secret")
	_, out, err := load(t, Bridge, "--print-config")
	if !errors.Is(err, ErrShown) {
		t.Fatalf("want ErrShown, got %v", err)
	}
	for _, secret := range []string{"tok-super-secret", "nats-pass-secret", "basic-secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("--print-config shows secret %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"addr: :8080", "name: COORDS", "user: svc", "basic_user: ubiqo", "'***'"} {
		if !strings.Contains(out, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out)
		}
	}
}

// Forward targets given as JSON are masked field by field, like those of
// the file: the name and where it points stay readable.
func TestPrintConfigMasksTargetsJSON(t *testing.T) {
	t.Setenv("UBIQO_FORWARD_TARGETS_JSON", `[{"name":"backup","url":"https://svc:url-pass-secret@backup.example/in?key=query-secret",`+
		`"headers":{"Authorization":"Bearer header-secret"},"signing_secret":"whsec_c2lnbmluZy1zZWNyZXQtb2YtMzItYnl0ZXMtbG9uZw=="}]`)
	_, out, err := load(t, Forwarder, "--print-config")
	if !errors.Is(err, ErrShown) {
		t.Fatalf("want ErrShown, got %v", err)
	}
	for _, secret := range []string{"url-pass-secret", "query-secret", "header-secret", "c2lnbmluZy1zZWNyZXQ"} {
		if strings.Contains(out, secret) {
			t.Errorf("--print-config shows secret %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"name: backup", "backup.example/in", "Authorization: '***'", "signing_secret: '***'"} {
		if !strings.Contains(out, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out)
		}
	}
}

func TestMaskDSN(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://app:s3cret@db:5432/coords?sslmode=disable", "postgres://app:***@db:5432/coords?sslmode=disable"},
		{"postgres://db/coords?password=s3cret&user=app", "postgres://db/coords?password=***&user=app"},
		{"host=db user=app password=s3cret dbname=coords", "host=db user=app password=*** dbname=coords"},
		{"host=db password='s3 cret' dbname=coords", "host=db password=*** dbname=coords"},
		// libpq allows spaces around "=" and \' inside quotes.
		{"host=db user=app password = s3cret dbname=coords", "host=db user=app password=*** dbname=coords"},
		{"host=db PASSWORD= 's3 \\'cret' dbname=coords", "host=db PASSWORD=*** dbname=coords"},
		{"host=db sslpassword =k3y password=s3cret", "host=db sslpassword=*** password=***"},
		{"file:./data/coords.db", "file:./data/coords.db"},
		// URLs that do not parse: a bad port, an unescaped % in the password.
		{"postgres://app:pgsecret@127.0.0.1:notaport/x", "postgres://***@127.0.0.1:notaport/x"},
		{"postgres://app:pg%zzsecret@db/x?sslmode=disable&password=p%zz", "postgres://***@db/x?sslmode=disable&password=***"},
		// libpq: a backslash escapes a space in an unquoted value.
		{`host=db password=a\ b dbname=coords`, "host=db password=*** dbname=coords"},
	}
	for _, tt := range tests {
		if got := MaskDSN(tt.in); got != tt.want {
			t.Errorf("MaskDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// Credentials may sit in nats.url (nats://user:pass@host, nats://TOKEN@host):
// --print-config, the start-up log's config and a validation error hide them.
func TestNATSURLCredentialsMasked(t *testing.T) {
	t.Setenv("UBIQO_NATS_URL", "nats://svc:url-pass-secret@n1:4222, nats://tok-secret-xyz@n2:4222,nats://n3:4222")
	t.Setenv("UBIQO_FORWARD_TARGETS_JSON", `[{"name":"backup","url":"https://backup.example/in"}]`)
	for _, b := range []Binary{Bridge, Persister, Alerter, Forwarder} {
		_, out, err := load(t, b, "--print-config")
		if !errors.Is(err, ErrShown) {
			t.Fatalf("%v: want ErrShown, got %v", b, err)
		}
		for _, secret := range []string{"url-pass-secret", "tok-secret-xyz"} {
			if strings.Contains(out, secret) {
				t.Errorf("%v --print-config shows %q:\n%s", b, secret, out)
			}
		}
		if !strings.Contains(out, "svc:***@n1:4222") || !strings.Contains(out, "nats://n3:4222") {
			t.Errorf("%v --print-config hides too much of nats.url:\n%s", b, out)
		}
	}
	for _, u := range []string{"alice:s3cret-x@nats1:4222", "nats://a:b@n0:4222,alice:s3cret-x@nats1:4222"} {
		if got := MaskURLs(u); strings.Contains(got, "s3cret-x") {
			t.Errorf("MaskURLs(%q) = %q: the password is shown", u, got)
		}
	}
	_, _, err := load(t, Bridge, "--nats.url", "http://u:bad-url-secret@h:1")
	if err == nil || strings.Contains(err.Error(), "bad-url-secret") || !strings.Contains(err.Error(), "nats.url") {
		t.Errorf("invalid nats.url: error %v; want it named, without its password", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	_, out, err := load(t, Bridge, "--help")
	if !errors.Is(err, ErrShown) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--config", "--http.addr", "UBIQO_HTTP_ADDR", "--stream.replicas", "bridge token"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	if strings.Contains(out, "--persist.dsn") {
		t.Error("bridge help shows the persister's key persist.dsn")
	}
	_, out, err = load(t, Persister, "--version")
	if !errors.Is(err, ErrShown) || !strings.HasPrefix(out, "persister ") {
		t.Fatalf("--version: %q %v", out, err)
	}
}

// The shipped example must load as it is and show every key the bridge uses.
func TestBridgeExampleFile(t *testing.T) {
	l, _, err := load(t, Bridge, "--config", "bridge.example.yaml")
	if err != nil {
		t.Fatalf("example does not load: %v", err)
	}
	def, _, _ := load(t, Bridge)
	if !reflect.DeepEqual(l.Config, def.Config) {
		t.Errorf("example values differ from the defaults:\n%+v\n%+v", l.Config, def.Config)
	}
	raw, err := os.ReadFile("bridge.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys {
		section := k.Name[:strings.Index(k.Name, ".")]
		switch section {
		case "http", "auth", "nats", "stream", "ingest", "spool", "log":
		default:
			continue
		}
		if !k.usedBy(Bridge) {
			continue
		}
		leaf := k.Name[strings.LastIndex(k.Name, ".")+1:]
		if !strings.Contains(string(raw), "\n  "+leaf+":") && !strings.Contains(string(raw), "\n    "+leaf+":") {
			t.Errorf("example lacks key %s", k.Name)
		}
	}
}

// A bad value from the environment or the file is named like a bad flag:
// key, value, source and the form expected.
func TestBadTextValueNamesKeySourceAndForm(t *testing.T) {
	t.Setenv("UBIQO_STREAM_MAX_AGE", "30d")
	t.Setenv("UBIQO_HTTP_PPROF", "yes")
	_, _, err := load(t, Bridge)
	if err == nil {
		t.Fatal("bad values accepted")
	}
	for _, want := range []string{
		`stream.max_age: "30d" from UBIQO_STREAM_MAX_AGE must be a duration`,
		`http.pprof: "yes" from UBIQO_HTTP_PPROF must be true or false`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// An environment variable of a key another binary uses is not this one's:
// the persister does not fail on the bridge's UBIQO_NATS_MAX_PENDING.
func TestOtherBinarysEnvIgnored(t *testing.T) {
	t.Setenv("UBIQO_NATS_MAX_PENDING", "zz")
	if _, _, err := load(t, Persister); err != nil {
		t.Fatalf("persister: %v", err)
	}
	if _, _, err := load(t, Bridge); err == nil || !strings.Contains(err.Error(), "nats.max_pending") {
		t.Fatalf("bridge accepted nats.max_pending=zz: %v", err)
	}
}

// A number in the file where a duration is expected would be nanoseconds,
// and a fraction for a whole-number key would be cut: both are refused,
// naming the key; so are a forward target's bare-number durations.
func TestFileNumbersNeedTheirUnit(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	body := "http:\n  write_timeout: 30\n  max_body_bytes: 1.5\n  read_timeout: 0\nnats:\n  publish_timeout: 5\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := load(t, Bridge, "--config", file)
	if err == nil {
		t.Fatal("bare numbers accepted")
	}
	for _, want := range []string{
		`http.write_timeout: 30 from the config file must be a duration with its unit, like "30s"`,
		`nats.publish_timeout: 5 from the config file must be a duration with its unit`,
		`http.max_body_bytes: 1.5 from the config file must be a whole number`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "read_timeout") {
		t.Errorf("0 is 0 in any unit, but was refused: %v", err)
	}

	t.Setenv("UBIQO_FORWARD_TARGETS_JSON", `[{"name":"b","url":"http://127.0.0.1:1/x","timeout":10}]`)
	_, _, err = load(t, Forwarder)
	if err == nil || !strings.Contains(err.Error(), `10 must be a duration with its unit, like "10s"`) {
		t.Fatalf("a target's bare-number timeout: %v", err)
	}
}

func TestUnknownFileKeysNamedInFull(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("htp: 1\nhttp:\n  adr: \":1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := load(t, Bridge, "--config", file)
	if err == nil || !strings.Contains(err.Error(), "unknown key(s) in the config file:") ||
		!strings.Contains(err.Error(), "htp") || !strings.Contains(err.Error(), "http.adr") {
		t.Fatalf("want both keys named in full, got %v", err)
	}
}

// "--stream.manage false" leaves "false" over (a bool flag takes no separate
// value): --print-config must not print a configuration that is not the
// one meant.
func TestPrintConfigRefusesLeftoverArguments(t *testing.T) {
	_, _, err := load(t, Bridge, "--print-config", "--stream.manage", "false")
	if err == nil || !strings.Contains(err.Error(), `unexpected argument "false"`) {
		t.Fatalf("want the leftover argument named, got %v", err)
	}
}
