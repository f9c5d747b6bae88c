package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/ubiqo-bridge/ubiqo-bridge/config"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/alert"
)

// root is the repository, seen from this package's directory.
const root = ".."

func path(elem ...string) string { return filepath.Join(append([]string{root}, elem...)...) }

// ---------------------------------------------------------------------------
// docker-compose.yml

type composeFile struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image           string       `yaml:"image"`
	Build           any          `yaml:"build"`
	Command         stringList   `yaml:"command"`
	Environment     envMap       `yaml:"environment"`
	Volumes         []string     `yaml:"volumes"`
	Ports           []string     `yaml:"ports"`
	DependsOn       dependsOn    `yaml:"depends_on"`
	Restart         string       `yaml:"restart"`
	StopGracePeriod string       `yaml:"stop_grace_period"`
	Healthcheck     *healthcheck `yaml:"healthcheck"`
}

type healthcheck struct {
	Test stringList `yaml:"test"`
}

// stringList is a compose field that is a string or a list of strings.
type stringList []string

func (l *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = strings.Fields(n.Value)
		return nil
	}
	var s []string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*l = s
	return nil
}

// envMap is a compose environment: a mapping or a list of KEY=VALUE, values
// not yet interpolated.
type envMap map[string]string

func (e *envMap) UnmarshalYAML(n *yaml.Node) error {
	out := envMap{}
	if n.Kind == yaml.SequenceNode {
		var list []string
		if err := n.Decode(&list); err != nil {
			return err
		}
		for _, kv := range list {
			k, v, _ := strings.Cut(kv, "=")
			out[k] = v
		}
		*e = out
		return nil
	}
	var m map[string]any // decoding into a map resolves << merge keys
	if err := n.Decode(&m); err != nil {
		return err
	}
	for k, v := range m {
		if v == nil {
			out[k] = ""
			continue
		}
		out[k] = fmt.Sprint(v)
	}
	*e = out
	return nil
}

// dependsOn is a compose depends_on: a list of names or a mapping of name to
// {condition}.
type dependsOn map[string]string

func (d *dependsOn) UnmarshalYAML(n *yaml.Node) error {
	out := dependsOn{}
	if n.Kind == yaml.SequenceNode {
		var list []string
		if err := n.Decode(&list); err != nil {
			return err
		}
		for _, s := range list {
			out[s] = "service_started"
		}
		*d = out
		return nil
	}
	var m map[string]struct {
		Condition string `yaml:"condition"`
	}
	if err := n.Decode(&m); err != nil {
		return err
	}
	for k, v := range m {
		out[k] = v.Condition
		if v.Condition == "" {
			out[k] = "service_started"
		}
	}
	*d = out
	return nil
}

// mount is one short-syntax volume of a service.
type mount struct {
	Source, Target string
	Bind           bool // a host path (else a named volume)
}

func (s service) mounts() []mount {
	var out []mount
	for _, v := range s.Volumes {
		parts := strings.Split(interpolate(v), ":")
		if len(parts) < 2 {
			out = append(out, mount{Target: parts[0]}) // anonymous volume
			continue
		}
		src := parts[0]
		out = append(out, mount{Source: src, Target: parts[1],
			Bind: strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") || strings.HasPrefix(src, "~")})
	}
	return out
}

// mountFor returns the mount holding container path p (the longest target
// that is p or a parent of it).
func (s service) mountFor(p string) (mount, bool) {
	var best mount
	found := false
	for _, m := range s.mounts() {
		if (p == m.Target || strings.HasPrefix(p, strings.TrimSuffix(m.Target, "/")+"/")) && len(m.Target) >= len(best.Target) {
			best, found = m, true
		}
	}
	return best, found
}

// hostPath is where a bind mount's source lives in the repository.
func (m mount) hostPath() string {
	if filepath.IsAbs(m.Source) {
		return m.Source
	}
	return path(m.Source)
}

// hostFile is where container path p, inside bind mount m, lives on the host.
func (m mount) hostFile(p string) string {
	return filepath.Join(m.hostPath(), strings.TrimPrefix(p, m.Target))
}

// env returns the service's environment with compose interpolation applied
// as if no variable were set in the shell: the defaults the file ships.
func (s service) env() map[string]string {
	out := make(map[string]string, len(s.Environment))
	for k, v := range s.Environment {
		out[k] = interpolate(v)
	}
	return out
}

// publishedPorts maps host port to container port.
func (s service) publishedPorts(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range s.Ports {
		p = strings.TrimSuffix(strings.TrimSuffix(interpolate(p), "/tcp"), "/udp")
		parts := strings.Split(p, ":")
		if len(parts) < 2 {
			t.Errorf("port %q: publish host:container explicitly", p)
			continue
		}
		out[parts[len(parts)-2]] = parts[len(parts)-1]
	}
	return out
}

var interpRE = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate applies compose variable substitution with every variable
// unset: $$ is $, ${X:-default} and ${X-default} are the default, others are
// empty.
func interpolate(s string) string {
	return interpRE.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := interpRE.FindStringSubmatch(m)
		if sub[2] == ":-" || sub[2] == "-" {
			return interpolate(sub[3])
		}
		return ""
	})
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(path("docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if len(c.Services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	return c
}

// ubiqoService is a compose service running one of the repository's
// programs: built from the repository (build: .) with the program as command.
type ubiqoService struct {
	name string
	svc  service
	bin  config.Binary
	cfg  *config.Loaded // the configuration the program would load
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// binaries lists the programs under cmd/ (every directory but internal).
func binaries(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(path("cmd"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != "internal" && !strings.HasPrefix(e.Name(), ".") && !strings.HasPrefix(e.Name(), "_") {
			out = append(out, e.Name())
		}
	}
	if len(out) == 0 {
		t.Fatal("no program under cmd/")
	}
	return out
}

// keysByEnv indexes config.Keys by environment variable. It is read at test
// time, so keys other packages add in init are included.
func keysByEnv() map[string]config.Key {
	out := make(map[string]config.Key, len(config.Keys))
	for _, k := range config.Keys {
		out[k.EnvName()] = k
	}
	return out
}

// usedBy mirrors the config package's rule: Only lists the binaries that
// use the key; nil means every binary.
func usedBy(k config.Key, b config.Binary) bool {
	return k.Only == nil || slices.Contains(k.Only, b)
}

// clearUbiqoEnv unsets every UBIQO_* variable of the test process until
// the test ends (t.Setenv restores the values), so only what a file sets
// reaches config.Load.
func clearUbiqoEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "UBIQO_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// checkEnvKeys reports every UBIQO_* variable of env (but UBIQO_CONFIG, the
// file) that names no key of config.Keys or a key binary b does not use.
// what names the source in messages.
func checkEnvKeys(t *testing.T, what string, b config.Binary, env map[string]string) {
	t.Helper()
	keys := keysByEnv()
	for _, k := range sortedKeys(env) {
		if !strings.HasPrefix(k, "UBIQO_") || k == "UBIQO_CONFIG" {
			continue
		}
		key, ok := keys[k]
		if !ok {
			t.Errorf("%s: %s names no configuration key (config.Keys): a typo, or a key that was renamed or removed", what, k)
			continue
		}
		if !usedBy(key, b) {
			t.Errorf("%s: %s (%s) is not used by %s (the key is only for %v)", what, k, key.Name, b, key.Only)
		}
	}
}

// loadWithEnv returns the configuration binary b loads with exactly the
// UBIQO_* variables of env: defaults, validation and all.
func loadWithEnv(t *testing.T, b config.Binary, env map[string]string) (*config.Loaded, error) {
	t.Helper()
	clearUbiqoEnv(t)
	defer clearUbiqoEnv(t)
	for k, v := range env {
		if strings.HasPrefix(k, "UBIQO_") && k != "UBIQO_CONFIG" {
			t.Setenv(k, v)
		}
	}
	return config.Load(b, nil, io.Discard)
}

// ubiqoServices returns the compose services running the repository's
// image, each with the configuration its program would load. With check
// it reports every variable that is not a key of the program and every
// configuration that does not load; without, it stops the test at the first
// such service (TestComposeServicesUseExistingKeys says why), so the other
// tests do not repeat those errors.
func ubiqoServices(t *testing.T, c composeFile, check bool) []ubiqoService {
	t.Helper()
	bins := binaries(t)
	var out []ubiqoService
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if s.Build == nil {
			continue
		}
		if len(s.Command) == 0 || !slices.Contains(bins, s.Command[0]) {
			if check {
				t.Errorf("service %s: built from the repository, but its command %q does not start with a program under cmd/ (%v)", name, s.Command, bins)
				continue
			}
			t.Fatalf("service %s: no program as command (see TestComposeServicesUseExistingKeys)", name)
		}
		u := ubiqoService{name: name, svc: s, bin: config.Binary(s.Command[0])}
		what := "docker-compose.yml service " + name
		if check {
			checkEnvKeys(t, what, u.bin, s.env())
		}
		l, err := loadWithEnv(t, u.bin, s.env())
		switch {
		case err != nil && check:
			t.Errorf("%s: %s would not start with this environment: %v", what, u.bin, err)
		case err != nil:
			t.Fatalf("%s: %s would not start with this environment (see TestComposeServicesUseExistingKeys)", what, u.bin)
		}
		u.cfg = l
		out = append(out, u)
	}
	if len(out) == 0 {
		t.Fatal("docker-compose.yml: no service is built from the repository (build: .)")
	}
	return out
}

func isSubscriber(b config.Binary) bool {
	return b == config.Persister || b == config.Alerter || b == config.Forwarder
}

// httpPort is the port of the program's http.addr.
func httpPort(l *config.Loaded) string {
	if l == nil || l.HTTP.Addr == "" {
		return ""
	}
	_, port, err := net.SplitHostPort(l.HTTP.Addr)
	if err != nil {
		return ""
	}
	return port
}

// metricsPort is where a program serves /metrics: the bridge's
// http.admin_addr when set, else http.addr.
func metricsPort(l *config.Loaded) string {
	if l != nil && l.HTTP.AdminAddr != "" {
		if _, port, err := net.SplitHostPort(l.HTTP.AdminAddr); err == nil {
			return port
		}
		return ""
	}
	return httpPort(l)
}

// stopBudget is how long the program may take to stop after SIGTERM with
// this configuration: the HTTP grace, then for the bridge the last publish
// acks, for a subscriber the drain of the batch in flight.
func stopBudget(l *config.Loaded, b config.Binary) time.Duration {
	d := l.HTTP.ShutdownTimeout
	switch {
	case b == config.Bridge:
		d += l.NATS.PublishTimeout
	case isSubscriber(b):
		d += l.Consumer.DrainTimeout
	}
	return d
}

// TestComposeServicesUseExistingKeys: every UBIQO_* variable a service
// sets names a key its program uses, and the program would start with them.
func TestComposeServicesUseExistingKeys(t *testing.T) {
	c := loadCompose(t)
	us := ubiqoServices(t, c, true)
	seen := map[config.Binary]bool{}
	for _, u := range us {
		seen[u.bin] = true
		if u.cfg == nil {
			continue
		}
		if isSubscriber(u.bin) && u.cfg.HTTP.Addr == "" {
			t.Errorf("service %s: set UBIQO_HTTP_ADDR so %s serves /healthz, /readyz and /metrics", u.name, u.bin)
		}
		// Files a key names must be in the container: mounted.
		for k, v := range u.svc.env() {
			if v == "" || !(k == "UBIQO_CONFIG" || strings.HasSuffix(k, "_FILE") || strings.Contains(k, "_TLS_")) {
				continue
			}
			m, ok := u.svc.mountFor(v)
			if !ok {
				t.Errorf("service %s: %s=%s is not inside any volume of the service", u.name, k, v)
				continue
			}
			if m.Bind {
				if _, err := os.Stat(m.hostFile(v)); err != nil {
					t.Errorf("service %s: %s=%s: %v", u.name, k, v, err)
				}
			}
		}
	}
	for _, b := range []config.Binary{config.Bridge, config.Persister, config.Alerter, config.Forwarder} {
		if !seen[b] {
			t.Errorf("docker-compose.yml runs no %s", b)
		}
	}
}

// TestComposeSharedSettings: every program talks to the whole NATS cluster
// and manages the streams with the same settings (each one that manages
// streams would otherwise update them back and forth).
func TestComposeSharedSettings(t *testing.T) {
	c := loadCompose(t)
	us := ubiqoServices(t, c, false)
	nodes := natsNodes(t, c)
	var want []string
	for _, n := range nodes {
		want = append(want, fmt.Sprintf("nats://%s:%d", n.name, n.opts.Port))
	}
	var first *ubiqoService
	for i, u := range us {
		got := strings.Split(u.cfg.NATS.URL, ",")
		for j := range got {
			got[j] = strings.TrimSpace(got[j])
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("service %s: nats.url lists %v, want every NATS node %v", u.name, got, want)
		}
		if u.cfg.Stream.Replicas != len(nodes) {
			t.Errorf("service %s: stream.replicas is %d, want %d (one per NATS node)", u.name, u.cfg.Stream.Replicas, len(nodes))
		}
		if first == nil {
			first = &us[i]
			continue
		}
		if !reflect.DeepEqual(u.cfg.Stream, first.cfg.Stream) {
			t.Errorf("stream settings differ: service %s has %+v, service %s has %+v", u.name, u.cfg.Stream, first.name, first.cfg.Stream)
		}
	}
}

// TestComposeBridges: at least two bridges, each published on its own host
// port, each with a spool volume of its own.
func TestComposeBridges(t *testing.T) {
	c := loadCompose(t)
	us := ubiqoServices(t, c, false)
	hostPorts := map[string]string{}
	volumes := map[string]string{}
	n := 0
	for _, u := range us {
		if u.bin != config.Bridge {
			continue
		}
		n++
		if u.cfg.NATS.URL == "" {
			t.Errorf("service %s: nats.url is empty: the bridge would run its own embedded server instead of using the cluster", u.name)
		}
		port := httpPort(u.cfg)
		published := false
		for host, ctr := range u.svc.publishedPorts(t) {
			if ctr != port {
				continue
			}
			published = true
			if other, dup := hostPorts[host]; dup {
				t.Errorf("services %s and %s both publish host port %s", other, u.name, host)
			}
			hostPorts[host] = u.name
		}
		if !published {
			t.Errorf("service %s: http.addr port %s is not published", u.name, port)
		}
		if u.cfg.Spool.Mode == "spool" {
			dir := u.cfg.Spool.Dir
			if !filepath.IsAbs(dir) {
				dir = filepath.Join("/var/lib/ubiqo-bridge", dir) // the image's WORKDIR
			}
			m, ok := u.svc.mountFor(dir)
			switch {
			case !ok:
				t.Errorf("service %s: spool.dir %s is not on a volume: the spool would die with the container", u.name, dir)
			case m.Bind:
				t.Errorf("service %s: spool.dir %s is on a bind mount; use a named volume per bridge", u.name, dir)
			default:
				if other, dup := volumes[m.Source]; dup {
					t.Errorf("services %s and %s share volume %s: a spool belongs to one bridge", other, u.name, m.Source)
				}
				volumes[m.Source] = u.name
				if _, ok := c.Volumes[m.Source]; !ok {
					t.Errorf("service %s: volume %s is not declared under volumes:", u.name, m.Source)
				}
			}
		}
	}
	if n < 2 {
		t.Errorf("docker-compose.yml runs %d bridge(s), want at least 2", n)
	}
}

// TestComposeLifecycle: restart policies, stop grace periods longer than
// the programs' own, dependencies that exist and can become healthy, pinned
// images, existing bind-mount sources.
func TestComposeLifecycle(t *testing.T) {
	c := loadCompose(t)
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if s.Restart == "" || s.Restart == "no" {
			t.Errorf("service %s: no restart policy", name)
		}
		for dep, cond := range s.DependsOn {
			d, ok := c.Services[dep]
			switch {
			case !ok:
				t.Errorf("service %s depends on %s, which is not a service", name, dep)
			case cond == "service_healthy" && d.Healthcheck == nil:
				t.Errorf("service %s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
		if s.Build == nil {
			img := s.Image
			i := strings.LastIndex(img, ":")
			if img == "" || i < 0 || strings.Contains(img[i:], "/") || img[i+1:] == "latest" {
				t.Errorf("service %s: image %q is not pinned to a tag", name, img)
			}
		} else {
			ctx, _ := s.Build.(string)
			if m, ok := s.Build.(map[string]any); ok {
				ctx, _ = m["context"].(string)
			}
			if _, err := os.Stat(path(ctx, "Dockerfile")); err != nil {
				t.Errorf("service %s: build context %q has no Dockerfile: %v", name, ctx, err)
			}
		}
		for _, m := range s.mounts() {
			if m.Bind {
				if _, err := os.Stat(m.hostPath()); err != nil {
					t.Errorf("service %s: mounts %s, which does not exist: %v", name, m.Source, err)
				}
			} else if m.Source != "" {
				if _, ok := c.Volumes[m.Source]; !ok {
					t.Errorf("service %s: volume %s is not declared under volumes:", name, m.Source)
				}
			}
		}
	}
	for _, u := range ubiqoServices(t, c, false) {
		grace := 10 * time.Second // Docker's default
		if u.svc.StopGracePeriod != "" {
			d, err := time.ParseDuration(u.svc.StopGracePeriod)
			if err != nil {
				t.Errorf("service %s: stop_grace_period: %v", u.name, err)
				continue
			}
			grace = d
		}
		if need := stopBudget(u.cfg, u.bin); grace <= need {
			t.Errorf("service %s: stop_grace_period %s is not longer than the %s %s may take to stop; Docker would kill it mid-shutdown", u.name, grace, need, u.bin)
		}
	}
}

// ---------------------------------------------------------------------------
// NATS cluster

type natsNode struct {
	name string
	svc  service
	conf string // host path of the config file
	opts *server.Options
}

// natsNodes returns the compose services running the nats image, sorted by
// name, each with its parsed server configuration.
func natsNodes(t *testing.T, c composeFile) []natsNode {
	t.Helper()
	var out []natsNode
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if !strings.HasPrefix(s.Image, "nats:") {
			continue
		}
		confPath := ""
		for i, a := range s.Command {
			if (a == "--config" || a == "-c") && i+1 < len(s.Command) {
				confPath = s.Command[i+1]
			}
		}
		if confPath == "" {
			t.Errorf("service %s: command names no --config file", name)
			continue
		}
		m, ok := s.mountFor(confPath)
		if !ok || !m.Bind || m.Target != confPath {
			t.Errorf("service %s: its config %s is not a file mounted from deploy/nats/", name, confPath)
			continue
		}
		// The config may read variables the service sets ($NAME).
		for k, v := range s.env() {
			t.Setenv(k, v)
		}
		opts, err := server.ProcessConfigFile(m.hostPath())
		if err != nil {
			t.Errorf("service %s: %s: %v", name, m.Source, err)
			continue
		}
		out = append(out, natsNode{name: name, svc: s, conf: m.hostPath(), opts: opts})
	}
	if len(out) != 3 {
		t.Fatalf("docker-compose.yml runs %d NATS nodes with a config file, want 3", len(out))
	}
	return out
}

// TestNATSCluster: the three node configs agree with each other and with
// the compose services.
func TestNATSCluster(t *testing.T) {
	c := loadCompose(t)
	nodes := natsNodes(t, c)
	names := map[string]string{}
	stores := map[string]string{}
	used := map[string]bool{}
	for _, n := range nodes {
		o := n.opts
		used[filepath.Clean(n.conf)] = true
		if o.ServerName != n.name {
			t.Errorf("%s: server_name %q, want the compose service name %q", n.conf, o.ServerName, n.name)
		}
		if other, dup := names[o.ServerName]; dup {
			t.Errorf("%s and %s: same server_name %q", other, n.conf, o.ServerName)
		}
		names[o.ServerName] = n.conf
		if o.Cluster.Name == "" || o.Cluster.Name != nodes[0].opts.Cluster.Name {
			t.Errorf("%s: cluster name %q, want the same non-empty name on every node (%s has %q)", n.conf, o.Cluster.Name, nodes[0].conf, nodes[0].opts.Cluster.Name)
		}
		if o.Cluster.Port <= 0 {
			t.Errorf("%s: no cluster listen port", n.conf)
		}
		routes := map[string]bool{}
		for _, r := range o.Routes {
			routes[r.Host] = true
		}
		for _, peer := range nodes {
			want := net.JoinHostPort(peer.name, strconv.Itoa(peer.opts.Cluster.Port))
			if !routes[want] {
				t.Errorf("%s: routes %v lack %s (node %s's cluster address)", n.conf, o.Routes, want, peer.name)
			}
			delete(routes, want)
		}
		for r := range routes {
			t.Errorf("%s: route %s is not a node of the compose cluster", n.conf, r)
		}
		if !o.JetStream {
			t.Errorf("%s: JetStream is not enabled", n.conf)
		}
		if o.SystemAccount == "" {
			t.Errorf("%s: no system_account: operators cannot run nats server list / report jetstream", n.conf)
		}
		m, ok := n.svc.mountFor(o.StoreDir)
		switch {
		case o.StoreDir == "" || !filepath.IsAbs(o.StoreDir):
			t.Errorf("%s: jetstream store_dir %q: want an absolute path on a volume", n.conf, o.StoreDir)
		case !ok || m.Bind:
			t.Errorf("%s: jetstream store_dir %s is not on a named volume of service %s", n.conf, o.StoreDir, n.name)
		default:
			if other, dup := stores[m.Source]; dup {
				t.Errorf("nodes %s and %s share volume %s", other, n.name, m.Source)
			}
			stores[m.Source] = n.name
		}
		if o.HTTPPort <= 0 {
			t.Errorf("%s: no http monitoring port", n.conf)
		} else if n.svc.Healthcheck == nil || !strings.Contains(strings.Join(n.svc.Healthcheck.Test, " "), ":"+strconv.Itoa(o.HTTPPort)+"/healthz") {
			t.Errorf("service %s: want a healthcheck on the monitoring port's /healthz (:%d)", n.name, o.HTTPPort)
		}
	}
	// The cluster must take every message the bridge makes: a coordinate
	// carries its raw item (up to http.max_body_bytes) and its unmapped
	// fields again.
	for _, u := range ubiqoServices(t, c, false) {
		if u.bin != config.Bridge {
			continue
		}
		for _, n := range nodes {
			if int64(n.opts.MaxPayload) < 2*u.cfg.HTTP.MaxBodyBytes {
				t.Errorf("%s: max_payload %d is below twice the http.max_body_bytes of %s (%d)", n.conf, n.opts.MaxPayload, u.name, u.cfg.HTTP.MaxBodyBytes)
			}
		}
	}
	// Every config under deploy/nats is used.
	files, _ := filepath.Glob(path("deploy", "nats", "*.conf"))
	for _, f := range files {
		if !used[filepath.Clean(f)] {
			t.Errorf("%s is mounted by no compose service", f)
		}
	}
	// The image runs the server release the tests run against (go.mod).
	gomod, err := os.ReadFile(path("go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`github\.com/nats-io/nats-server/v2 v(\d+\.\d+)\.`).FindSubmatch(gomod)
	for _, n := range nodes {
		if want == nil {
			break
		}
		if !strings.HasPrefix(n.svc.Image, "nats:"+string(want[1])+".") && !strings.HasPrefix(n.svc.Image, "nats:"+string(want[1])+"-") {
			t.Errorf("service %s: image %s, want nats:%s.x like the nats-server in go.mod", n.name, n.svc.Image, want[1])
		}
	}
}

// ---------------------------------------------------------------------------
// Dockerfile

type instruction struct {
	cmd, args string
}

func dockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open(path("Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		cont := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSuffix(line, "\\"))
		cur.WriteString(" ")
		if cont {
			continue
		}
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDockerfile: multi-stage, static, non-root, every program built and
// copied into the final image.
func TestDockerfile(t *testing.T) {
	ins := dockerfile(t)
	var stages [][]instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], in)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a build stage and a runtime stage", len(stages))
	}
	final := stages[len(stages)-1]
	if strings.Contains(final[0].args, "golang") {
		t.Errorf("final stage is FROM %s: want a minimal runtime image, not the Go toolchain", final[0].args)
	}
	var build string
	for _, st := range stages[:len(stages)-1] {
		for _, in := range st {
			if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
				build = in.args
				if !strings.Contains(in.args, "CGO_ENABLED=0") {
					t.Errorf("go build without CGO_ENABLED=0: %s", in.args)
				}
			}
		}
	}
	if build == "" {
		t.Fatal("no RUN go build in a build stage")
	}
	user := ""
	var copied []string
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "COPY":
			if strings.Contains(in.args, "--from=") {
				copied = append(copied, strings.Fields(in.args)...)
			}
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		t.Errorf("final stage runs as %q: want a non-root USER", user)
	}
	for _, b := range binaries(t) {
		if !regexp.MustCompile(`(^|\s)\./cmd/` + regexp.QuoteMeta(b) + `(\s|$)`).MatchString(build) {
			t.Errorf("Dockerfile does not build ./cmd/%s", b)
		}
		found := false
		for _, c := range copied {
			found = found || strings.HasSuffix(c, "/"+b)
		}
		if !found {
			t.Errorf("Dockerfile does not copy %s into the final image", b)
		}
	}
	ignore, err := os.ReadFile(path(".dockerignore"))
	if err != nil {
		t.Fatalf("no .dockerignore: the build context would carry .git and local data: %v", err)
	}
	lines := strings.Fields(string(ignore))
	for _, want := range []string{".git", "data", ".env"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}

// ---------------------------------------------------------------------------
// Metrics: Prometheus configuration, alert rules, Grafana dashboard

type metricDef struct{ kind, file string }

var (
	metricNameRE = regexp.MustCompile(`Name:\s*"(ubiqo_[a-zA-Z0-9_]+)"`)
	metricOptsRE = regexp.MustCompile(`(Counter|Gauge|Histogram|Summary)Opts\{`)
	metricUseRE  = regexp.MustCompile(`\bubiqo_[a-zA-Z0-9_]+`)
)

// definedMetrics finds every ubiqo_* metric the Go sources under bridge/
// and subscribers/ define, with its type (the nearest XxxOpts before it).
func definedMetrics(t *testing.T) map[string]metricDef {
	t.Helper()
	out := map[string]metricDef{}
	for _, dir := range []string{"bridge", "subscribers"} {
		err := filepath.WalkDir(path(dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			src, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range metricNameRE.FindAllSubmatchIndex(src, -1) {
				kind := "unknown"
				for _, o := range metricOptsRE.FindAllSubmatchIndex(src[:m[0]], -1) {
					kind = string(src[o[2]:o[3]])
				}
				out[string(src[m[2]:m[3]])] = metricDef{kind: kind, file: p}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(out) == 0 {
		t.Fatal("found no ubiqo_* metric in the sources")
	}
	return out
}

// checkMetrics reports every ubiqo_* name in expr that the code does not
// define; _bucket needs a histogram, _sum and _count a histogram or summary.
func checkMetrics(t *testing.T, where, expr string, defs map[string]metricDef) []string {
	t.Helper()
	var used []string
	for _, name := range metricUseRE.FindAllString(expr, -1) {
		used = append(used, name)
		if _, ok := defs[name]; ok {
			continue
		}
		ok := false
		for suffix, kinds := range map[string][]string{"_bucket": {"Histogram"}, "_sum": {"Histogram", "Summary"}, "_count": {"Histogram", "Summary"}} {
			if base, cut := strings.CutSuffix(name, suffix); cut {
				if d, found := defs[base]; found && slices.Contains(kinds, d.kind) {
					ok = true
				}
			}
		}
		if !ok {
			t.Errorf("%s: metric %s is not defined under bridge/ or subscribers/ (expr: %s)", where, name, oneLine(expr))
		}
	}
	return used
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

type promConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
		DNSSDConfigs []struct {
			Names []string `yaml:"names"`
			Type  string   `yaml:"type"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
	} `yaml:"scrape_configs"`
}

func loadPromConfig(t *testing.T) promConfig {
	t.Helper()
	data, err := os.ReadFile(path("deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var p promConfig
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("deploy/prometheus/prometheus.yml: %v", err)
	}
	return p
}

// TestPrometheusConfig: Prometheus scrapes every program of the compose
// stack on its http.addr port and loads rule files it has mounted.
func TestPrometheusConfig(t *testing.T) {
	c := loadCompose(t)
	p := loadPromConfig(t)
	prom, ok := c.Services["prometheus"]
	if !ok {
		t.Fatal("docker-compose.yml has no prometheus service")
	}
	if m, ok := prom.mountFor("/etc/prometheus/prometheus.yml"); !ok || !m.Bind || filepath.Clean(m.hostPath()) != filepath.Clean(path("deploy", "prometheus", "prometheus.yml")) {
		t.Errorf("service prometheus does not mount deploy/prometheus/prometheus.yml at /etc/prometheus/prometheus.yml")
	}
	if len(p.RuleFiles) == 0 {
		t.Error("prometheus.yml loads no rule_files")
	}
	for _, rf := range p.RuleFiles {
		m, ok := prom.mountFor(rf)
		if !ok || !m.Bind {
			t.Errorf("rule file %s is not mounted into the prometheus service", rf)
			continue
		}
		if filepath.Clean(m.hostPath()) != filepath.Clean(path("deploy", "prometheus", "alerts.yml")) {
			t.Errorf("rule file %s comes from %s, want deploy/prometheus/alerts.yml", rf, m.Source)
		}
	}
	ports := map[string]string{} // service -> the port of its /metrics
	for _, u := range ubiqoServices(t, c, false) {
		ports[u.name] = metricsPort(u.cfg)
	}
	scraped := map[string]bool{}
	jobs := map[string]bool{}
	for _, sc := range p.ScrapeConfigs {
		if jobs[sc.JobName] {
			t.Errorf("job %s is defined twice", sc.JobName)
		}
		jobs[sc.JobName] = true
		check := func(host, port string) {
			want, ours := ports[host]
			if _, svc := c.Services[host]; !svc && host != "localhost" {
				t.Errorf("job %s scrapes %s, which is not a compose service", sc.JobName, host)
			}
			if ours && port != want {
				t.Errorf("job %s scrapes %s on port %s, but it serves /metrics on port %q (http.admin_addr, else http.addr)", sc.JobName, host, port, want)
			}
			scraped[host] = true
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Errorf("job %s: target %q: %v", sc.JobName, target, err)
					continue
				}
				check(host, port)
			}
		}
		for _, d := range sc.DNSSDConfigs {
			for _, name := range d.Names {
				check(name, strconv.Itoa(d.Port))
			}
		}
	}
	for name := range ports {
		if !scraped[name] {
			t.Errorf("service %s is scraped by no job", name)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var (
	jobEqRE    = regexp.MustCompile(`\bjob\s*=\s*"([^"]*)"`)
	jobMatchRE = regexp.MustCompile(`\bjob\s*=~\s*"([^"]*)"`)
	alertRE    = regexp.MustCompile(`^[A-Z][A-Za-z0-9]+$`)
)

// checkJobs reports job matchers in expr that select no scrape job.
func checkJobs(t *testing.T, where, expr string, jobs []string) {
	t.Helper()
	for _, m := range jobEqRE.FindAllStringSubmatch(expr, -1) {
		if !slices.Contains(jobs, m[1]) {
			t.Errorf("%s: job %q is not a job of prometheus.yml (%v)", where, m[1], jobs)
		}
	}
	for _, m := range jobMatchRE.FindAllStringSubmatch(expr, -1) {
		re, err := regexp.Compile("^(?:" + m[1] + ")$")
		if err != nil {
			t.Errorf("%s: job regexp %q: %v", where, m[1], err)
			continue
		}
		if !slices.ContainsFunc(jobs, re.MatchString) {
			t.Errorf("%s: job=~%q selects no job of prometheus.yml (%v)", where, m[1], jobs)
		}
	}
}

func jobNames(p promConfig) []string {
	var out []string
	for _, sc := range p.ScrapeConfigs {
		out = append(out, sc.JobName)
	}
	return out
}

// TestAlertRules: the rules parse, are complete (severity, summary,
// description, runbook) and use only metrics the code defines and jobs
// Prometheus scrapes.
func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile(path("deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("deploy/prometheus/alerts.yml: %v", err)
	}
	defs := definedMetrics(t)
	jobs := jobNames(loadPromConfig(t))
	names := map[string]bool{}
	n := 0
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: needs a name and rules", g.Name)
		}
		for _, r := range g.Rules {
			n++
			where := "alert " + r.Alert
			if !alertRE.MatchString(r.Alert) {
				t.Errorf("group %s: rule %q: want an alert name in CamelCase", g.Name, r.Alert)
			}
			if names[r.Alert] {
				t.Errorf("%s is defined twice", where)
			}
			names[r.Alert] = true
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for: %v", where, err)
				}
			}
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("%s: severity label %q, want critical, warning or info", where, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") || strings.Count(r.Expr, "{") != strings.Count(r.Expr, "}") {
				t.Errorf("%s: unbalanced brackets in %s", where, oneLine(r.Expr))
			}
			used := checkMetrics(t, where, r.Expr, defs)
			if len(used) == 0 && !strings.Contains(r.Expr, "up{") {
				t.Errorf("%s: expr uses no ubiqo_* metric and no up{job=...}: %s", where, oneLine(r.Expr))
			}
			checkJobs(t, where, r.Expr, jobs)
		}
	}
	if n == 0 {
		t.Fatal("alerts.yml has no rule")
	}
	// The alerts the deployment promises.
	for _, want := range []string{"UbiqoBridgeHigh5xxRate", "UbiqoBridgeSpoolGrowing", "UbiqoBridgeNATSDisconnected", "UbiqoConsumerLagHigh", "UbiqoMessagesDeadLettered", "UbiqoPersisterDatabaseDown"} {
		if !names[want] {
			t.Errorf("alerts.yml has no %s", want)
		}
	}
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr       string `json:"expr"`
		RefID      string `json:"refId"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

// TestGrafanaDashboard: the dashboard parses, takes its data source from a
// variable, and queries only metrics the code defines; Grafana's
// provisioning in the compose stack finds it.
func TestGrafanaDashboard(t *testing.T) {
	file := path("deploy", "grafana", "ubiqo-bridge.json")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		t.Fatal("dashboard has no Prometheus data source variable")
	}
	defs := definedMetrics(t)
	jobs := jobNames(loadPromConfig(t))
	used := map[string]bool{}
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: bad gridPos", p.Title)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			where := fmt.Sprintf("panel %q", p.Title)
			if p.Datasource == nil || p.Datasource.UID != "${"+dsVar+"}" {
				t.Errorf("%s: data source is not ${%s}", where, dsVar)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			for _, q := range p.Targets {
				if q.Datasource != nil && q.Datasource.UID != "${"+dsVar+"}" {
					t.Errorf("%s: query %s: data source is not ${%s}", where, q.RefID, dsVar)
				}
				if strings.TrimSpace(q.Expr) == "" {
					t.Errorf("%s: query %s is empty", where, q.RefID)
				}
				for _, m := range checkMetrics(t, where, q.Expr, defs) {
					used[m] = true
				}
				checkJobs(t, where, q.Expr, jobs)
			}
		}
	}
	walk(d.Panels)
	// What the dashboard promises to show.
	for _, want := range []string{
		"ubiqo_bridge_http_requests_total", "ubiqo_bridge_http_request_duration_seconds_bucket",
		"ubiqo_bridge_coordinates_total", "ubiqo_bridge_publish_duration_seconds_bucket",
		"ubiqo_bridge_spool_records", "ubiqo_bridge_nats_connected",
		"ubiqo_subscriber_messages_total", "ubiqo_subscriber_pending_messages",
		"ubiqo_subscriber_batch_duration_seconds_bucket",
	} {
		if !used[want] {
			t.Errorf("dashboard does not show %s", want)
		}
	}

	// Provisioning: the compose stack mounts the dashboard where the
	// provider looks, and the data source points at the prometheus service.
	c := loadCompose(t)
	g, ok := c.Services["grafana"]
	if !ok {
		t.Skip("no grafana service in docker-compose.yml")
	}
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, path("deploy", "grafana", "provisioning", "dashboards", "ubiqo-bridge.yml"), &prov)
	mounted := false
	for _, m := range g.mounts() {
		if m.Bind && filepath.Clean(m.hostPath()) == filepath.Clean(file) {
			for _, p := range prov.Providers {
				mounted = mounted || filepath.Dir(m.Target) == filepath.Clean(p.Options.Path)
			}
		}
	}
	if !mounted {
		t.Error("service grafana does not mount deploy/grafana/ubiqo-bridge.json into a dashboard provider's path")
	}
	if m, ok := g.mountFor("/etc/grafana/provisioning/dashboards"); !ok || !m.Bind {
		t.Error("service grafana does not mount the provisioning directory")
	}
	var ds struct {
		Datasources []struct {
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(t, path("deploy", "grafana", "provisioning", "datasources", "prometheus.yml"), &ds)
	for _, s := range ds.Datasources {
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Errorf("data source url %q: %v", s.URL, err)
			continue
		}
		if _, ok := c.Services[u.Hostname()]; !ok {
			t.Errorf("data source url %s: %s is not a compose service", s.URL, u.Hostname())
		}
	}
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// TestAlerterExampleRules: the rule file the compose stack mounts compiles.
func TestAlerterExampleRules(t *testing.T) {
	c := loadCompose(t)
	n := 0
	for _, u := range ubiqoServices(t, c, false) {
		if u.bin != config.Alerter {
			continue
		}
		n++
		m, ok := u.svc.mountFor(u.cfg.Alert.RulesFile)
		if !ok || !m.Bind {
			t.Errorf("service %s: alert.rules_file %s is not mounted from the repository", u.name, u.cfg.Alert.RulesFile)
			continue
		}
		rules, err := alert.LoadRules(m.hostFile(u.cfg.Alert.RulesFile))
		if err != nil {
			t.Errorf("service %s: %v", u.name, err)
			continue
		}
		if rules.Len() == 0 {
			t.Errorf("%s has no rule", m.Source)
		}
	}
	if n == 0 {
		t.Error("no alerter service with a rule file")
	}
}

// ---------------------------------------------------------------------------
// systemd units

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func parseUnit(t *testing.T, file string) unitFile {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	for i, line := range strings.Split(strings.ReplaceAll(string(data), "\\\n", " "), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Errorf("%s:%d: not key=value in a section: %q", file, i+1, line)
				continue
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

// parseTimespan reads a systemd time span such as 45s, 1min 30s, 2m or 90.
func parseTimespan(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	units := map[string]time.Duration{"ms": time.Millisecond, "s": time.Second, "sec": time.Second, "m": time.Minute, "min": time.Minute, "h": time.Hour, "hr": time.Hour}
	var total time.Duration
	re := regexp.MustCompile(`(\d+)\s*([a-z]+)`)
	rest := re.ReplaceAllStringFunc(s, func(m string) string {
		p := re.FindStringSubmatch(m)
		n, _ := strconv.Atoi(p[1])
		u, ok := units[p[2]]
		if !ok {
			return m
		}
		total += time.Duration(n) * u
		return ""
	})
	if strings.TrimSpace(rest) != "" || total == 0 {
		return 0, fmt.Errorf("time span %q", s)
	}
	return total, nil
}

// parseEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, # comments,
// values optionally in single (literal) or double quotes.
func parseEnvFile(t *testing.T, file string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s:%d: not KEY=VALUE: %q", file, i+1, line)
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') {
			if v[len(v)-1] != v[0] {
				t.Errorf("%s:%d: unterminated quote", file, i+1)
			}
			v = v[1 : len(v)-1]
		}
		out[strings.TrimSpace(k)] = v
	}
	return out
}

// TestSystemdUnits: one hardened unit per long-running program, with an
// example environment file whose variables are keys the program uses, and a
// stop timeout longer than the program's own shutdown.
func TestSystemdUnits(t *testing.T) {
	for _, b := range []config.Binary{config.Bridge, config.Persister, config.Alerter, config.Forwarder} {
		t.Run(string(b), func(t *testing.T) {
			file := path("deploy", "systemd", "ubiqo-"+string(b)+".service")
			u := parseUnit(t, file)
			for _, s := range []string{"Unit", "Service", "Install"} {
				if u[s] == nil {
					t.Errorf("%s: no [%s] section", file, s)
				}
			}
			exec := strings.Fields(strings.TrimLeft(u.get("Service", "ExecStart"), "-@:+!"))
			if len(exec) == 0 || filepath.Base(exec[0]) != string(b) || !filepath.IsAbs(exec[0]) {
				t.Errorf("%s: ExecStart=%s, want the absolute path of %s", file, u.get("Service", "ExecStart"), b)
			}
			want := map[string]string{
				"NoNewPrivileges": "yes",
				"ProtectSystem":   "strict",
				"StateDirectory":  "ubiqo-bridge",
				"Restart":         "on-failure",
				"PrivateTmp":      "yes",
				"ProtectHome":     "yes",
			}
			for k, v := range want {
				if got := u.get("Service", k); got != v {
					t.Errorf("%s: %s=%q, want %q", file, k, got, v)
				}
			}
			if user := u.get("Service", "User"); u.get("Service", "DynamicUser") != "yes" && (user == "" || user == "root" || user == "0") {
				t.Errorf("%s: runs as root: set User= (a dedicated user) or DynamicUser=yes", file)
			}
			envFile := "-/etc/ubiqo-bridge/" + string(b) + ".env"
			if !slices.Contains(u["Service"]["EnvironmentFile"], envFile) {
				t.Errorf("%s: no EnvironmentFile=%s", file, envFile)
			}
			if u.get("Install", "WantedBy") == "" {
				t.Errorf("%s: no WantedBy= in [Install]", file)
			}

			example := path("deploy", "systemd", string(b)+".env")
			env := parseEnvFile(t, example)
			checkEnvKeys(t, example, b, env)
			l, err := loadWithEnv(t, b, env)
			if err != nil {
				t.Fatalf("%s: %s would not start with this environment: %v", example, b, err)
			}
			stop, err := parseTimespan(u.get("Service", "TimeoutStopSec"))
			if err != nil {
				t.Fatalf("%s: TimeoutStopSec: %v", file, err)
			}
			if need := stopBudget(l, b); stop <= need {
				t.Errorf("%s: TimeoutStopSec=%s is not longer than the %s %s may take to stop with %s", file, stop, need, b, example)
			}
			if isSubscriber(b) && l.HTTP.Addr == "" {
				t.Errorf("%s: set UBIQO_HTTP_ADDR so %s serves health and metrics", example, b)
			}
		})
	}
	// No stray unit for a program that does not exist.
	units, _ := filepath.Glob(path("deploy", "systemd", "*.service"))
	bins := binaries(t)
	for _, f := range units {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "ubiqo-"), ".service")
		if !slices.Contains(bins, name) {
			t.Errorf("%s: no program cmd/%s", f, name)
		}
	}
}
