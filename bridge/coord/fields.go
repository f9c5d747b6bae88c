package coord

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// canon is a canonical field of Coord that source fields map to.
type canon uint8

const (
	fDevice canon = iota
	fLat
	fLon
	fTS
	fSpeed
	fHeading
	fAlt
	fAccuracy
	fBattery
	fEvent
	numCanon
)

// canonNames are the keys of Options.Aliases, the canonical JSON v1 names.
var canonNames = [numCanon]string{
	fDevice:   "device_id",
	fLat:      "lat",
	fLon:      "lon",
	fTS:       "ts",
	fSpeed:    "speed_kmh",
	fHeading:  "heading_deg",
	fAlt:      "alt_m",
	fAccuracy: "accuracy_m",
	fBattery:  "battery_pct",
	fEvent:    "event",
}

// speedUnit is the unit a speed field is written in.
type speedUnit uint8

const (
	unitFromField speedUnit = iota // km/h unless a speed_unit field says otherwise
	unitKmh
	unitKnots
	unitMph
	unitMps
)

// kmhPer is how many km/h one unit is.
var kmhPer = [...]float64{
	unitFromField: 1,
	unitKmh:       1,
	unitKnots:     1.852,
	unitMph:       1.609344,
	unitMps:       3.6,
}

type alias struct {
	name string // normalized
	unit speedUnit
}

// builtinAliases lists, per canonical field, the normalized source names the
// decoder knows, highest priority first. The canonical JSON v1 name of each
// field is among them, so a canonical message decodes to the same fields.
var builtinAliases = [numCanon][]alias{
	fDevice:   names("deviceid", "imei", "uniqueid", "dispositivo", "id"),
	fLat:      names("lat", "latitude", "latitud"),
	fLon:      names("lon", "lng", "long", "longitude", "longitud"),
	fTS:       names("timestamp", "ts", "time", "date", "fecha", "fechahora", "datetime", "fixtime"),
	fSpeed:    {{"speed", unitFromField}, {"velocidad", unitFromField}, {"speedkmh", unitKmh}, {"speedkph", unitKmh}, {"speedknots", unitKnots}, {"speedmph", unitMph}, {"speedmps", unitMps}},
	fHeading:  names("heading", "bearing", "course", "rumbo", "headingdeg"),
	fAlt:      names("alt", "altitude", "altitud", "elevation", "altm"),
	fAccuracy: names("accuracy", "acc", "precision", "precisionm", "accuracym"),
	fBattery:  names("batt", "battery", "bateria", "batterypct"),
	fEvent:    names("event", "evento"),
}

func names(ns ...string) []alias {
	as := make([]alias, len(ns))
	for i, n := range ns {
		as[i] = alias{name: n}
	}
	return as
}

// Containers: nested objects whose fields count as the item's own.
const (
	slotCoords = iota
	slotLocation
	slotPosition
	numSlots
)

var containerNames = [numSlots]string{"coords", "location", "position"}

// unitNames name the field that gives the unit of a plain speed field.
var unitNames = []string{"speedunit", "unidadvelocidad"}

// wrapperNames are the keys of a wrapper object holding the items, by
// priority.
var wrapperNames = []string{"coordinates", "data", "items", "points"}

type roleKind uint8

const (
	roleField     roleKind = iota + 1 // maps to a canonical field
	roleContainer                     // coords / location / position
	roleUnit                          // unit of a plain speed field
)

// role is what a normalized source name means to the decoder.
type role struct {
	kind  roleKind
	field canon     // roleField
	rank  int       // roleField: lower wins when several aliases are present
	unit  speedUnit // roleField fSpeed
	slot  int       // roleContainer
}

// builtinRank is added to the position of a built-in alias, so configured
// aliases (ranked by their position) always come first.
const builtinRank = 1 << 20

// buildRoles returns the name table of a decoder: the built-in aliases plus
// the configured ones, which take priority. A configured alias may take over
// a built-in alias of another field (say "id" for event); it is an error for
// it to be empty, to name a container or unit field, or to be configured for
// two fields.
func buildRoles(extra map[string][]string) (map[string]role, error) {
	roles := make(map[string]role, 64)
	for f, as := range builtinAliases {
		for j, a := range as {
			roles[a.name] = role{kind: roleField, field: canon(f), rank: builtinRank + j, unit: a.unit}
		}
	}
	for slot, n := range containerNames {
		roles[n] = role{kind: roleContainer, slot: slot}
	}
	for _, n := range unitNames {
		roles[n] = role{kind: roleUnit}
	}

	var unknown []string
	for k := range extra {
		if !slices.Contains(canonNames[:], k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("unknown field %q (want one of %s)", unknown[0], strings.Join(canonNames[:], ", "))
	}
	for f, name := range canonNames {
		for j, a := range extra[name] {
			n := normalize(a)
			if n == "" {
				return nil, fmt.Errorf("%s: empty alias %q", name, a)
			}
			r := role{kind: roleField, field: canon(f), rank: j}
			if old, ok := roles[n]; ok {
				switch {
				case old.kind != roleField:
					return nil, fmt.Errorf("%s: alias %q is reserved (a nested object or speed unit field)", name, a)
				case old.rank < builtinRank && old.field != canon(f):
					return nil, fmt.Errorf("alias %q is configured for both %s and %s", a, canonNames[old.field], name)
				case old.rank < builtinRank:
					continue // configured twice for the same field: the first stays
				case old.field == canon(f):
					r.unit = old.unit // raising a built-in alias keeps its unit
				}
			}
			roles[n] = r
		}
	}
	return roles, nil
}

// normalize returns the form names are compared in: lower case, with '_' and
// '-' removed and Spanish accents dropped, so device_id, deviceId, DEVICE-ID
// and deviceid are equal, and batería is bateria.
func normalize(key string) string {
	var buf [48]byte
	return string(appendNorm(buf[:0], key))
}

// appendNorm appends the normalized key to dst. ASCII takes the fast path;
// other letters are lower-cased with Unicode rules.
func appendNorm(dst []byte, key string) []byte {
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '_' || c == '-':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= utf8.RuneSelf:
			return appendNormSlow(dst, key[i:])
		}
		dst = append(dst, c)
	}
	return dst
}

func appendNormSlow(dst []byte, key string) []byte {
	for i := 0; i < len(key); {
		r, size := utf8.DecodeRuneInString(key[i:])
		switch {
		case r == '_' || r == '-':
		case r == utf8.RuneError && size == 1:
			dst = append(dst, key[i])
		default:
			r = unicode.ToLower(r)
			if a, ok := spanishFold[r]; ok {
				r = a // batería = bateria, precisión = precision
			}
			dst = utf8.AppendRune(dst, r)
		}
		i += size
	}
	return dst
}

// spanishFold drops the accents of Spanish names, which senders write with
// or without them.
var spanishFold = map[rune]rune{'á': 'a', 'é': 'e', 'í': 'i', 'ó': 'o', 'ú': 'u', 'ü': 'u'}

// lookup returns the role of a source key, without allocating.
func (d *Decoder) lookup(key string) (role, bool) {
	var buf [48]byte
	r, ok := d.roles[string(appendNorm(buf[:0], key))]
	return r, ok
}

// ignored reports whether a form or query key is dropped (Options.IgnoreKeys).
func (d *Decoder) ignored(key string) bool {
	if len(d.ignore) == 0 {
		return false
	}
	var buf [48]byte
	return d.ignore[string(appendNorm(buf[:0], key))]
}

// wrapperRank returns the priority of a wrapper key, or -1.
func wrapperRank(key string) int {
	var buf [48]byte
	return slices.Index(wrapperNames, string(appendNorm(buf[:0], key)))
}
