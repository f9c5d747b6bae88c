package coord

import (
	"fmt"
	"strings"
	"testing"
)

// benchItem is a typical webhook item: the mapped fields and a few extras.
func benchItem(i int) string {
	return fmt.Sprintf(`{"device_id":"35693803564%04d","lat":19.4326%02d,"lon":-99.1332%02d,"timestamp":"2026-03-01T11:%02d:30Z",`+
		`"speed":"42.5","heading":270,"altitude":2240.5,"accuracy":4.8,"battery":0.87,"event":"position",`+
		`"driver":"Ana López","ignition":true,"odometer_km":120345.7}`, i, i%100, i%100, i%60)
}

// benchBatch is a JSON array of n benchItems.
func benchBatch(n int) []byte {
	items := make([]string, n)
	for i := range items {
		items[i] = benchItem(i)
	}
	return []byte("[" + strings.Join(items, ",") + "]")
}

func benchDecoder(b *testing.B) *Decoder {
	b.Helper()
	d, err := NewDecoder(Options{MaxItems: 1000})
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// decodeLoop decodes body once per iteration, checks that it yields want
// coordinates and hands each batch to then, when not nil.
func decodeLoop(b *testing.B, body []byte, want int, then func(*Batch)) {
	d := benchDecoder(b)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		batch, err := d.Decode("application/json", body, nil, goldenNow)
		if err != nil || len(batch.Coords) != want {
			b.Fatal(err)
		}
		if then != nil {
			then(batch)
		}
	}
}

func BenchmarkDecodeSingle(b *testing.B) { decodeLoop(b, []byte(benchItem(1)), 1, nil) }

func BenchmarkDecodeBatch100(b *testing.B) { decodeLoop(b, benchBatch(100), 100, nil) }

func BenchmarkAppendJSON(b *testing.B) {
	batch, err := benchDecoder(b).DecodeJSON([]byte(benchItem(1)), goldenNow)
	if err != nil {
		b.Fatal(err)
	}
	c := &batch.Coords[0]
	buf := c.AppendJSON(nil)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = c.AppendJSON(buf[:0])
	}
}

func BenchmarkMsgID(b *testing.B) {
	batch, err := benchDecoder(b).DecodeJSON([]byte(benchItem(1)), goldenNow)
	if err != nil {
		b.Fatal(err)
	}
	c := &batch.Coords[0]
	b.ReportAllocs()
	for b.Loop() {
		_ = c.MsgID()
	}
}

func BenchmarkToken(b *testing.B) {
	for _, id := range []string{"356938035643809", "camión 7"} {
		b.Run(id, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Token(id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPipelineBatch100 is the work one 100-item request costs the
// bridge in this package: decode, then per coordinate the message body
// (AppendJSON, into one shared buffer as bridge.Publisher.Records does) and
// the message id.
func BenchmarkPipelineBatch100(b *testing.B) {
	decodeLoop(b, benchBatch(100), 100, func(batch *Batch) {
		size := 0
		for i := range batch.Coords {
			size += 320 + 2*len(batch.Coords[i].Raw) // as bridge.Publisher.Records sizes it
		}
		buf := make([]byte, 0, size)
		for i := range batch.Coords {
			c := &batch.Coords[i]
			buf = c.AppendJSON(buf)
			_ = c.MsgID()
		}
	})
}
