package wire

import (
	"fmt"
	"testing"
)

// TestDecodeIntoReuses: decoding batch after batch into one Batch gives
// what Decode gives each time, whatever the previous batch left in it (more
// readings, fixes, a capture marker).
func TestDecodeIntoReuses(t *testing.T) {
	big := sampleBatch()
	big.Capture = &Capture{ID: 3, Rule: "harsh_brake"}
	small := sampleBatch()
	small.Readings = small.Readings[:1]
	small.Fixes = nil
	var into Batch
	for _, b := range []*Batch{big, small, big, small} {
		data, err := Encode(b, EncodeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want, err := Decode(data, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if err := DecodeInto(data, Limits{}, &into); err != nil {
			t.Fatal(err)
		}
		// Compared as printed: fixes hold NaNs, which DeepEqual never equals.
		if len(want.Fixes) == 0 {
			want.Fixes = into.Fixes[:0]
		}
		got, wnt := into, *want
		if fmt.Sprint(got.Capture) != fmt.Sprint(wnt.Capture) && (got.Capture == nil || wnt.Capture == nil || *got.Capture != *wnt.Capture) {
			t.Fatalf("capture %v, want %v", got.Capture, wnt.Capture)
		}
		got.Capture, wnt.Capture = nil, nil
		if g, w := fmt.Sprintf("%#v", got), fmt.Sprintf("%#v", wnt); g != w {
			t.Fatalf("DecodeInto gave\n%s\nDecode gives\n%s", g, w)
		}
	}
}
