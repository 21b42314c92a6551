package wire

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// goldenBatches are committed encodings: the wire format must not change by
// accident (agents in the field keep sending what they were built with).
// They also seed FuzzDecode.
func goldenBatches() map[string][]byte {
	enc := func(b *Batch, opt EncodeOptions) []byte {
		data, err := Encode(b, opt)
		if err != nil {
			panic(err)
		}
		return data
	}
	fixesOnly := sampleBatch()
	fixesOnly.Readings = nil
	return map[string][]byte{
		"sample.zstd.bin":  enc(sampleBatch(), EncodeOptions{}),
		"sample.plain.bin": enc(sampleBatch(), EncodeOptions{Compression: CompressionNone}),
		"fixes-only.bin":   enc(fixesOnly, EncodeOptions{Compression: CompressionNone, TickNanos: 1_000_000}),
		"empty.bin":        enc(&Batch{Identity: Identity{VehicleID: "v", Epoch: 1, Seq: 1}, BaseTime: t0}, EncodeOptions{}),
	}
}

func TestGoldenEncoding(t *testing.T) {
	dir := filepath.Join("testdata", "seeds")
	for name, got := range goldenBatches() {
		p := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (run go test ./internal/wire -run TestGoldenEncoding -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: the encoding changed (%d bytes, golden %d); if on purpose, bump SchemaVersion or prove compatibility, then -update", name, len(got), len(want))
		}
		if _, err := Decode(want, Limits{}); err != nil {
			t.Errorf("%s: golden batch does not decode: %v", name, err)
		}
	}
}

// TestEarlierLayoutsStillDecode proves each new layout an addition, not a
// break: batches as agents built before it send them decode to the
// readings they were made from. Layout 1 (schema version 1) has every
// column a Column of its own and time columns in Body.times; layout 2
// (still schema version 1) packs integer columns into Body.packed; the
// current layout (schema version 2) codes them in Batch.coded.
func TestEarlierLayoutsStillDecode(t *testing.T) {
	in := sampleBatch()
	all := sortedReadings(in.Readings)
	var noTorque []Reading // the sample had no DBC-scaled signal in layout 1
	for _, r := range all {
		if r.Signal != "torque" {
			noTorque = append(noTorque, r)
		}
	}
	for name, want := range map[string][]Reading{
		"layout1-sample.zstd.bin":  noTorque,
		"layout1-sample.plain.bin": noTorque,
		"layout2-sample.zstd.bin":  all,
		"layout2-sample.plain.bin": all,
	} {
		data, err := os.ReadFile(filepath.Join("testdata", "seeds", name))
		if err != nil {
			t.Fatal(err)
		}
		out, err := Decode(data, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if out.SchemaVersion != 1 {
			t.Errorf("%s: schema version %d, want 1", name, out.SchemaVersion)
		}
		got := sortedReadings(out.Readings)
		if len(got) != len(want) || len(out.Fixes) != len(in.Fixes) {
			t.Fatalf("%s: %d readings and %d fixes, want %d and %d", name, len(got), len(out.Fixes), len(want), len(in.Fixes))
		}
		for i := range want {
			if got[i].Signal != want[i].Signal || got[i].Time != want[i].Time || got[i].Value.Kind != want[i].Value.Kind || got[i].Value.Int != want[i].Value.Int ||
				got[i].Value.Bool != want[i].Value.Bool || got[i].Value.Str != want[i].Value.Str || !sameFloat(got[i].Value.Float, want[i].Value.Float) {
				t.Fatalf("%s: reading %d: got %+v, want %+v", name, i, got[i], want[i])
			}
		}
	}
}
