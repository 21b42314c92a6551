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
