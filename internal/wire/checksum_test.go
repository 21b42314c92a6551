package wire

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// sameBatch reports whether two decoded batches carry the same data.
func sameBatch(a, b *Batch) bool {
	if a.Identity != b.Identity || a.BaseTime != b.BaseTime || a.AgentVersion != b.AgentVersion || a.Decoder != b.Decoder ||
		len(a.Readings) != len(b.Readings) || len(a.Fixes) != len(b.Fixes) {
		return false
	}
	ra, rb := sortedReadings(a.Readings), sortedReadings(b.Readings)
	for i := range ra {
		x, y := ra[i], rb[i]
		if x.Signal != y.Signal || x.Unit != y.Unit || x.Time != y.Time || x.Value.Kind != y.Value.Kind || x.Value.Int != y.Value.Int ||
			x.Value.Bool != y.Value.Bool || x.Value.Str != y.Value.Str || !sameFloat(x.Value.Float, y.Value.Float) {
			return false
		}
	}
	for i := range a.Fixes {
		x, y := a.Fixes[i], b.Fixes[i]
		if x.Time != y.Time || !sameFloat(x.Lat, y.Lat) || !sameFloat(x.Lon, y.Lon) || !sameFloat(x.Alt, y.Alt) ||
			!sameFloat(x.Speed, y.Speed) || !sameFloat(x.Heading, y.Heading) || !sameFloat(x.Accuracy, y.Accuracy) {
			return false
		}
	}
	return true
}

// Every single-bit flip anywhere in a batch is refused, or (a flip in the
// checksum's own tag byte) leaves the data intact and the batch unchecked;
// requiring a checksum refuses those too. Without the checksum about one
// flip in ten decoded to different readings.
func TestChecksumCatchesEveryBitFlip(t *testing.T) {
	cat := sampleCatalog(t)
	cats := Catalogs{}
	cats.Add(cat)
	withCat := sampleBatch()
	withCat.Readings = withCat.Readings[:0]
	for _, r := range sampleBatch().Readings {
		if _, ok := cat.index[signalKey{r.Signal, r.Unit, r.Value.Kind}]; ok {
			withCat.Readings = append(withCat.Readings, r)
		}
	}
	for name, c := range map[string]struct {
		b   *Batch
		opt EncodeOptions
	}{
		"zstd":    {sampleBatch(), EncodeOptions{}},
		"plain":   {sampleBatch(), EncodeOptions{Compression: CompressionNone}},
		"catalog": {withCat, EncodeOptions{Catalog: cat}},
	} {
		t.Run(name, func(t *testing.T) {
			good, err := Encode(c.b, c.opt)
			if err != nil {
				t.Fatal(err)
			}
			want, err := Decode(good, Limits{Catalogs: cats})
			if err != nil || !want.Checked {
				t.Fatalf("the batch itself: checked %v, %v", want != nil && want.Checked, err)
			}
			corrupt, other := 0, 0
			for i := range len(good) * 8 {
				data := bytes.Clone(good)
				data[i/8] ^= 1 << (i % 8)
				got, err := Decode(data, Limits{Catalogs: cats})
				switch {
				case errors.Is(err, ErrCorrupt):
					corrupt++
				case err != nil:
					other++
					if !IsInvalid(err) {
						t.Fatalf("flip of bit %d: %v is not an invalid-batch error", i, err)
					}
				case got.Checked || !sameBatch(got, want):
					t.Fatalf("flip of bit %d (byte %d of %d) decoded to different data (checked %v)", i, i/8, len(good), got.Checked)
				default:
					if _, err := Decode(data, Limits{Catalogs: cats, RequireChecksum: true}); !errors.Is(err, ErrNoChecksum) {
						t.Fatalf("flip of bit %d left an unchecked batch that RequireChecksum accepts: %v", i, err)
					}
					if i/8 != len(good)-checksumLen {
						t.Fatalf("flip of bit %d (byte %d of %d) went unnoticed outside the checksum's tag", i, i/8, len(good))
					}
				}
			}
			// Nearly every flip is reported as what it is.
			if total := len(good) * 8; corrupt < total*99/100 {
				t.Errorf("%d of %d flips reported as corrupt, %d as otherwise invalid", corrupt, total, other)
			}
		})
	}
}

// A random coded section, or random bytes anywhere, never pass: without the
// checksum a random coded section decoded in nearly half the cases.
func TestChecksumCatchesRandomSections(t *testing.T) {
	good, err := Encode(sampleBatch(), EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := &pb.Batch{}
	if err := proto.Unmarshal(good, env); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		e := proto.Clone(env).(*pb.Batch)
		for i := range e.Coded {
			e.Coded[i] = byte(rng.Uint32())
		}
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(e) // the old checksum kept
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(data, Limits{}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("random coded section: %v, want ErrCorrupt", err)
		}
	}
}

// Batches of agents built before the checksum decode as before, unchecked;
// a reader that requires the checksum refuses them.
func TestBatchesWithoutChecksumStillDecode(t *testing.T) {
	for _, name := range []string{"v2-unchecked-sample.zstd.bin", "v2-unchecked-sample.plain.bin", "layout2-sample.zstd.bin", "layout1-sample.plain.bin"} {
		data, err := os.ReadFile(filepath.Join("testdata", "seeds", name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Decode(data, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b.Checked {
			t.Errorf("%s: reported as checked", name)
		}
		if _, err := Decode(data, Limits{RequireChecksum: true}); !errors.Is(err, ErrNoChecksum) {
			t.Errorf("%s with RequireChecksum: %v, want ErrNoChecksum", name, err)
		}
	}
	cur, err := os.ReadFile(filepath.Join("testdata", "seeds", "sample.zstd.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := Decode(cur, Limits{RequireChecksum: true}); err != nil || !b.Checked {
		t.Errorf("current golden batch: checked %v, %v", b != nil && b.Checked, err)
	}
}

// The checksum covers fields it does not know (added by later agents)
// wherever they sit, and its own place in the batch does not matter.
func TestChecksumCoversEveryOtherField(t *testing.T) {
	good, err := Encode(sampleBatch(), EncodeOptions{Compression: CompressionNone})
	if err != nil {
		t.Fatal(err)
	}
	unsealed := good[:len(good)-checksumLen]
	// A later field (13, bytes), then the checksum.
	later := protowire.AppendTag(bytes.Clone(unsealed), 13, protowire.BytesType)
	later = protowire.AppendBytes(later, []byte("capture window"))
	sealed := AppendChecksum(later)
	if b, err := Decode(sealed, Limits{}); err != nil || !b.Checked {
		t.Fatalf("with a later field: checked %v, %v", b != nil && b.Checked, err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(unsealed)+3] ^= 0x20 // inside "capture window"
	if _, err := Decode(flipped, Limits{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a flip in a later field: %v, want ErrCorrupt", err)
	}
	// The checksum first, then the rest: the same checksum verifies.
	first := append(bytes.Clone(sealed[len(sealed)-checksumLen:]), later...)
	if b, err := Decode(first, Limits{}); err != nil || !b.Checked {
		t.Errorf("checksum first: checked %v, %v", b != nil && b.Checked, err)
	}
	// Two checksums, or one of the wrong wire type, are malformed.
	twice := append(bytes.Clone(sealed), sealed[len(sealed)-checksumLen:]...)
	if _, err := Decode(twice, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("two checksums: %v, want ErrMalformed", err)
	}
	wrongType := protowire.AppendTag(bytes.Clone(unsealed), checksumField, protowire.VarintType)
	wrongType = protowire.AppendVarint(wrongType, 7)
	if _, err := Decode(wrongType, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("a varint checksum: %v, want ErrMalformed", err)
	}
}

func TestSealReplacesTheChecksum(t *testing.T) {
	good, err := Encode(sampleBatch(), EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := &pb.Batch{}
	if err := proto.Unmarshal(good, env); err != nil {
		t.Fatal(err)
	}
	env.Seq = 7
	data, err := Seal(env)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Decode(data, Limits{RequireChecksum: true})
	if err != nil || b.Seq != 7 {
		t.Fatalf("resealed batch: %v, seq %v", err, b)
	}
}

func BenchmarkVerifyChecksum(b *testing.B) {
	good, err := Encode(sampleBatch(), EncodeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(good)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verifyChecksum(good); err != nil {
			b.Fatal(err)
		}
	}
}
