package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRoundTripAndRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 2048, MaxBytes: 1 << 20}
	s := mustOpen(t, cfg)
	st := s.Stats()
	if !st.Recovery.NewEpoch || st.Epoch == 0 || st.Epoch >= 1<<63 || st.NextSeq != 1 {
		t.Fatalf("fresh spool: %+v", st)
	}
	epoch := st.Epoch
	seqs := appendN(t, s, 100)
	if got := pending(t, s); !slices.Equal(got, seqs) {
		t.Fatalf("pending %v, want %v", got, seqs)
	}
	var high []uint64
	for _, q := range seqs {
		if metaFor(q).Class == High {
			high = append(high, q)
		}
	}
	if got := pending(t, s, High); !slices.Equal(got, high) {
		t.Fatalf("pending high %v, want %v", got, high)
	}
	newest, err := s.Newest(3)
	if err != nil || len(newest) != 3 || newest[0].Seq != 100 || newest[2].Seq != 98 {
		t.Fatalf("Newest(3) = %v, %v", newest, err)
	}
	r, err := s.Get(42)
	if err != nil {
		t.Fatal(err)
	}
	checkRecord(t, r)
	if len(segFiles(t, dir)) < 4 {
		t.Fatalf("want the segments to roll at 2 KiB; have %d files", len(segFiles(t, dir)))
	}

	// Ack the first 60 and a few more; the oldest segments go.
	acked := append(seqs[:60:60], 70, 75, 99)
	if n, err := s.AckRange(1, 55); err != nil || n != 55 {
		t.Fatalf("AckRange = %d, %v", n, err)
	}
	if n, err := s.Ack(56, 57, 58, 59, 60, 60, 70, 75, 99, 1000); err != nil || n != 8 {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	if _, err := s.Get(70); !isErr(err, ErrNotFound) {
		t.Fatalf("Get(acked) = %v", err)
	}
	want := without(seqs, acked)
	if got := pending(t, s); !slices.Equal(got, want) {
		t.Fatalf("pending after acks %v, want %v", got, want)
	}
	if st := s.Stats(); st.Records != len(want) || st.Bytes != diskBytes(t, dir) {
		t.Fatalf("stats %+v: want %d records and %d bytes", st, len(want), diskBytes(t, dir))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !isErr(err, ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}

	s = mustOpen(t, cfg)
	st = s.Stats()
	if st.Epoch != epoch || st.NextSeq != 101 || st.Recovery.NewEpoch || st.Recovery.CorruptRecords != 0 {
		t.Fatalf("after restart: %+v", st)
	}
	if got := pending(t, s); !slices.Equal(got, want) {
		t.Fatalf("pending after restart %v, want %v", got, want)
	}
	more := appendN(t, s, 5)
	if more[0] != 101 {
		t.Fatalf("seq after restart %d, want 101", more[0])
	}
	// Ack everything: all but the active segments are deleted, and the
	// seq still continues after a restart (STATE keeps the floor).
	if _, err := s.AckRange(0, 1<<62); err != nil {
		t.Fatal(err)
	}
	if n := len(segFiles(t, dir)); n > 2 {
		t.Fatalf("%d segment files left with everything acked", n)
	}
	crash(s)
	s = mustOpen(t, cfg)
	defer s.Close()
	if st := s.Stats(); st.NextSeq != 106 || st.Records != 0 || st.Epoch != epoch {
		t.Fatalf("after acking all and crashing: %+v", st)
	}
}

func TestWipedDirectoryGetsNewEpoch(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir}
	s := mustOpen(t, cfg)
	e1 := s.Epoch()
	appendN(t, s, 3)
	s.Close()

	// STATE lost: the segments still name the epoch.
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, cfg)
	if st := s.Stats(); st.Epoch != e1 || st.NextSeq != 4 || st.Records != 3 {
		t.Fatalf("STATE lost: %+v", st)
	}
	s.Close()

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, cfg)
	defer s.Close()
	st := s.Stats()
	if st.Epoch == e1 || !st.Recovery.NewEpoch || st.NextSeq != 1 || st.Records != 0 {
		t.Fatalf("wiped: %+v (old epoch %x)", st, e1)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Config{Dir: dir})
	defer s.Close()
	if _, err := Open(Config{Dir: dir}, Deps{}); !isErr(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

func TestAppendContract(t *testing.T) {
	s := mustOpen(t, Config{Dir: t.TempDir(), MaxBytes: 1 << 20})
	defer s.Close()
	if err := s.Append(1, nil, Meta{}); err == nil {
		t.Fatal("append of an unreserved seq succeeded")
	}
	a, _ := s.Reserve()
	b, _ := s.Reserve()
	if err := s.Append(b, []byte("b"), Meta{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(a, []byte("a"), Meta{}); err == nil {
		t.Fatal("append below the last appended seq succeeded")
	}
	c, _ := s.Reserve()
	if err := s.Append(c, make([]byte, 1<<20), Meta{}); !isErr(err, ErrTooLarge) {
		t.Fatalf("oversized append = %v", err)
	}
	if err := s.Append(c, nil, Meta{Class: 7}); err == nil {
		t.Fatal("unknown class accepted")
	}
	if err := s.Append(c, nil, Meta{}); err != nil {
		t.Fatalf("empty payload: %v", err)
	}
}

func TestFsyncNeverLeasesSeqs(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, Fsync: FsyncNever, SeqLease: 100}
	s := mustOpen(t, cfg)
	appendN(t, s, 10)
	crash(s)
	s = mustOpen(t, cfg)
	// A power cut could have lost records 1..10 after they were sent: the
	// lease keeps their seqs from being handed out again.
	if st := s.Stats(); st.NextSeq != 101 {
		t.Fatalf("after a crash under fsync=never: next seq %d, want 101", st.NextSeq)
	}
	appendN(t, s, 1)
	s.Close()
	s = mustOpen(t, cfg)
	defer s.Close()
	if st := s.Stats(); st.NextSeq != 102 {
		t.Fatalf("after a clean close: next seq %d, want 102 (no gap)", st.NextSeq)
	}
}

func TestAcksSurviveCrashAndTornAckFile(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 1 << 20, AckSyncInterval: time.Hour}
	s := mustOpen(t, cfg)
	seqs := appendN(t, s, 20)
	if _, err := s.Ack(2, 3, 4, 10, 11); err != nil {
		t.Fatal(err)
	}
	crash(s) // acks written but never fsynced: a kill -9 keeps them
	acks, _ := filepath.Glob(filepath.Join(dir, "*"+ackSuffix))
	if len(acks) == 0 {
		t.Fatal("no ack file")
	}
	for _, p := range acks {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte{1, 2, 3, 4, 5, 6, 7}) // a torn entry
		f.Close()
	}
	s = mustOpen(t, cfg)
	want := without(seqs, []uint64{2, 3, 4, 10, 11})
	if got := pending(t, s); !slices.Equal(got, want) {
		t.Fatalf("pending %v, want %v", got, want)
	}
	if st := s.Stats(); st.Recovery.AckEntriesSkipped != len(acks) {
		t.Fatalf("ack entries skipped %d, want %d", st.Recovery.AckEntriesSkipped, len(acks))
	}
	// New acks after the repaired torn entry are read back too.
	if _, err := s.Ack(5); err != nil {
		t.Fatal(err)
	}
	crash(s)
	s = mustOpen(t, cfg)
	defer s.Close()
	if got := pending(t, s); !slices.Equal(got, without(want, []uint64{5})) {
		t.Fatalf("pending %v", got)
	}
}

// dropModel appends and acks, then checks that the spool's drops are
// exactly the records gone without an ack, and that their counts add up.
type dropModel struct {
	t        *testing.T
	s        *Spool
	reg      *prometheus.Registry
	dir      string
	cfg      Config
	meta     map[uint64]Meta
	acked    map[uint64]bool
	rejected Drops
}

func newDropModel(t *testing.T, cfg Config, now func() time.Time) *dropModel {
	reg := prometheus.NewRegistry()
	cfg.Dir = t.TempDir()
	m := &dropModel{t: t, reg: reg, dir: cfg.Dir, cfg: cfg, meta: map[uint64]Meta{}, acked: map[uint64]bool{}}
	m.s = mustOpen(t, cfg, Deps{Registerer: reg, Now: now})
	return m
}

// add appends a record of 60 payload bytes (100 on disk).
func (m *dropModel) add(c Class, readings uint32) (uint64, error) {
	seq, err := m.s.Reserve()
	if err != nil {
		m.t.Fatal(err)
	}
	meta := Meta{Class: c, Readings: readings}
	err = m.s.Append(seq, make([]byte, 60), meta)
	if err == nil {
		m.meta[seq] = meta
	} else if isErr(err, ErrSpoolFull) {
		m.rejected.Batches++
		m.rejected.Readings += uint64(readings)
	}
	if st := m.s.Stats(); st.Bytes > m.cfg.MaxBytes || st.Bytes != diskBytes(m.t, m.dir) {
		m.t.Fatalf("spool holds %d bytes (%d on disk), bound %d", st.Bytes, diskBytes(m.t, m.dir), m.cfg.MaxBytes)
	}
	return seq, err
}

// ack acks seqs one by one, noting those it freed (not already dropped).
func (m *dropModel) ack(seqs ...uint64) {
	for _, q := range seqs {
		n, err := m.s.Ack(q)
		if err != nil {
			m.t.Fatal(err)
		}
		if n == 1 {
			m.acked[q] = true
		}
	}
}

// check returns the dropped seqs of each class, oldest first.
func (m *dropModel) check(reason string) (dropped [numClasses][]uint64) {
	m.t.Helper()
	live := map[uint64]bool{}
	for _, q := range pendingSeqs(m.t, m.s) {
		live[q] = true
	}
	var want Drops
	for q, meta := range m.meta {
		if !live[q] && !m.acked[q] {
			dropped[meta.Class] = append(dropped[meta.Class], q)
			want.Batches++
			want.Readings += uint64(meta.Readings)
		}
	}
	slices.Sort(dropped[0])
	slices.Sort(dropped[1])
	st := m.s.Stats()
	if got := st.Dropped[reason]; got != want {
		m.t.Fatalf("dropped (%s) %+v, want %+v", reason, got, want)
	}
	if got := st.Dropped[ReasonRejected]; got != m.rejected {
		m.t.Fatalf("rejected %+v, want %+v", got, m.rejected)
	}
	for _, r := range reasons {
		d := st.Dropped[r]
		if gb, gr := gather(m.t, m.reg, "fleet_agent_spool_dropped_batches_total", "reason", r),
			gather(m.t, m.reg, "fleet_agent_spool_dropped_readings_total", "reason", r); gb != float64(d.Batches) || gr != float64(d.Readings) {
			m.t.Fatalf("metrics for %s: %v batches %v readings, stats %+v", r, gb, gr, d)
		}
	}
	if g := gather(m.t, m.reg, "fleet_agent_spool_records"); g != float64(len(live)) {
		m.t.Fatalf("records gauge %v, want %d", g, len(live))
	}
	if g := gather(m.t, m.reg, "fleet_agent_spool_bytes"); g != float64(st.Bytes) {
		m.t.Fatalf("bytes gauge %v, want %d", g, st.Bytes)
	}
	return dropped
}

// isPrefix reports whether the dropped seqs are the oldest of the class.
func isOldest(dropped, all []uint64) bool {
	return slices.Equal(dropped, all[:len(dropped)])
}

func TestDropOldestIsExactAndBulkFirst(t *testing.T) {
	// 100-byte records, 10 to a segment, 5 segments.
	m := newDropModel(t, Config{SegmentBytes: segHeaderSize + 1000, MaxBytes: 5 * (segHeaderSize + 1000)}, nil)
	defer m.s.Close()
	var all [2][]uint64
	for i := range 300 {
		c := Bulk
		if i%10 == 3 {
			c = High
		}
		seq, err := m.add(c, uint32(i%37+1))
		if err != nil {
			t.Fatal(err)
		}
		all[c] = append(all[c], seq)
		if i%7 == 0 && i > 100 {
			m.ack(seq - 50) // acked records are not counted when their segment goes
		}
	}
	d := m.check(ReasonFull)
	if len(d[Bulk]) == 0 || len(d[High]) != 0 {
		t.Fatalf("dropped %d bulk and %d high records; want bulk only", len(d[Bulk]), len(d[High]))
	}
	if !isOldest(d[Bulk], without(all[Bulk], mapKeys(m.acked))) {
		t.Fatalf("dropped bulk %v are not the oldest", d[Bulk])
	}

	// Only high records now: the bulk ones go first, then the oldest high.
	for range 200 {
		seq, err := m.add(High, 5)
		if err != nil {
			t.Fatal(err)
		}
		all[High] = append(all[High], seq)
	}
	d = m.check(ReasonFull)
	if len(d[High]) == 0 || !isOldest(d[High], without(all[High], mapKeys(m.acked))) {
		t.Fatalf("dropped high %v are not the oldest", d[High])
	}
	if left := pendingSeqs(t, m.s, Bulk); len(left) != 0 {
		t.Fatalf("high records dropped while %d bulk remain", len(left))
	}
}

func mapKeys(m map[uint64]bool) []uint64 {
	var k []uint64
	for q := range m {
		k = append(k, q)
	}
	return k
}

func TestStopPolicyRejects(t *testing.T) {
	m := newDropModel(t, Config{SegmentBytes: segHeaderSize + 1000, MaxBytes: 3 * (segHeaderSize + 1000), Full: Stop}, nil)
	defer m.s.Close()
	var seqs []uint64
	var last uint64
	var err error
	for {
		if last, err = m.add(Bulk, 3); err != nil {
			break
		}
		seqs = append(seqs, last)
	}
	if !isErr(err, ErrSpoolFull) {
		t.Fatalf("full spool: %v", err)
	}
	if _, err := m.add(High, 4); !isErr(err, ErrSpoolFull) {
		t.Fatalf("full spool, high record: %v", err)
	}
	m.check(ReasonFull) // nothing dropped, two rejections counted
	if m.rejected.Batches != 2 || m.rejected.Readings != 7 {
		t.Fatalf("rejected %+v", m.rejected)
	}
	// Acks free whole segments; the rejected seq can then be appended.
	m.ack(seqs[:15]...)
	if err := m.s.Append(last, make([]byte, 60), Meta{Readings: 3}); err != nil {
		t.Fatalf("append after acks: %v", err)
	}
}

func TestAgeBound(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	m := newDropModel(t, Config{SegmentBytes: segHeaderSize + 1000, MaxBytes: 1 << 20, MaxAge: time.Hour}, clock)
	defer m.s.Close()
	for i := range 25 {
		if _, err := m.add(Bulk, uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	advance(30 * time.Minute)
	if g := gather(t, m.reg, "fleet_agent_spool_oldest_age_seconds"); g != 1800 {
		t.Fatalf("oldest age %v s, want 1800", g)
	}
	for range 5 {
		m.add(High, 2)
	}
	advance(45 * time.Minute) // the first 25 are 75 min old, the 5 high ones 45
	m.add(High, 1)
	d := m.check(ReasonAge)
	if len(d[Bulk]) != 25 || len(d[High]) != 0 {
		t.Fatalf("aged out %v", d)
	}
	if g := gather(t, m.reg, "fleet_agent_spool_oldest_age_seconds"); g != 45*60 {
		t.Fatalf("oldest age %v s, want 2700", g)
	}
}

func TestClockNotSetIsNotAgedOut(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0) // a board booted without a real-time clock
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	m := newDropModel(t, Config{SegmentBytes: segHeaderSize + 1000, MaxBytes: 1 << 20, MaxAge: time.Hour}, clock)
	defer m.s.Close()
	for range 25 {
		m.add(Bulk, 1)
	}
	mu.Lock()
	now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC) // NTP synced
	mu.Unlock()
	m.add(Bulk, 1)
	if d := m.check(ReasonAge); len(d[Bulk]) != 0 {
		t.Fatalf("records stamped by an unset clock were aged out: %v", d)
	}
}

func TestConcurrentAppenderAndAcker(t *testing.T) {
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncInterval, FsyncNever} {
		t.Run(string(policy), func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir, Fsync: policy, FsyncInterval: 2 * time.Millisecond, SegmentBytes: 8192, MaxBytes: 1 << 20, AckSyncInterval: 10 * time.Millisecond}
			s := mustOpen(t, cfg)
			const n = 200
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // the uplink: sends what is pending, acks it
				defer wg.Done()
				var cursor uint64
				for {
					select {
					case <-done:
						return
					default:
					}
					for r, err := range s.Pending(cursor) {
						if err != nil {
							t.Error(err)
							return
						}
						checkRecord(t, r)
						if r.Seq%3 != 0 {
							if _, err := s.Ack(r.Seq); err != nil {
								t.Error(err)
							}
						}
						cursor = r.Seq + 1
					}
					if _, err := s.Newest(2); err != nil {
						t.Error(err)
					}
					_ = s.Stats()
					time.Sleep(time.Millisecond)
				}
			}()
			seqs := appendN(t, s, n)
			close(done)
			wg.Wait()
			if _, err := s.AckRange(1, n); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s = mustOpen(t, cfg)
			defer s.Close()
			if st := s.Stats(); st.Records != 0 || st.NextSeq != seqs[n-1]+1 {
				t.Fatalf("after reopen: %+v", st)
			}
		})
	}
}

func TestMetricsSharedBySpools(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := mustOpen(t, Config{Dir: t.TempDir()}, Deps{Registerer: reg})
	defer a.Close()
	b := mustOpen(t, Config{Dir: t.TempDir()}, Deps{Registerer: reg})
	appendN(t, a, 3)
	appendN(t, b, 4)
	if g := gather(t, reg, "fleet_agent_spool_records"); g != 7 {
		t.Fatalf("records %v, want 7", g)
	}
	if g := gather(t, reg, "fleet_agent_spool_appends_total"); g != 7 {
		t.Fatalf("appends %v, want 7", g)
	}
	if g := gather(t, reg, "fleet_agent_spool_fsync_seconds"); g < 7 {
		t.Fatalf("fsyncs %v, want at least 7", g)
	}
	b.Close()
	if g := gather(t, reg, "fleet_agent_spool_records"); g != 3 {
		t.Fatalf("records after one closed %v, want 3", g)
	}
}

func TestConfigValidateNamesField(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		flag string
	}{
		{Config{}, "spool-dir"},
		{Config{Dir: "x", Fsync: "sometimes"}, "spool-fsync"},
		{Config{Dir: "x", SegmentBytes: 10}, "spool-segment-bytes"},
		{Config{Dir: "x", SegmentBytes: 1 << 20, MaxBytes: 1 << 20}, "spool-max-bytes"},
		{Config{Dir: "x", Full: "panic"}, "spool-full"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "--"+tc.flag) {
			t.Errorf("%+v: %v, want it to name --%s", tc.cfg, err, tc.flag)
		}
	}
	if err := (Config{Dir: "x"}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	c := Config{Dir: "x", MaxBytes: 1 << 20}.withDefaults()
	if c.SegmentBytes != 128<<10 {
		t.Errorf("default segment for a 1 MiB spool: %d", c.SegmentBytes)
	}
	_ = fmt.Sprint(c)
}

func TestAckAcrossClassesInOneCall(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Config{Dir: dir, SegmentBytes: 1024, MaxBytes: 1 << 20})
	defer s.Close()
	seqs := appendN(t, s, 120)
	if n, err := s.Ack(seqs[:100]...); err != nil || n != 100 {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	if st := s.Stats(); st.Bytes != diskBytes(t, dir) || st.Records != 20 || st.Segments != len(segFiles(t, dir)) {
		t.Fatalf("stats %+v, %d bytes in %d files on disk", st, diskBytes(t, dir), len(segFiles(t, dir)))
	}
	acks, _ := filepath.Glob(filepath.Join(dir, "*"+ackSuffix))
	for _, a := range acks {
		if _, err := os.Stat(strings.TrimSuffix(a, ackSuffix) + segSuffix); err != nil {
			t.Fatalf("ack file %s without its segment", a)
		}
	}
	if got := pending(t, s); !slices.Equal(got, seqs[100:]) {
		t.Fatalf("pending %v", got)
	}
}

// TestAckSyncRidesOnAppends: acks are fsynced by the append that comes
// when their sync is nearly due, not by a timer of their own, so an agent
// appending every second does not wake up to sync acks; without appends,
// the timer still syncs them within the interval.
func TestAckSyncRidesOnAppends(t *testing.T) {
	reg := prometheus.NewRegistry()
	now := time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s := mustOpen(t, Config{Dir: t.TempDir(), AckSyncInterval: time.Hour}, Deps{Registerer: reg, Now: clock})
	defer s.Close()
	seqs := appendN(t, s, 2)
	fsyncs := func() float64 { return gather(t, reg, "fleet_agent_spool_fsync_seconds") }
	if _, err := s.Ack(seqs[0]); err != nil {
		t.Fatal(err)
	}
	before := fsyncs()
	now = now.Add(10 * time.Minute) // the ack sync is not due yet
	appendN(t, s, 1)
	if got := fsyncs() - before; got != 1 {
		t.Fatalf("an append 10 minutes after an ack: %v fsyncs, want 1 (the segment)", got)
	}
	now = now.Add(40 * time.Minute) // 50 minutes: due within the last quarter
	appendN(t, s, 1)
	if got := fsyncs() - before; got != 3 {
		t.Fatalf("an append 50 minutes after an ack: %v fsyncs in all, want 3 (segment, then segment and ack file)", got)
	}

	// No appends: the timer syncs them.
	s2 := mustOpen(t, Config{Dir: t.TempDir(), AckSyncInterval: 20 * time.Millisecond}, Deps{Registerer: reg})
	defer s2.Close()
	seqs = appendN(t, s2, 1)
	before = fsyncs()
	if _, err := s2.Ack(seqs[0]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for fsyncs() == before {
		if time.Now().After(deadline) {
			t.Fatal("acks not synced within 10 s without appends")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCaptureClassIsDroppedLast: a full spool under drop-oldest evicts
// bulk, then high records, and capture windows only when nothing else is
// left; capture records survive a restart in their class.
func TestCaptureClassIsDroppedLast(t *testing.T) {
	m := newDropModel(t, Config{SegmentBytes: segHeaderSize + 1000, MaxBytes: 5 * (segHeaderSize + 1000)}, nil)
	var captures []uint64
	for i := range 200 {
		c := []Class{Bulk, High, Bulk, Capture, Bulk, High, Bulk, High, Bulk, High}[i%10] // 20 capture records fit
		seq, err := m.add(c, 3)
		if err != nil {
			t.Fatal(err)
		}
		if c == Capture {
			captures = append(captures, seq)
		}
	}
	d := m.check(ReasonFull)
	if len(d[Bulk]) == 0 || len(d[High]) == 0 || len(d[Capture]) != 0 {
		t.Fatalf("dropped %d bulk, %d high, %d capture records; want bulk and high only", len(d[Bulk]), len(d[High]), len(d[Capture]))
	}
	m.s.Close()
	s := mustOpen(t, m.cfg, Deps{})
	defer s.Close()
	if got := pendingSeqs(t, s, Capture); !slices.Equal(got, captures) {
		t.Fatalf("after a restart the capture class holds %v, want %v", got, captures)
	}
	for rec, err := range s.Pending(0, Capture) {
		if err != nil || rec.Meta.Class != Capture {
			t.Fatalf("record %d of class %v, %v", rec.Seq, rec.Meta.Class, err)
		}
	}
}
