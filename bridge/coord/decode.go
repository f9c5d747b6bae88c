package coord

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Errors of Decode, DecodeJSON and DecodeValues for a request that is unusable
// as a whole. They are returned wrapped with detail; test them with errors.Is.
// Problems of single coordinates are not errors: they are Batch.Rejected.
var (
	// ErrMalformed: the body cannot be parsed: invalid JSON or form encoding,
	// a JSON value that is not an object or array, an array element that is
	// not an object.
	ErrMalformed = errors.New("malformed body")
	// ErrTooManyItems: the request holds more than Options.MaxItems
	// coordinates.
	ErrTooManyItems = errors.New("too many coordinates")
	// ErrUnsupportedMediaType: the content type is neither JSON nor
	// application/x-www-form-urlencoded.
	ErrUnsupportedMediaType = errors.New("unsupported media type")
	// ErrEmpty: the request holds no item at all: an empty array or wrapper
	// array, or an empty body and no query parameters.
	ErrEmpty = errors.New("no coordinate in request")
)

// DefaultMaxFuture is how far ahead of the receive time a fix time may be
// when Options.MaxFuture is zero.
const DefaultMaxFuture = 10 * time.Minute

// Options configures a Decoder. The zero value is usable: zone-less times in
// UTC, only the built-in field names, no item limit, fix times up to 10
// minutes ahead, and the query or form key "token" dropped.
type Options struct {
	// Location is the zone of timestamps written without one
	// (ingest.default_timezone); nil means UTC.
	Location *time.Location
	// Aliases adds source field names per canonical field. Keys are
	// "device_id", "lat", "lon", "ts", "speed_kmh", "heading_deg", "alt_m",
	// "accuracy_m", "battery_pct", "event"; any other key makes NewDecoder
	// fail. Names are matched like the built-in ones (case-insensitive, '_'
	// and '-' ignored) and take priority over them, first listed first. A
	// configured name may take over a built-in name of another field; naming
	// one for two fields, or a reserved name (coords, location, position,
	// speed_unit, unidad_velocidad), is an error. Speeds under a configured
	// name are km/h unless a speed unit field says otherwise.
	Aliases map[string][]string
	// MaxItems, when > 0, is the most coordinates one request may hold;
	// more gives ErrTooManyItems, found before any item is decoded.
	// Negative is an error.
	MaxItems int
	// MaxFuture is how far a fix time may be ahead of the receive time; a
	// later one rejects the coordinate. 0 means DefaultMaxFuture; negative
	// is an error.
	MaxFuture time.Duration
	// BatteryScale says how a battery level without a "%" is read:
	// "percent" (0–100), "fraction" (0–1, times 100), or "auto" or "" (a
	// percent, but a value in [0, 1] written with a decimal point or an
	// exponent is a fraction). Anything else is an error.
	BatteryScale string
	// IgnoreKeys are form and query keys dropped before decoding, so they
	// reach neither attrs nor raw (a secret passed as ?token=). They are
	// matched like field names. nil means {"token"}; an empty non-nil slice
	// drops nothing. JSON bodies are not filtered.
	IgnoreKeys []string
}

// Decoder turns webhook requests into canonical coordinates (DESIGN.md,
// "Ingest contract"). Make one with NewDecoder; it is immutable and safe for
// concurrent use.
type Decoder struct {
	loc       *time.Location
	maxItems  int
	maxFuture time.Duration
	battery   batteryScale
	roles     map[string]role
	ignore    map[string]bool
}

// NewDecoder returns a Decoder for o, or an error naming the bad option: an
// unknown Aliases key, an empty, reserved or doubly configured alias, a
// negative MaxItems or MaxFuture.
func NewDecoder(o Options) (*Decoder, error) {
	if o.MaxItems < 0 {
		return nil, fmt.Errorf("max items %d is negative", o.MaxItems)
	}
	if o.MaxFuture < 0 {
		return nil, fmt.Errorf("max future %s is negative", o.MaxFuture)
	}
	var battery batteryScale
	switch o.BatteryScale {
	case "", "auto":
		battery = batteryAuto
	case "percent":
		battery = batteryPercent
	case "fraction":
		battery = batteryFraction
	default:
		return nil, fmt.Errorf("battery scale %q: want auto, percent or fraction", o.BatteryScale)
	}
	roles, err := buildRoles(o.Aliases)
	if err != nil {
		return nil, err
	}
	d := &Decoder{loc: o.Location, maxItems: o.MaxItems, maxFuture: o.MaxFuture, battery: battery, roles: roles}
	if d.loc == nil {
		d.loc = time.UTC
	}
	if d.maxFuture == 0 {
		d.maxFuture = DefaultMaxFuture
	}
	keys := o.IgnoreKeys
	if keys == nil {
		keys = []string{"token"}
	}
	d.ignore = make(map[string]bool, len(keys))
	for _, k := range keys {
		d.ignore[normalize(k)] = true
	}
	return d, nil
}

// Batch is the result of decoding one request. The strings and Raw of its
// coordinates share a few allocations made for the whole request (one copy
// of the body, one block for Raw), so keeping one Coord keeps that memory.
type Batch struct {
	// Coords are the valid coordinates, in request order.
	Coords []Coord
	// Rejected are the invalid items, in request order; nil when none.
	Rejected []Rejection
}

// Rejection says why one item of a request was not accepted.
type Rejection struct {
	// Index is the position of the item in the request: its index in the
	// JSON array (or wrapper array), 0 for a single object or form.
	Index int `json:"index"`
	// Error is a message for the sender, e.g. `lat 91 out of range [-90, 90]`,
	// naming the source field as written. Values are quoted and cut to 64
	// bytes. Several problems are joined with "; ".
	Error string `json:"error"`
}

// Decode decodes one webhook request. The shape comes from the media type of
// contentType (parameters such as charset are ignored):
//
//   - an empty body (or only white space): the query parameters are the
//     item, as for GET; see DecodeValues;
//   - application/json, text/json and any */*+json, or no content type and a
//     body starting with { or [: see DecodeJSON;
//   - application/x-www-form-urlencoded: the body is parsed as form values
//     (ErrMalformed when it cannot be) and decoded by DecodeValues; query
//     parameters are then not used;
//   - anything else, multipart/form-data included: ErrUnsupportedMediaType.
//
// now is the receive time: it becomes ReceivedAt of every coordinate and the
// ts of those without a time. An error means the request is unusable as a
// whole (ErrMalformed, ErrTooManyItems, ErrUnsupportedMediaType, ErrEmpty);
// a batch in which every item was rejected is not an error.
func (d *Decoder) Decode(contentType string, body []byte, query url.Values, now time.Time) (*Batch, error) {
	first, ok := firstByte(body)
	if !ok {
		return d.DecodeValues(query, now)
	}
	mt := contentType
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	mt = strings.ToLower(strings.TrimSpace(mt))
	looksJSON := first == '{' || first == '['
	// '"': JSON encoded twice, but never under a form type: a form name may
	// start with a quote.
	quoted := first == '"' && mt != "application/x-www-form-urlencoded"
	switch {
	case mt == "application/json" || mt == "text/json" ||
		strings.HasSuffix(mt, "+json") && strings.IndexByte(mt, '/') > 0:
		return d.DecodeJSON(body, now)
	case (looksJSON || quoted) && (mt == "" || mt == "text/plain" || mt == "application/octet-stream" ||
		mt == "application/x-www-form-urlencoded"):
		// A JSON body under a generic type (.NET's StringContent sends
		// text/plain, curl -d sends a form type): no form starts with
		// { or [.
		return d.DecodeJSON(body, now)
	case mt == "":
		return nil, fmt.Errorf("%w: no content type, and the body is not JSON", ErrUnsupportedMediaType)
	case mt == "application/x-www-form-urlencoded":
		// A pair that does not parse (an unescaped %, a ;) is dropped, as
		// Go does for a query string; the others are kept.
		v, err := url.ParseQuery(string(body))
		if err != nil && len(v) == 0 {
			return nil, fmt.Errorf("%w: form: %v", ErrMalformed, err)
		}
		return d.DecodeValues(v, now)
	case mt == "multipart/form-data":
		return nil, fmt.Errorf("%w: multipart/form-data is not supported; send JSON or application/x-www-form-urlencoded", ErrUnsupportedMediaType)
	}
	return nil, fmt.Errorf("%w: %s", ErrUnsupportedMediaType, quoteShort(mt))
}

const bom = "\xEF\xBB\xBF"

// firstByte returns the first byte of body after a UTF-8 byte order mark and
// white space; false when there is none.
func firstByte(body []byte) (byte, bool) {
	i := 0
	if len(body) >= len(bom) && string(body[:len(bom)]) == bom {
		i = len(bom)
	}
	for ; i < len(body); i++ {
		if !isSpace(body[i]) {
			return body[i], true
		}
	}
	return 0, false
}

// DecodeJSON decodes a JSON body: one object (one item), an array of objects,
// or a wrapper object whose key "coordinates", "data", "items" or "points"
// (in that priority, matched like field names) holds an array of objects and
// that has no lat, lon or location field, nor a coords or position object,
// of its own — so a GeoJSON "coordinates": [lon, lat] or an item carrying a
// "data" or "items" list stays one item. A device id of the wrapper goes to its
// items that have none; its other keys are ignored. A UTF-8 byte order mark is
// skipped. A body that is a JSON string holding an object or array (JSON
// encoded twice) is decoded as that object or array.
//
// Errors: ErrEmpty for an empty body or an empty (wrapper) array,
// ErrTooManyItems when there are more than Options.MaxItems items (counted
// before anything is decoded), ErrMalformed for invalid JSON, a value that is
// not an object or array, or an array element that is not an object.
func (d *Decoder) DecodeJSON(body []byte, now time.Time) (*Batch, error) {
	s := string(body) // the one copy every decoded string points into
	s = strings.TrimPrefix(s, bom)
	s = strings.Trim(s, " \t\r\n")
	if s == "" {
		return nil, fmt.Errorf("%w: empty body", ErrEmpty)
	}
	if s[0] == '"' {
		s = unwrapEncoded(s)
	}
	st := getState(d, now)
	defer st.release()
	var (
		items   []string // each item as written
		single  bool     // the body is one item, whose members are in st.members
		compact bool     // every item is its own compact form (see checkJSON)
		err     error
	)
	switch s[0] {
	case '[':
		e, ok := appendElements(st.items, s, d.maxItems)
		st.items = e.items
		if ok && e.tooMany {
			return nil, d.errTooMany()
		}
		if compact, err = checkJSON(s); err != nil {
			return nil, err
		}
		if e.nonObject >= 0 {
			return nil, fmt.Errorf("%w: array element %d is %s, want an object", ErrMalformed, e.nonObject, kindOf(e.items[e.nonObject][0]).noun())
		}
		items = e.items
	case '{':
		var ok bool
		st.members, ok = appendMembers(st.members[:0], s)
		var e elements
		wrapped := false
		if ok {
			e, wrapped = st.wrapper(st.members)
			if wrapped && e.tooMany {
				return nil, d.errTooMany()
			}
		}
		if compact, err = checkJSON(s); err != nil {
			return nil, err
		}
		if wrapped {
			items = e.items
			st.wrapDevice = st.wrapperDevice(st.members)
		} else {
			st.items = append(st.items[:0], s)
			items, single = st.items, true
		}
	default:
		if _, err = checkJSON(s); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: body is %s, want an object or an array of objects", ErrMalformed, kindOf(s[0]).noun())
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: empty array", ErrEmpty)
	}

	st.setItems(len(items))
	size := 0
	for _, it := range items {
		size += len(it)
	}
	st.arena = make([]byte, 0, size)
	b := newBatch(len(items))
	for i, it := range items {
		if !single {
			st.members, _ = appendMembers(st.members[:0], it)
		}
		b.Coords = append(b.Coords, Coord{})
		c := &b.Coords[len(b.Coords)-1]
		if why := st.item(st.members, c); why != "" {
			b.Coords = b.Coords[:len(b.Coords)-1]
			b.Rejected = append(b.Rejected, Rejection{Index: i, Error: why})
			continue
		}
		start := len(st.arena)
		if compact {
			st.arena = append(st.arena, it...)
		} else {
			st.arena = appendCompact(st.arena, it)
		}
		c.Raw = st.arena[start:len(st.arena):len(st.arena)]
	}
	return b, nil
}

// unwrapEncoded returns the JSON a JSON string s holds, when it holds an
// object or array: a body encoded twice, as a sender that serialises its
// JSON text once more sends it ("{\"imei\":...}"). Otherwise, or when s is
// not a valid JSON string, s is returned and decoded as it is. One level
// only.
func unwrapEncoded(s string) string {
	if ok, _ := validate(s); !ok {
		return s
	}
	// unquote keeps bytes that are not UTF-8 as they are (json.Unmarshal
	// would make them U+FFFD), so a device id holding one is rejected as
	// it is in a body sent once.
	inner := strings.Trim(unquote(s), " \t\r\n")
	inner = strings.TrimPrefix(inner, bom)
	if inner == "" || (inner[0] != '{' && inner[0] != '[') {
		return s
	}
	return inner
}

// checkJSON returns an ErrMalformed error unless the body s is valid JSON.
// For a valid s it reports whether s is compact already: valid UTF-8 without
// white space between tokens, so that appendCompact would copy every item of
// it unchanged (and a plain copy will do).
func checkJSON(s string) (compact bool, err error) {
	ok, spaced := validate(s)
	if !ok {
		return false, fmt.Errorf("%w: %s", ErrMalformed, syntaxDetail(s))
	}
	return !spaced && utf8.ValidString(s), nil
}

func (d *Decoder) errTooMany() error {
	return fmt.Errorf("%w: more than %d in one request", ErrTooManyItems, d.maxItems)
}

// newBatch returns an empty Batch with room for n coordinates. A single
// coordinate, the most common request, shares one allocation with its Batch.
func newBatch(n int) *Batch {
	if n == 1 {
		one := new(struct {
			b Batch
			c [1]Coord
		})
		one.b.Coords = one.c[:0]
		return &one.b
	}
	return &Batch{Coords: make([]Coord, 0, n)}
}

// wrapperDevice returns the device id of a wrapper object's members ms, ""
// when it has no valid one.
func (st *itemState) wrapperDevice(ms []member) string {
	var best pick
	for i := range ms {
		r, ok := st.d.lookup(ms[i].key)
		if !ok || r.kind != roleField || r.field != fDevice || !ms[i].present() {
			continue
		}
		if best.m == nil || r.rank < best.rank {
			best = pick{m: &ms[i], rank: r.rank}
		}
	}
	if best.m == nil {
		return ""
	}
	id, why := deviceID(&best)
	if why != "" {
		return ""
	}
	return strings.Clone(id) // ms is reused for the items
}

// wrapper finds the array of a wrapper object (see DecodeJSON). ms are the
// members of the top-level object.
func (st *itemState) wrapper(ms []member) (elements, bool) {
	d := st.d
	for i := range ms {
		r, ok := st.roles.role(d, i, ms[i].key)
		if ok && (r.kind == roleField && (r.field == fLat || r.field == fLon) ||
			r.kind == roleContainer && (r.slot == slotLocation || ms[i].kind == kindObject)) {
			return elements{}, false
		}
	}
	best, found := len(wrapperNames), elements{}
	for i := range ms {
		rank := wrapperRank(ms[i].key)
		if rank < 0 || rank >= best || ms[i].kind != kindArray {
			continue
		}
		// A fresh slice each time: the array of found must stay as it is.
		if e, ok := appendElements(nil, ms[i].raw, d.maxItems); ok && e.nonObject < 0 {
			best, found = rank, e
		}
	}
	return found, best < len(wrapperNames)
}

// DecodeValues decodes form or query values as one item. Keys in
// Options.IgnoreKeys are dropped first; ErrEmpty when nothing is left. A
// repeated key counts by its first value (as url.Values.Get); the first of
// two keys equal after normalization, in sorted order, wins. Raw is a JSON
// object of the values with sorted keys: a string per key, or an array of
// strings for a repeated key.
func (d *Decoder) DecodeValues(v url.Values, now time.Time) (*Batch, error) {
	st := getState(d, now)
	defer st.release()
	keys := st.items[:0]
	for k, vals := range v {
		if len(vals) > 0 && !d.ignored(k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: empty body and no query parameters", ErrEmpty)
	}
	st.items = keys
	slices.Sort(keys)
	ms := st.members[:0]
	size := 2
	for _, k := range keys {
		vals := v[k]
		ms = append(ms, member{key: k, raw: vals[0], kind: kindString, form: true})
		if len(vals) > 1 {
			ms[len(ms)-1].list = vals
		}
		size += len(k) + 4
		for _, x := range vals {
			size += len(x) + 3
		}
	}
	st.members = ms
	st.setItems(1)
	b := newBatch(1)
	b.Coords = b.Coords[:1]
	c := &b.Coords[0]
	if why := st.item(ms, c); why != "" {
		return &Batch{Rejected: []Rejection{{Index: 0, Error: why}}}, nil
	}
	c.Raw = formRaw(make([]byte, 0, size), ms)
	return b, nil
}

// formRaw appends the JSON object of form members (sorted by key).
func formRaw(dst []byte, ms []member) json.RawMessage {
	dst = append(dst, '{')
	for i := range ms {
		m := &ms[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, m.key)
		dst = append(dst, ':')
		if m.list == nil {
			dst = appendString(dst, m.raw)
			continue
		}
		dst = append(dst, '[')
		for j, x := range m.list {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, x)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// itemState is the scratch space of one Decode call. The states are pooled:
// the slices of members, item texts and roles keep their arrays from one call
// to the next, so a request does not allocate them again.
type itemState struct {
	d       *Decoder
	now     time.Time
	members []member  // members of the current item
	nested  []member  // members of its nested objects
	items   []string  // each item as written, or the keys of form values
	roles   roleCache // roles of the keys in members
	nroles  roleCache // roles of the keys in nested
	floats  []float64 // backing store of the optional measurements
	chunk   int       // size of the next floats block
	arena   []byte    // backing store of Raw
	// wrapDevice is the device id a wrapper object gives its items
	// ({"imei": ..., "points": [...]}), for those without their own.
	wrapDevice string
}

var statePool = sync.Pool{New: func() any { return new(itemState) }}

// The most members and items a pooled state keeps room for: the arrays grown
// by a larger request are left to the garbage collector. A full batch of
// http.max_batch = 1000 items stays under maxPooledItems.
const (
	maxPooledMembers = 1024
	maxPooledItems   = 4096
)

func getState(d *Decoder, now time.Time) *itemState {
	st := statePool.Get().(*itemState)
	st.d, st.now = d, now.UTC()
	return st
}

// setItems sizes the floats blocks for a request of n items.
func (st *itemState) setItems(n int) { st.chunk = min(5*n, 512) }

// release puts st back in the pool. What the caller was given (floats and
// arena, which the coordinates point into) is dropped, never reused; what is
// kept is cleared, so the pool holds no reference into a request.
func (st *itemState) release() {
	st.d, st.floats, st.arena, st.wrapDevice = nil, nil, nil, ""
	st.members = clearPooled(st.members, maxPooledMembers)
	st.nested = clearPooled(st.nested, maxPooledMembers)
	st.roles = clearPooled(st.roles, maxPooledMembers)
	st.nroles = clearPooled(st.nroles, maxPooledMembers)
	st.items = clearPooled(st.items, maxPooledItems)
	statePool.Put(st)
}

// clearPooled returns s emptied and zeroed over its whole capacity, or nil
// when its capacity is over limit.
func clearPooled[E any](s []E, limit int) []E {
	if cap(s) > limit {
		return nil
	}
	clear(s[:cap(s)])
	return s[:0]
}

// roleCache holds the roles of the keys of a member list, by position, as
// Decoder.lookup gave them. The items of a batch usually have the same keys
// in the same order, so the role of the key at the same position of the
// previous item is tried first: comparing two keys costs far less than
// normalizing and hashing one.
type roleCache []cachedRole

type cachedRole struct {
	key  string
	role role
	ok   bool
}

// maxCachedRoles is how many positions a roleCache covers: far more keys
// than an item usually has, and a bound on the cache for one that has
// thousands.
const maxCachedRoles = 256

// role returns the role of key, the i-th member of its list. The cache
// grows when the members are looked up in order, from 0, as they are.
func (c *roleCache) role(d *Decoder, i int, key string) (role, bool) {
	rs := *c
	if i < len(rs) && rs[i].key == key {
		return rs[i].role, rs[i].ok
	}
	r, ok := d.lookup(key)
	switch {
	case i < len(rs):
		rs[i] = cachedRole{key, r, ok}
	case i == len(rs) && i < maxCachedRoles:
		*c = append(rs, cachedRole{key, r, ok})
	}
	return r, ok
}

// float returns a pointer to a copy of v. The copies live in blocks shared by
// the batch, one allocation per block instead of one per value.
func (st *itemState) float(v float64) *float64 {
	if len(st.floats) == cap(st.floats) {
		st.floats = make([]float64, 0, st.chunk)
	}
	st.floats = append(st.floats, v)
	return &st.floats[len(st.floats)-1]
}

// pick is the source member chosen for a canonical field.
type pick struct {
	m      *member
	parent *member // the nested object holding m, nil at the top level
	rank   int
	unit   speedUnit
}

// name is the source field as written, for messages: "Latitude",
// "position.lat".
func (p *pick) name() string {
	if p.parent != nil {
		return shorten(p.parent.key + "." + p.m.key)
	}
	return shorten(p.m.key)
}

// item maps the members of one item into c. It returns why the item is
// rejected, or "" when c is complete (but for Raw, set by the caller).
func (st *itemState) item(top []member, c *Coord) string {
	d := st.d
	var (
		picks  [numCanon]pick
		conts  [numSlots]*member // nested objects
		units  [numSlots]*member // speed unit fields inside them
		locStr *member           // "location": "lat,lon"
		unit   *member           // top-level speed unit field
	)
	for i := range top {
		m := &top[i]
		r, ok := st.roles.role(d, i, m.key)
		if !ok || !m.present() {
			continue
		}
		switch r.kind {
		case roleField:
			if p := &picks[r.field]; p.m == nil || r.rank < p.rank {
				*p = pick{m: m, rank: r.rank, unit: r.unit}
			}
		case roleContainer:
			switch {
			case m.kind == kindObject && conts[r.slot] == nil:
				conts[r.slot] = m
			case m.kind == kindString && r.slot == slotLocation && locStr == nil:
				locStr = m
			}
		case roleUnit:
			if unit == nil {
				unit = m
			}
		}
	}
	// "location": "lat,lon" stands for both when neither is at the top level.
	usePair := locStr != nil && picks[fLat].m == nil && picks[fLon].m == nil
	if usePair && conts != [numSlots]*member{} {
		// "location": "Querétaro, Qro." is a place name, not "lat,lon": a
		// nested object may still hold the position.
		if _, _, why := pairOf(locStr); why != "" {
			usePair = false
		}
	}
	var atTop [numCanon]bool
	for f := range picks {
		atTop[f] = picks[f].m != nil
	}
	atTop[fLat] = atTop[fLat] || usePair
	atTop[fLon] = atTop[fLon] || usePair

	// Nested objects fill what the top level lacks, the first one holding a
	// field winning. All are parsed before any pointer into st.nested is
	// taken, since appending may move it.
	var spans [numSlots][2]int
	var pairs [numSlots][2]pick // each nested object's lat and lon
	if conts != [numSlots]*member{} {
		st.nested = st.nested[:0]
		for slot, m := range conts {
			if m != nil {
				start := len(st.nested)
				st.nested, _ = appendMembers(st.nested, m.raw)
				spans[slot] = [2]int{start, len(st.nested)}
			}
		}
		for slot, cm := range conts {
			if cm == nil {
				continue
			}
			ns := st.nested[spans[slot][0]:spans[slot][1]]
			for j := range ns {
				n := &ns[j]
				r, ok := st.nroles.role(d, spans[slot][0]+j, n.key)
				if !ok || !n.present() {
					continue
				}
				switch r.kind {
				case roleField:
					p := &picks[r.field]
					if !atTop[r.field] && (p.m == nil || p.parent == cm && r.rank < p.rank) {
						*p = pick{m: n, parent: cm, rank: r.rank, unit: r.unit}
					}
					if r.field == fLat || r.field == fLon {
						q := &pairs[slot][r.field-fLat]
						if q.m == nil || r.rank < q.rank {
							*q = pick{m: n, parent: cm, rank: r.rank, unit: r.unit}
						}
					}
				case roleUnit:
					if units[slot] == nil {
						units[slot] = n
					}
				}
			}
		}
	}

	// A position is one object's lat and lon: unless the top level holds
	// both, the first nested object holding both gives them, so a lone
	// top-level lat (or one in another object) is not paired with a
	// longitude of another place. Only when no object holds both are they
	// taken one by one.
	if !atTop[fLat] || !atTop[fLon] {
		for slot := range pairs {
			if pairs[slot][0].m != nil && pairs[slot][1].m != nil {
				picks[fLat], picks[fLon] = pairs[slot][0], pairs[slot][1]
				break
			}
		}
	}

	// Required fields: every problem is reported.
	var probs []string
	if p := &picks[fDevice]; p.m == nil {
		if st.wrapDevice != "" {
			c.DeviceID = st.wrapDevice
		} else {
			probs = append(probs, "device_id missing")
		}
	} else if id, why := deviceID(p); why != "" {
		probs = append(probs, why)
	} else {
		c.DeviceID = id
		p.m.used = true
	}
	if usePair {
		lat, lon, why := pairOf(locStr)
		if why != "" {
			probs = append(probs, why)
		} else {
			c.Lat, c.Lon = lat, lon
			locStr.used = true
		}
	} else if locStr != nil && picks[fLat].m == nil && picks[fLon].m == nil {
		// A location string that is no pair, and no nested position.
		_, _, why := pairOf(locStr)
		probs = append(probs, why)
	} else {
		for _, f := range [2]canon{fLat, fLon} {
			p := &picks[f]
			if p.m == nil {
				probs = append(probs, canonNames[f]+" missing")
				continue
			}
			lim := 90.0
			if f == fLon {
				lim = 180
			}
			v, why := requiredNumber(p, lim)
			if why != "" {
				probs = append(probs, why)
				continue
			}
			if f == fLat {
				c.Lat = v
			} else {
				c.Lon = v
			}
			p.m.used = true
		}
	}
	if p := &picks[fTS]; p.m == nil {
		c.TS, c.TSMissing = st.now, true
	} else if t, why := st.timeOf(p); why != "" {
		// Another time field may hold the full time ("fecha" a bare date
		// beside "fechaHora"): the best-ranked one that reads wins.
		if t, ok := st.otherTime(top, p); ok {
			c.TS = t
		} else {
			probs = append(probs, why)
		}
	} else {
		c.TS = t
		p.m.used = true
	}
	if len(probs) > 0 {
		return validUTF8(strings.Join(probs, "; "))
	}

	// Optional fields: an unusable value is left in attrs.
	if p := &picks[fAlt]; p.m != nil {
		if v, ok := optNumber(p.m); ok {
			c.AltM = st.float(v)
			p.m.used = true
		}
	}
	if p := &picks[fSpeed]; p.m != nil {
		if v, ok := optNumber(p.m); ok && v >= 0 {
			u, um := p.unit, (*member)(nil)
			if u == unitFromField {
				u, um = unitKmh, unit
				for slot, cm := range conts {
					if cm != nil && cm == p.parent && units[slot] != nil {
						um = units[slot]
					}
				}
				if um != nil {
					u, ok = unitOf(um)
				}
			}
			if v = toKmh(v, u); ok && finite(v) {
				c.SpeedKmh = st.float(v)
				p.m.used = true
				if um != nil {
					um.used = true
				}
			}
		}
	}
	if p := &picks[fHeading]; p.m != nil {
		if v, ok := optNumber(p.m); ok && v >= 0 && v <= 360 {
			c.HeadingDeg = st.float(v)
			p.m.used = true
		}
	}
	if p := &picks[fAccuracy]; p.m != nil {
		if v, ok := optNumber(p.m); ok && v >= 0 {
			c.AccuracyM = st.float(v)
			p.m.used = true
		}
	}
	if p := &picks[fBattery]; p.m != nil {
		if v, ok := percentOf(p.m, st.d.battery); ok {
			c.BatteryPct = st.float(v)
			p.m.used = true
		}
	}
	if p := &picks[fEvent]; p.m != nil {
		switch p.m.kind {
		case kindString:
			c.Event = validUTF8(strings.TrimSpace(p.m.str()))
			p.m.used = true
		case kindNumber:
			c.Event = p.m.raw
			p.m.used = true
		}
	}

	c.V = Version
	c.ReceivedAt = st.now
	c.Attrs = st.attrs(top, &conts, &spans)
	return ""
}

// attrs collects the members of an item that were not mapped. A nested
// object some of whose fields were mapped keeps only its other fields (and is
// left out when none remain). A key repeated in the item counts once: the
// first occurrence, and none when one occurrence was mapped.
func (st *itemState) attrs(top []member, conts *[numSlots]*member, spans *[numSlots][2]int) map[string]any {
	var out map[string]any
	var buf [16]string
	used := usedKeys(buf[:0], top)
	for i := range top {
		m := &top[i]
		if m.used || slices.Contains(used, m.key) {
			continue
		}
		var v any
		slot := slices.Index(conts[:], m)
		if slot < 0 {
			v = m.value()
		} else {
			ns := st.nested[spans[slot][0]:spans[slot][1]]
			if !slices.ContainsFunc(ns, func(n member) bool { return n.used }) {
				v = m.value()
			} else {
				var rest map[string]any
				var buf [16]string
				nsUsed := usedKeys(buf[:0], ns)
				for j := range ns {
					n := &ns[j]
					if n.used || slices.Contains(nsUsed, n.key) {
						continue
					}
					if rest == nil {
						rest = make(map[string]any, len(ns)-j)
					}
					if k := validUTF8(n.key); !hasKey(rest, k) {
						rest[k] = n.value()
					}
				}
				if rest == nil {
					continue
				}
				v = rest
			}
		}
		if out == nil {
			out = make(map[string]any, len(top)-i)
		}
		if k := validUTF8(m.key); !hasKey(out, k) {
			out[k] = v
		}
	}
	return out
}

func hasKey(m map[string]any, k string) bool {
	_, ok := m[k]
	return ok
}

// usedKeys appends the keys of the mapped members to dst. At most one member
// per canonical field, plus a unit field and a location string, is mapped,
// so the list is short and looking a key up in it keeps attrs linear in the
// number of members.
func usedKeys(dst []string, ms []member) []string {
	for i := range ms {
		if ms[i].used {
			dst = append(dst, ms[i].key)
		}
	}
	return dst
}

// str returns the text of a string member: unquoted for JSON.
func (m *member) str() string {
	if m.form {
		return m.raw
	}
	return unquote(m.raw)
}

// present reports whether m holds a value: not null, not a blank string.
// Absent members do not count for their field (the next alias is used) and
// stay in attrs.
func (m *member) present() bool {
	switch m.kind {
	case kindNull:
		return false
	case kindString:
		return !nullText(strings.TrimSpace(m.str()))
	}
	return true
}

// nullText reports whether a string value stands for no value: empty, or a
// null written as text ("null", "undefined"), as query strings and forms
// carry a sender's null.
func nullText(s string) bool {
	return s == "" || strings.EqualFold(s, "null") || strings.EqualFold(s, "undefined")
}

// value returns m as an attrs value.
func (m *member) value() any {
	if !m.form {
		return toAny(m.raw)
	}
	if m.list == nil {
		return validUTF8(m.raw)
	}
	a := make([]any, len(m.list))
	for i, x := range m.list {
		a[i] = validUTF8(x)
	}
	return a
}

// describe writes m's value for a message: numbers as written, strings
// quoted, both cut to 64 bytes; objects and arrays by kind.
func (m *member) describe() string {
	switch m.kind {
	case kindString:
		return quoteShort(m.str())
	case kindNumber, kindBool:
		return shorten(m.raw)
	}
	return m.kind.noun()
}

// numberText returns the decimal text of m — a JSON number, or a string
// holding a decimal number with spaces around allowed — or why m is not a
// number ("" when it is).
func numberText(m *member) (text, why string) {
	switch m.kind {
	case kindNumber:
		return m.raw, ""
	case kindString:
		t := strings.TrimSpace(m.str())
		if isDecimal(t) {
			return t, ""
		}
		return "", m.describe() + " is not a number"
	}
	return "", "must be a number, got " + m.kind.noun()
}

// requiredNumber reads lat or lon: a finite number in [-lim, lim].
func requiredNumber(p *pick, lim float64) (float64, string) {
	m := p.m
	text, why := numberText(m)
	if why != "" {
		return 0, p.name() + " " + why
	}
	v, err := parseFloat(text)
	if err != nil || !(v >= -lim && v <= lim) {
		return 0, fmt.Sprintf("%s %s out of range [%g, %g]", p.name(), m.describe(), -lim, lim)
	}
	return v, ""
}

// optNumber reads an optional measurement: a finite number, or false.
func optNumber(m *member) (float64, bool) {
	text, why := numberText(m)
	if why != "" {
		return 0, false
	}
	v, err := parseFloat(text)
	return v, err == nil && finite(v)
}

// pairOf reads "location": "lat,lon".
func pairOf(m *member) (lat, lon float64, why string) {
	s := m.str()
	a, b, ok := strings.Cut(s, ",")
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	if !ok || !isDecimal(a) || !isDecimal(b) {
		return 0, 0, fmt.Sprintf("%s %s is not \"lat,lon\"", shorten(m.key), quoteShort(s))
	}
	lat, errLat := parseFloat(a)
	lon, errLon := parseFloat(b)
	var probs []string
	if errLat != nil || !(lat >= -90 && lat <= 90) {
		probs = append(probs, fmt.Sprintf("%s lat %s out of range [-90, 90]", shorten(m.key), shorten(a)))
	}
	if errLon != nil || !(lon >= -180 && lon <= 180) {
		probs = append(probs, fmt.Sprintf("%s lon %s out of range [-180, 180]", shorten(m.key), shorten(b)))
	}
	return lat, lon, strings.Join(probs, "; ")
}

// deviceID reads the device id: a string (trimmed) or a number, kept exactly
// as written (an IMEI 356938035643809 stays those digits).
func deviceID(p *pick) (string, string) {
	m := p.m
	var id string
	switch m.kind {
	case kindString:
		id = strings.TrimSpace(m.str())
	case kindNumber:
		id = m.raw
	default:
		return "", p.name() + " must be a string or a number, got " + m.kind.noun()
	}
	if len(id) > MaxIDLen {
		return "", fmt.Sprintf("%s %s is longer than %d bytes", p.name(), quoteShort(id), MaxIDLen)
	}
	if !utf8.ValidString(id) {
		return "", p.name() + " is not valid UTF-8"
	}
	// Control characters cannot travel in the Ubiqo-Device header (NATS
	// headers are text lines) and are no device's name.
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < ' ' || c == 0x7f {
			return "", fmt.Sprintf("%s %s contains a control character (byte 0x%02x)", p.name(), quoteShort(id), c)
		}
	}
	return id, ""
}

// otherTime reads the fix time from the best-ranked top-level time field
// other than failed that holds a valid time, and marks it used.
func (st *itemState) otherTime(top []member, failed *pick) (time.Time, bool) {
	best, bestRank := -1, 0
	var bestT time.Time
	for i := range top {
		m := &top[i]
		if m == failed.m || !m.present() {
			continue
		}
		r, ok := st.roles.role(st.d, i, m.key)
		if !ok || r.kind != roleField || r.field != fTS || best >= 0 && r.rank >= bestRank {
			continue
		}
		if t, why := st.timeOf(&pick{m: m, rank: r.rank}); why == "" {
			best, bestRank, bestT = i, r.rank, t
		}
	}
	if best < 0 {
		return time.Time{}, false
	}
	top[best].used = true
	return bestT, true
}

// minEpochTime is the earliest fix time read from a number: anything before
// is a clock time, a date or a device without a fix, not a Unix time.
var minEpochTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// timeOf reads the fix time: Unix seconds or milliseconds (a number or a
// numeric string), or a textual form (parseTime); not after now + MaxFuture.
func (st *itemState) timeOf(p *pick) (time.Time, string) {
	m := p.m
	var (
		t  time.Time
		ok bool
	)
	numeric := false
	switch m.kind {
	case kindNumber:
		t, ok = epoch(m.raw)
		numeric = true
	case kindString:
		if s := strings.TrimSpace(m.str()); isDecimal(s) {
			t, ok = epoch(s)
			numeric = true
		} else {
			t, ok = parseTime(s, st.d.loc)
		}
	default:
		return t, p.name() + " must be a string or a number, got " + m.kind.noun()
	}
	if ok && numeric && t.Before(minEpochTime) {
		// 0, "2026", "115900" (a clock time), "20260301" (a date): as Unix
		// time these are fixes in 1970, which no device sends.
		return t, p.name() + " " + m.describe() + " is not a plausible Unix time (before 2000): send the fix time as Unix seconds or milliseconds, or as text with its date"
	}
	if !ok {
		return t, p.name() + " " + m.describe() + " is not a recognised time (want RFC 3339, YYYY-MM-DD HH:MM[:SS] or DD/MM/YYYY HH:MM[:SS] on a 24-hour clock or with a.m./p.m., /Date(ms)/, or Unix seconds or milliseconds)"
	}
	t = t.UTC()
	if ahead := t.Sub(st.now); ahead > st.d.maxFuture {
		return t, fmt.Sprintf("%s %s is %s ahead of the receive time (max %s)", p.name(), m.describe(), ahead, st.d.maxFuture)
	}
	if y := t.Year(); y < 0 || y > 9999 {
		return t, fmt.Sprintf("%s %s is out of range (years 0 to 9999)", p.name(), m.describe())
	}
	return t, ""
}
