package coord

import (
	"testing"
	"time"
)

// An item with its position in a coords or position object that also
// carries a "data", "items" or "points" array is one item, not a wrapper
// (as with location or top-level lat/lon).
func TestNestedPositionItemIsNotAWrapper(t *testing.T) {
	d, err := NewDecoder(Options{MaxItems: 1000})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, body := range []string{
		`{"device_id":"a","location":{"lat":19.4,"lon":-99.1},"items":[{"name":"checklist","done":true}]}`, // works
		`{"device_id":"a","position":{"lat":19.4,"lon":-99.1},"items":[{"name":"checklist","done":true}]}`,
		`{"device_id":"a","coords":{"lat":19.4,"lon":-99.1},"data":[{"sensor":"temp","value":21}]}`,
		`{"device_id":"a","position":{"lat":19.4,"lon":-99.1},"data":[]}`,
	} {
		b, err := d.Decode("application/json", []byte(body), nil, now)
		switch {
		case err != nil:
			t.Errorf("%s\n\terror: %v", body, err)
		case len(b.Coords) != 1 || b.Coords[0].DeviceID != "a" || b.Coords[0].Lat != 19.4:
			t.Errorf("%s\n\tcoords %d, rejected %v", body, len(b.Coords), b.Rejected)
		}
	}
}
