package spool

import (
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpus in testdata/spool/seeds")

// seedDir holds the seed corpus: whole segment files, clean and damaged.
var seedDir = filepath.Join("..", "..", "testdata", "spool", "seeds")

// seedSegments builds the seed corpus.
func seedSegments() map[string][]byte {
	h := segHeader{class: High, epoch: 0x1234_5678_9abc_def0, index: 7, floor: 41}.encode()
	clean := append([]byte(nil), h...)
	for i := range 6 {
		seq := uint64(42 + i)
		clean = appendRecord(clean, seq, Class(i%2), 1_750_000_000_000_000_000+int64(i), 1_749_999_999_000_000_000+int64(i), uint32(10*i), payloadFor(seq)[:10+7*i])
	}
	flipped := append([]byte(nil), clean...)
	flipped[segHeaderSize+recHeaderSize+3] ^= 0x10
	badLen := append([]byte(nil), clean...)
	le.PutUint32(badLen[segHeaderSize+4:], 0xfffffff0)
	return map[string][]byte{
		"clean.seg":        clean,
		"torn-tail.seg":    clean[:len(clean)-5],
		"torn-header.seg":  clean[:segHeaderSize+recHeaderSize-1],
		"flipped.seg":      flipped,
		"bad-length.seg":   badLen,
		"zero-tail.seg":    append(append([]byte(nil), clean...), make([]byte, 64)...),
		"header-only.seg":  h,
		"empty-record.seg": appendRecord(append([]byte(nil), h...), 42, Bulk, 0, 0, 0, nil),
		"short.seg":        h[:20],
		"ack.ack":          appendAckEntry(appendAckEntry(encodeAckHeader(7), 7, 42, 44), 7, 47, 47),
	}
}

func TestSeedCorpus(t *testing.T) {
	seeds := seedSegments()
	if *update {
		if err := os.MkdirAll(seedDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			if err := os.WriteFile(filepath.Join(seedDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, want := range seeds {
		got, err := os.ReadFile(filepath.Join(seedDir, name))
		if err != nil {
			t.Fatalf("%v (run with -update to write the seed corpus)", err)
		}
		if string(got) != string(want) {
			t.Fatalf("%s differs from what this code writes: the on-disk format changed (bump formatVersion, then -update)", name)
		}
	}
	// The clean seed reads back whole.
	recs, bad := scanRecords(seeds["clean.seg"][segHeaderSize:], segHeaderSize, 0)
	if len(recs) != 6 || len(bad) != 0 {
		t.Fatalf("clean seed: %d records, bad %v", len(recs), bad)
	}
	if recs, bad := scanRecords(seeds["flipped.seg"][segHeaderSize:], segHeaderSize, 0); len(recs) != 5 || len(bad) != 1 {
		t.Fatalf("flipped seed: %d records, bad %v", len(recs), bad)
	}
}

func addSeeds(f *testing.F) {
	ents, err := os.ReadDir(seedDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(seedDir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzRecordReader feeds arbitrary bytes to the segment reader: it never
// panics, returns only records whose CRC-32C matches, and accounts for
// every byte as a record or a bad region.
func FuzzRecordReader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseSegHeader(data)
		_, _, _ = parseAcks(data, 7)
		_, _ = parseState(data)
		body := data[min(len(data), segHeaderSize):]
		recs, bad := scanRecords(body, segHeaderSize, 0)
		pos := int64(segHeaderSize)
		ri, bi := 0, 0
		var last uint64
		for ri < len(recs) || bi < len(bad) {
			if ri < len(recs) && recs[ri].off == pos {
				r := recs[ri]
				frame := body[r.off-segHeaderSize : r.off-segHeaderSize+r.size]
				h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
				h.Write(frame[:8])
				h.Write(frame[12:])
				if h.Sum32() != le.Uint32(frame[8:]) {
					t.Fatalf("record at %d returned with a bad CRC", r.off)
				}
				if r.seq <= last || int64(le.Uint32(frame[4:]))+recHeaderSize != r.size || r.seq != le.Uint64(frame[12:]) {
					t.Fatalf("record at %d: seq %d after %d, size %d", r.off, r.seq, last, r.size)
				}
				last = r.seq
				pos += r.size
				ri++
			} else if bi < len(bad) && bad[bi].off == pos && bad[bi].size > 0 {
				pos += bad[bi].size
				bi++
			} else {
				t.Fatalf("records and bad regions do not tile the input at %d", pos)
			}
		}
		if pos != segHeaderSize+int64(len(body)) {
			t.Fatalf("covered up to %d of %d", pos, segHeaderSize+len(body))
		}
	})
}

// FuzzOpen puts arbitrary bytes in a segment file (behind a valid header
// half the time) and an ack file, and opens the spool: it always opens,
// every pending record reads back with a valid checksum, and appends work.
func FuzzOpen(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		seg := data
		if len(data) > 0 && data[0]&1 == 1 {
			seg = append(segHeader{class: Class(data[0] >> 1 & 1), epoch: 99, index: 7}.encode(), data...)
		}
		ack := append(encodeAckHeader(7), data[len(data)/2:]...)
		if err := os.WriteFile(filepath.Join(dir, segName(7)), seg, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, strings.TrimSuffix(segName(7), segSuffix)+ackSuffix), ack, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := Config{Dir: dir, Fsync: FsyncNever, MaxAge: -1}
		s, err := Open(cfg, Deps{Now: func() time.Time { return time.Unix(1_800_000_000, 0) }})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		for r, err := range s.Pending(0) {
			if err != nil {
				t.Fatalf("Pending: %v", err)
			}
			if r.Seq == 0 {
				t.Fatal("seq 0 read back")
			}
		}
		seq, err := s.Reserve()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Append(seq, []byte(fmt.Sprint(seq)), Meta{}); err != nil {
			t.Fatalf("append after recovery: %v", err)
		}
		if _, err := s.Get(seq); err != nil {
			t.Fatal(err)
		}
	})
}
