package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/go-viper/mapstructure/v2"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Version is the version printed by --version; set at build time with
// -ldflags "-X github.com/ubiqo-bridge/ubiqo-bridge/config.Version=v1.2.3".
var Version = "dev"

// ErrShown is returned by Load when it has printed what was asked (--help,
// --version, --print-config) and the program should exit with status 0.
var ErrShown = errors.New("config: shown")

// Loaded is the result of Load.
type Loaded struct {
	*Config
	// Args are the positional arguments left after the flags.
	Args []string
	// File is the configuration file that was read, or empty.
	File string
	// settings is the effective configuration as a nested map, for Masked.
	settings map[string]any
}

// Masked returns the effective configuration as a nested map with every
// secret replaced, fit for logging or printing.
func (l *Loaded) Masked() map[string]any { return maskSettings(l.settings) }

// Load builds the configuration of binary b from args (without the program
// name): a YAML file named by --config (or UBIQO_CONFIG), then UBIQO_*
// environment variables, then flags. It validates the result and returns an
// error naming every bad key. With --help, --version or --print-config it
// writes to stdout and returns ErrShown.
func Load(b Binary, args []string, stdout io.Writer) (*Loaded, error) {
	v := viper.New()
	fs := pflag.NewFlagSet(string(b), pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	cfgFile := fs.String("config", os.Getenv("UBIQO_CONFIG"), "YAML configuration file (env UBIQO_CONFIG)")
	help := fs.BoolP("help", "h", false, "show this help and exit")
	version := fs.Bool("version", false, "print the version and exit")
	printCfg := fs.Bool("print-config", false, "print the effective configuration (secrets masked) and exit")

	overrides := defaultsFor(b)
	for _, k := range Keys {
		def := k.Default
		if o, ok := overrides[k.Name]; ok {
			def = o
		}
		v.SetDefault(k.Name, def)
		if !k.usedBy(b) {
			// Another binary's key: its environment variable (set for
			// that binary) is none of this one's business.
			continue
		}
		if err := v.BindEnv(k.Name, k.EnvName()); err != nil {
			return nil, fmt.Errorf("config: bind %s: %w", k.Name, err)
		}
		if addFlag(fs, b, k, def) {
			if err := v.BindPFlag(k.Name, fs.Lookup(k.Name)); err != nil {
				return nil, fmt.Errorf("config: bind flag %s: %w", k.Name, err)
			}
		}
	}

	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w (see %s --help)", err, b)
	}
	if *help {
		writeUsage(stdout, b, fs)
		return nil, ErrShown
	}
	if *version {
		fmt.Fprintf(stdout, "%s %s\n", b, Version)
		return nil, ErrShown
	}

	l := &Loaded{Args: fs.Args(), File: *cfgFile}
	if *cfgFile != "" {
		v.SetConfigFile(*cfgFile)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("config file %s: %w", *cfgFile, err)
		}
	}

	if err := checkTypes(v, b, overrides); err != nil {
		return nil, err
	}
	var c Config
	if err := v.UnmarshalExact(&c, refuseBareNumberDurations); err != nil {
		return nil, decodeError(err)
	}
	trimLists(reflect.ValueOf(&c).Elem())
	if err := c.Validate(b); err != nil {
		return nil, err
	}
	l.Config = &c
	l.settings = settingsFor(v, b)
	if *printCfg {
		if len(l.Args) > 0 {
			// A bool flag takes no separate value: "--stream.manage false"
			// leaves "false" over, and the configuration printed would
			// not be the one meant.
			return nil, fmt.Errorf("unexpected argument %q (a true/false flag is written --key=false)", l.Args[0])
		}
		out, err := yaml.Marshal(l.Masked())
		if err != nil {
			return nil, fmt.Errorf("config: print: %w", err)
		}
		_, _ = stdout.Write(out)
		return nil, ErrShown
	}
	return l, nil
}

// settingsFor returns the effective values of the keys binary b uses, as a
// nested map like the YAML file.
func settingsFor(v *viper.Viper, b Binary) map[string]any {
	out := map[string]any{}
	for _, k := range Keys {
		if !k.usedBy(b) {
			continue
		}
		parts := strings.Split(k.Name, ".")
		m := out
		for _, p := range parts[:len(parts)-1] {
			sub, ok := m[p].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[p] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = v.Get(k.Name)
	}
	return out
}

// addFlag registers a flag for key k with default def; keys whose type has
// no flag form (maps) are left to the file and report false.
func addFlag(fs *pflag.FlagSet, b Binary, k Key, def any) bool {
	usage := k.Usage
	if k.Name == "nats.url" && b != Bridge {
		// Only the bridge embeds a server; the others connect to it.
		usage = "NATS server URLs, comma-separated; empty = nats://127.0.0.1:4222 (the bridge's embedded server on its default port)"
	}
	usage += " (env " + k.EnvName() + ")"
	switch d := def.(type) {
	case string:
		shown := d
		if k.Secret {
			shown = ""
		}
		fs.String(k.Name, shown, usage)
	case int:
		fs.Int(k.Name, d, usage)
	case int64:
		fs.Int64(k.Name, d, usage)
	case float64:
		fs.Float64(k.Name, d, usage)
	case bool:
		fs.Bool(k.Name, d, usage)
	case time.Duration:
		fs.Duration(k.Name, d, usage)
	case []string:
		fs.StringSlice(k.Name, d, usage)
	default:
		return false
	}
	return true
}

func writeUsage(w io.Writer, b Binary, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s [flags]%s\n\n", b, usageTail(b))
	fmt.Fprintf(w, "Configuration comes from a YAML file (--config), then UBIQO_* environment\nvariables, then these flags. Lists are comma-separated.\n\nFlags:\n")
	fmt.Fprint(w, fs.FlagUsagesWrapped(100))
}

func usageTail(b Binary) string {
	switch b {
	case Bridge:
		return "\n       bridge token [flags] DEVICE_ID   print the subject of a device id" +
			"\n       bridge set-aside [--publish] [flags]  list the coordinates set aside in spool.dir for their size;" +
			"\n                                        --publish stores them once the server takes them"
	default:
		return ""
	}
}

func envName(key string) string {
	return "UBIQO_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// secretKeys are the dotted names whose values are masked.
func secretKeys() map[string]bool {
	m := make(map[string]bool)
	for _, k := range Keys {
		if k.Secret {
			m[k.Name] = true
		}
	}
	return m
}

const masked = "***"

// maskTargets copies forward targets with their secrets masked field by
// field, so --print-config still shows each target's name, where it points
// and its settings: header values and the signing secret become ***, and
// the URL loses its password and query values (RedactURL).
func maskTargets(list []any) []any {
	out := make([]any, len(list))
	for i, t := range list {
		m, ok := t.(map[string]any)
		if !ok {
			out[i] = masked
			continue
		}
		c := make(map[string]any, len(m))
		for k, v := range m {
			switch strings.ToLower(k) {
			case "headers":
				if h, ok := v.(map[string]any); ok {
					hm := make(map[string]any, len(h))
					for hk := range h {
						hm[hk] = masked
					}
					v = hm
				} else if v != nil {
					v = masked
				}
			case "signing_secret":
				if s, ok := v.(string); !ok || s != "" {
					v = masked
				}
			case "url":
				if s, ok := v.(string); ok {
					v = RedactURL(s)
				} else if v != nil {
					v = masked
				}
			}
			c[k] = v
		}
		out[i] = c
	}
	return out
}

// maskSettings copies a nested settings map, masking secrets. A DSN keeps
// everything but its password, so an operator can still see where it points.
func maskSettings(s map[string]any) map[string]any {
	secrets := secretKeys()
	var walk func(prefix string, in map[string]any) map[string]any
	walk = func(prefix string, in map[string]any) map[string]any {
		out := make(map[string]any, len(in))
		keys := make([]string, 0, len(in))
		for k := range in {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := k
			if prefix != "" {
				name = prefix + "." + k
			}
			val := in[k]
			if sub, ok := val.(map[string]any); ok {
				out[k] = walk(name, sub)
				continue
			}
			if secrets[name] {
				out[k] = maskValue(name, val)
				continue
			}
			if name == "nats.url" {
				if u, ok := val.(string); ok {
					out[k] = MaskURLs(u) // credentials may sit in the URL
					continue
				}
			}
			if name == "simulator.url" {
				if u, ok := val.(string); ok {
					out[k] = RedactURL(u) // a ?token= the bridge accepts
					continue
				}
			}
			if d, ok := val.(time.Duration); ok {
				val = d.String() // as written in the file, not nanoseconds
			}
			out[k] = val
		}
		return out
	}
	return walk("", s)
}

func maskValue(name string, val any) any {
	switch name {
	case "forward.targets":
		if list, ok := val.([]any); ok {
			return maskTargets(list)
		}
	case "forward.targets_json":
		if s, ok := val.(string); ok && s != "" {
			var list []any
			if json.Unmarshal([]byte(s), &list) == nil {
				return maskTargets(list)
			}
		}
	}
	switch x := val.(type) {
	case string:
		if x == "" {
			return ""
		}
		if strings.HasSuffix(name, "dsn") {
			return MaskDSN(x)
		}
		return masked
	case []string:
		if len(x) == 0 {
			return x
		}
		out := make([]string, len(x))
		for i := range out {
			out[i] = masked
		}
		return out
	case []any:
		if len(x) == 0 {
			return x
		}
		out := make([]any, len(x))
		for i := range out {
			out[i] = masked
		}
		return out
	default:
		if val == nil {
			return nil
		}
		return masked
	}
}

// trimLists trims the entries of every string list in v (a struct), so
// UBIQO_AUTH_TOKENS="a, b" means "a" and "b", not "a" and " b": a token with
// a leading space could never match, as header values arrive trimmed.
func trimLists(v reflect.Value) {
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch {
		case f.Kind() == reflect.Struct:
			trimLists(f)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
			for j := 0; j < f.Len(); j++ {
				e := f.Index(j)
				e.SetString(strings.TrimSpace(e.String()))
			}
		}
	}
}

// checkTypes checks the values given as text (environment, file) of the
// keys binary b uses against their type, so a bad one is named with its key,
// its value, where it came from and the form expected, as flags are, rather
// than in the decoder's terms.
func checkTypes(v *viper.Viper, b Binary, overrides map[string]any) error {
	var errs []error
	for _, k := range Keys {
		if !k.usedBy(b) {
			continue
		}
		def := k.Default
		if o, ok := overrides[k.Name]; ok {
			def = o
		}
		raw := v.Get(k.Name)
		if want, shown := checkFileNumber(raw, def); want != "" {
			errs = append(errs, fmt.Errorf("config: %s: %s from the config file must be %s", k.Name, shown, want))
			continue
		}
		str, ok := raw.(string)
		if !ok || str == "" {
			continue // typed already (a flag), or empty: as the decoder takes it
		}
		var want string
		switch def.(type) {
		case time.Duration:
			if _, err := time.ParseDuration(str); err != nil {
				want = `a duration like "30s", "5m" or "48h"`
			}
		case bool:
			if _, err := strconv.ParseBool(str); err != nil {
				want = "true or false"
			}
		case int, int64:
			if _, err := strconv.ParseInt(str, 0, 64); err != nil {
				want = "a whole number"
			}
		case float64:
			if _, err := strconv.ParseFloat(str, 64); err != nil {
				want = "a number"
			}
		}
		if want == "" {
			continue
		}
		from := "the config file"
		if _, set := os.LookupEnv(k.EnvName()); set {
			from = k.EnvName()
		}
		shown := fmt.Sprintf("%q", str)
		if k.Secret {
			shown = masked
		}
		errs = append(errs, fmt.Errorf("config: %s: %s from %s must be %s", k.Name, shown, from, want))
	}
	return errors.Join(errs...)
}

// checkFileNumber checks a number a YAML file gave a key (flags and the
// environment give text or typed values): a duration written as a bare
// number would be read as nanoseconds ("write_timeout: 30" is 30ns), and a
// fraction for a whole-number key would be cut. It returns the form
// expected, or "" when the value is fine or not a number.
func checkFileNumber(val, def any) (want, shown string) {
	var f float64
	switch n := val.(type) {
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	case uint64:
		f = float64(n)
	case float64:
		f = n
	default:
		return "", ""
	}
	shown = strconv.FormatFloat(f, 'g', -1, 64)
	switch def.(type) {
	case time.Duration:
		if f != 0 { // 0 is 0 in any unit
			return `a duration with its unit, like "` + shown + `s"` + ` (a bare number would be nanoseconds)`, shown
		}
	case int, int64:
		if f != math.Trunc(f) {
			return "a whole number", shown
		}
	case bool:
		return "true or false", shown
	}
	return "", ""
}

// refuseBareNumberDurations puts bareNumberDuration before viper's own
// decode hooks (text to durations, comma-separated lists).
func refuseBareNumberDurations(c *mapstructure.DecoderConfig) {
	c.DecodeHook = mapstructure.ComposeDecodeHookFunc(bareNumberDuration, c.DecodeHook)
}

// bareNumberDuration refuses a number without a unit where a duration is
// expected (a forward target's "timeout": 10 would be 10ns); 0 passes.
func bareNumberDuration(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeFor[time.Duration]() || from == to {
		return data, nil // not a duration, or one already (a default, a flag)
	}
	switch from.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		if f := reflect.ValueOf(data).Convert(reflect.TypeFor[float64]()).Float(); f != 0 {
			n := strconv.FormatFloat(f, 'g', -1, 64)
			return nil, fmt.Errorf("%s must be a duration with its unit, like \"%ss\" (a bare number would be nanoseconds)", n, n)
		}
	}
	return data, nil
}

var invalidKeys = regexp.MustCompile(`'([^']*)' has invalid keys: ([^\n]*)`)

// decodeError turns the decoder's report of unknown keys in the file
// ("'http' has invalid keys: adr") into the keys' full names.
func decodeError(err error) error {
	ms := invalidKeys.FindAllStringSubmatch(err.Error(), -1)
	if ms == nil {
		return fmt.Errorf("config: %w", err)
	}
	var keys []string
	for _, m := range ms {
		for _, k := range strings.Split(m[2], ", ") {
			if m[1] != "" {
				k = m[1] + "." + k
			}
			keys = append(keys, k)
		}
	}
	return fmt.Errorf("config: unknown key(s) in the config file: %s (--help lists the keys)", strings.Join(keys, ", "))
}
