package spool

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// built is a closed spool and what its files hold.
type built struct {
	dir   string
	cfg   Config
	files map[string][]byte
	seqs  []uint64
	// where each seq's record lies: file name and byte range
	where map[uint64]loc
}

type loc struct {
	file     string
	off, end int64
}

func build(t *testing.T, n int, segBytes int64) built {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: segBytes, MaxBytes: 1 << 24, Fsync: FsyncNever}
	s := mustOpen(t, cfg)
	seqs := appendN(t, s, n)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b := built{dir: dir, cfg: cfg, files: snapshot(t, dir), seqs: seqs, where: map[uint64]loc{}}
	for name, data := range b.files {
		if !strings.HasSuffix(name, segSuffix) {
			continue
		}
		recs, bad := scanRecords(data[segHeaderSize:], segHeaderSize, 0)
		if len(bad) != 0 {
			t.Fatalf("%s: bad regions in a clean segment: %v", name, bad)
		}
		for _, r := range recs {
			b.where[r.seq] = loc{name, r.off, r.off + r.size}
		}
	}
	if len(b.where) != n {
		t.Fatalf("found %d records, want %d", len(b.where), n)
	}
	return b
}

func (b built) newest() string {
	var names []string
	for name := range b.files {
		if strings.HasSuffix(name, segSuffix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names[len(names)-1]
}

// damage restores the spool into a fresh directory with one file changed.
func (b built) damage(t *testing.T, dir, file string, change func([]byte) []byte) Config {
	files := map[string][]byte{}
	for k, v := range b.files {
		files[k] = v
	}
	files[file] = change(slices.Clone(files[file]))
	restore(t, dir, files)
	cfg := b.cfg
	cfg.Dir = dir
	return cfg
}

// expectPending checks that exactly the seqs not in lost are pending,
// and that those of the damaged file read back intact.
func expectPending(t *testing.T, s *Spool, b built, more []uint64, damaged string, lost func(uint64) bool) {
	t.Helper()
	var want []uint64
	for _, q := range append(slices.Clone(b.seqs), more...) {
		if !lost(q) {
			want = append(want, q)
		}
	}
	if got := pendingSeqs(t, s); !slices.Equal(got, want) {
		t.Fatalf("pending %d records, want %d: missing %v, extra %v", len(got), len(want), without(want, got), without(got, want))
	}
	for _, q := range want {
		if l, ok := b.where[q]; !ok || l.file == damaged {
			r, err := s.Get(q)
			if err != nil {
				t.Fatal(err)
			}
			checkRecord(t, r)
		}
	}
}

func TestTornTailAtEveryOffset(t *testing.T) {
	b := build(t, 200, 16<<10)
	newest := b.newest()
	var inNewest []uint64
	for _, q := range b.seqs {
		if b.where[q].file == newest {
			inNewest = append(inNewest, q)
		}
	}
	if len(inNewest) < 20 {
		t.Fatalf("only %d records in the newest segment", len(inNewest))
	}
	size := int64(len(b.files[newest]))
	boundary := map[int64]bool{segHeaderSize: true}
	for _, q := range inNewest {
		boundary[b.where[q].end] = true
	}
	var cuts []int64
	for c := b.where[inNewest[len(inNewest)-3]].off; c < size; c++ {
		cuts = append(cuts, c) // every offset of the last three records
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 40 {
		cuts = append(cuts, segHeaderSize+rng.Int64N(size-segHeaderSize)) // and anywhere
	}
	base := t.TempDir()
	for i, cut := range cuts {
		dir := filepath.Join(base, "x")
		cfg := b.damage(t, dir, newest, func(d []byte) []byte { return d[:cut] })
		s := mustOpen(t, cfg)
		st := s.Stats()
		wantCorrupt := 1
		if boundary[cut] {
			wantCorrupt = 0
		}
		if st.Recovery.CorruptRecords != wantCorrupt || st.Corrupt != wantCorrupt {
			t.Fatalf("cut at %d: %d corrupt records, want %d", cut, st.Recovery.CorruptRecords, wantCorrupt)
		}
		lost := func(q uint64) bool { l := b.where[q]; return l.file == newest && l.end > cut }
		expectPending(t, s, b, nil, newest, lost)
		// Clean close recorded seq 200: no seq is reused even though the
		// cut removed records.
		if st.NextSeq != 201 {
			t.Fatalf("cut at %d: next seq %d, want 201", cut, st.NextSeq)
		}
		if i%8 != 0 {
			crash(s) // no fsync: quicker
			continue
		}
		more := appendN(t, s, 2)
		s.Close()
		s = mustOpen(t, cfg)
		if st := s.Stats(); st.Recovery.CorruptRecords != 0 {
			t.Fatalf("cut at %d: corrupt again after the repair: %+v", cut, st.Recovery)
		}
		expectPending(t, s, b, more, newest, lost)
		crash(s)
	}
	t.Logf("%d cuts, each recovered", len(cuts))
}

func TestGarbageTail(t *testing.T) {
	b := build(t, 50, 64<<10)
	newest := b.newest()
	for _, tail := range [][]byte{make([]byte, 4096), {recMagic}, {recMagic, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f}, []byte(strings.Repeat("\xa7\x00\x00\x00\x08\x00\x00\x00", 500))} {
		cfg := b.damage(t, filepath.Join(t.TempDir(), "x"), newest, func(d []byte) []byte { return append(d, tail...) })
		s := mustOpen(t, cfg)
		if st := s.Stats(); st.Recovery.CorruptRecords != 1 || st.Recovery.TruncatedBytes != int64(len(tail)) {
			t.Fatalf("garbage tail of %d bytes: %+v", len(tail), st.Recovery)
		}
		expectPending(t, s, b, nil, newest, func(uint64) bool { return false })
		appendN(t, s, 1)
		s.Close()
	}
}

func TestFlippedBytes(t *testing.T) {
	b := build(t, 300, 8<<10)
	var names []string
	for name := range b.files {
		if strings.HasSuffix(name, segSuffix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	rng := rand.New(rand.NewPCG(3, 4))
	base := t.TempDir()
	headers := 0
	for i := range 150 {
		file := names[rng.IntN(len(names))]
		size := int64(len(b.files[file]))
		off := rng.Int64N(size)
		if i%10 == 0 {
			off = rng.Int64N(segHeaderSize) // the header, now and then
		}
		flip := byte(1 + rng.IntN(255))
		dir := filepath.Join(base, "x")
		cfg := b.damage(t, dir, file, func(d []byte) []byte { d[off] ^= flip; return d })
		s := mustOpen(t, cfg)
		st := s.Stats()
		var lost func(uint64) bool
		if off < segHeaderSize {
			headers++
			// The whole segment is set aside, its seqs kept from reuse.
			if st.Recovery.QuarantinedSegments != 1 || st.Recovery.CorruptRecords != 0 {
				t.Fatalf("flip in the header of %s: %+v", file, st.Recovery)
			}
			q, _ := filepath.Glob(filepath.Join(dir, file+".*"+corruptSuffix))
			if len(q) != 1 {
				t.Fatalf("quarantined files: %v", q)
			}
			lost = func(q uint64) bool { return b.where[q].file == file }
		} else {
			if st.Recovery.CorruptRecords != 1 || st.Recovery.QuarantinedSegments != 0 {
				t.Fatalf("flip at %s:%d: %+v", file, off, st.Recovery)
			}
			lost = func(q uint64) bool { l := b.where[q]; return l.file == file && l.off <= off && off < l.end }
		}
		if st.NextSeq != 301 {
			t.Fatalf("next seq %d, want 301", st.NextSeq)
		}
		expectPending(t, s, b, nil, file, lost)
		more := appendN(t, s, 1)
		crash(s)
		// The damage was cut out once: the next open finds none.
		s = mustOpen(t, cfg)
		if st := s.Stats(); st.Recovery.CorruptRecords != 0 || st.Recovery.QuarantinedSegments != 0 {
			t.Fatalf("flip at %s:%d: second open: %+v", file, off, st.Recovery)
		}
		expectPending(t, s, b, more, file, lost)
		crash(s)
	}
	if headers == 0 {
		t.Fatal("no header flip tried")
	}
}

func TestQuarantineKeepsFewFiles(t *testing.T) {
	dir := t.TempDir()
	for i := range 7 {
		name := filepath.Join(dir, segName(uint64(100+i)))
		if err := os.WriteFile(name, []byte(strings.Repeat("not a segment header at all...........!", 2)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := mustOpen(t, Config{Dir: dir})
	defer s.Close()
	if st := s.Stats(); st.Recovery.QuarantinedSegments != 7 || !st.Recovery.NewEpoch {
		t.Fatalf("%+v", st.Recovery)
	}
	q, _ := filepath.Glob(filepath.Join(dir, "*"+corruptSuffix))
	if len(q) != keepQuarantined {
		t.Fatalf("%d quarantined files kept, want %d", len(q), keepQuarantined)
	}
	appendN(t, s, 3)
}
