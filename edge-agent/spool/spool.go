// Package spool is the edge agent's durable, append-only, segmented disk
// queue of encoded batches: a batch is appended (and fsynced, by default)
// before it is sent, and leaves the disk only when the cloud's end-to-end
// ack covers it, when it is older than the age bound, or when the spool is
// full and the drop-oldest policy evicts it — each drop counted exactly.
//
// # Identity
//
// A spool owns the (epoch, seq) of its batches. The epoch is a random
// 63-bit number chosen when a directory is first opened empty (or after it
// was wiped) and kept in the STATE file. Reserve hands out the next seq,
// Append stores the batch under it. A seq that was appended is never handed
// out again in the epoch, across crashes and restarts: the highest seq is
// recovered from the records themselves, segment headers and STATE (which
// is rewritten before a segment is deleted, and on Close). Under FsyncNever
// STATE also leases seqs ahead (Config.SeqLease), so a power cut that loses
// appended records cannot lead to a seq being reused. A seq reserved but
// not appended before a crash may be handed out again: it never left the
// process. After a clean Close no reserved seq is reused.
//
// # Recovery
//
// Open never fails because of what the files hold. A torn or corrupt record
// (short write, bad length, bad CRC) is counted and cut out: at the tail of
// a segment the file is truncated at the last good record; in the middle
// the reader resynchronises on the next valid record and the segment is
// rewritten without the bad bytes. Nothing before the damage is lost. A
// segment whose header is unreadable (or from another epoch) is renamed
// *.corrupt and counted; the newest few such files are kept for inspection.
//
// # Acks
//
// Ack and AckRange record freed seqs in a per-segment ack file with write(2)
// before returning, so a process crash forgets no ack; the files are
// fsynced within Config.AckSyncInterval, so a power cut forgets at most that
// long's acks, and those batches are sent again (duplicates are dropped
// downstream by batch identity). A segment all of whose records are acked
// (or dropped) is deleted with its ack file, except the segment still being
// appended to, which goes when it fills.
//
// # Concurrency
//
// All methods are safe for concurrent use. The intended use is one
// appender goroutine (Reserve, Append) and one uplink goroutine (Ack,
// Pending, Newest, Get); Append's fsync runs without blocking the other
// methods, and reads never wait for an fsync. Seqs must be appended in the
// order they were reserved.
//
// # Memory
//
// The spool keeps 16 bytes of index per record in memory; payloads stay on
// disk until read.
//
// # Metrics
//
// Registered on Deps.Registerer; several spools in one process (one per
// simulated vehicle) share them, the gauges summing over spools (the age
// being the oldest):
//
//	fleet_agent_spool_bytes                          size of the segment files
//	fleet_agent_spool_records                        records not yet acked
//	fleet_agent_spool_oldest_age_seconds             age of the oldest unacked record
//	fleet_agent_spool_appends_total                  records appended
//	fleet_agent_spool_corrupt_records_total          torn or corrupt records cut out
//	fleet_agent_spool_quarantined_segments_total     segment files set aside unreadable
//	fleet_agent_spool_fsync_seconds                  fsync latency
//	fleet_agent_spool_dropped_batches_total{reason}  records dropped unacked
//	fleet_agent_spool_dropped_readings_total{reason} the readings they held
//
// Drop reasons: "full" (evicted by drop-oldest), "age" (older than MaxAge),
// "rejected" (Append refused with ErrSpoolFull under Stop; counted per
// refused call), "corrupt" (a record that failed its checksum when read
// back, after recovery).
package spool

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Class is a record's priority class. Under DropOldest, bulk records are
// dropped before any high ones.
type Class uint8

const (
	// Bulk is for high-rate signals.
	Bulk Class = 0
	// High is for locations and events.
	High Class = 1
)

func (c Class) String() string {
	switch c {
	case Bulk:
		return "bulk"
	case High:
		return "high"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Drop reasons, the label values of the dropped counters.
const (
	ReasonFull     = "full"
	ReasonAge      = "age"
	ReasonRejected = "rejected"
	ReasonCorrupt  = "corrupt"
)

var reasons = []string{ReasonFull, ReasonAge, ReasonRejected, ReasonCorrupt}

// Sentinel errors.
var (
	// ErrSpoolFull is returned by Append under the Stop policy when the
	// record does not fit in MaxBytes. Acks free space.
	ErrSpoolFull = errors.New("spool: full")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("spool: closed")
	// ErrNotFound is returned by Get for a seq that is not pending.
	ErrNotFound = errors.New("spool: no such pending record")
	// ErrTooLarge is returned by Append for a payload over MaxRecordBytes.
	ErrTooLarge = errors.New("spool: record too large")
	// ErrCorrupt wraps a record that failed its checksum when read back;
	// it has been dropped (reason "corrupt").
	ErrCorrupt = errors.New("spool: corrupt record")
	// ErrLocked is returned by Open when another spool holds the directory.
	ErrLocked = errors.New("spool: directory locked by another spool")
)

// Meta describes a batch.
type Meta struct {
	Class Class
	// Readings is the number of readings and fixes in the batch; the
	// dropped-readings counter adds it up.
	Readings uint32
	// Time is the batch's time (its base timestamp); the spool only stores it.
	Time time.Time
}

// Record is a pending batch read back from the spool.
type Record struct {
	Seq      uint64
	Meta     Meta
	Appended time.Time // when Append wrote it, by the spool's clock
	Payload  []byte    // owned by the caller
}

// Drops counts dropped records.
type Drops struct{ Batches, Readings uint64 }

// Recovery says what Open found.
type Recovery struct {
	NewEpoch            bool  // the directory was empty or wiped
	Segments            int   // segment files read
	Records             int   // good records read (acked ones included)
	CorruptRecords      int   // torn or corrupt byte runs cut out
	TruncatedBytes      int64 // bytes cut out by truncation or rewrite
	QuarantinedSegments int   // files renamed *.corrupt
	AckEntriesSkipped   int   // unreadable ack entries (their batches are re-sent)
}

// Stats is a snapshot of a spool.
type Stats struct {
	Epoch    uint64
	NextSeq  uint64 // what the next Reserve returns
	Records  int    // appended and not acked or dropped
	Readings uint64 // in those records
	Bytes    int64  // segment files on disk
	Segments int
	Appends  uint64
	Corrupt  int // corrupt records cut out or dropped since Open, recovery included
	Dropped  map[string]Drops
	Recovery Recovery
}

// Deps are the spool's dependencies.
type Deps struct {
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // nil: metrics are not exported
	Now        func() time.Time      // nil: time.Now; the age bound uses it
}

// Spool is an open spool directory.
type Spool struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
	m   *metrics
	dir string
	lk  *os.File

	// Lock order: syncMu, appendMu, mu.
	syncMu   sync.Mutex // FsyncInterval: held by the appender doing a covering fsync
	synced   uint64     // under syncMu: highest seq covered by an interval fsync
	lastSync time.Time  // under syncMu
	appendMu sync.Mutex // one Append at a time; held across its write and fsync
	buf      []byte     // under appendMu: record encoding buffer
	mu       sync.Mutex // guards the rest

	closed    bool
	epoch     uint64
	reserved  uint64 // highest seq handed out by Reserve
	appended  uint64 // highest seq appended
	visible   uint64 // records up to this seq are durable per the policy, and readable
	floor     uint64 // the seq floor in STATE
	nextIndex uint64 // of the next segment file
	chains    [2][]*segment
	active    [2]*segment
	bytes     int64
	records   int
	readings  uint64

	// Per class, the sealed segment last read and its open file, so
	// reading a backlog in order opens each file once.
	readSeg  [2]*segment
	readFile [2]*os.File
	ackDirty map[*segment]struct{}
	ackDir   bool // an ack file was created since the last ack sync
	ackTimer *time.Timer
	// ackDirtySince is when the oldest unsynced ack was written.
	ackDirtySince time.Time

	appends  uint64
	corrupt  int
	dropped  map[string]Drops
	recovery Recovery
}

// Reserve returns the next seq, for the caller to encode into the batch it
// then appends. Under FsyncNever it may write the STATE file.
func (s *Spool) Reserve() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	if s.reserved >= MaxSeq {
		return 0, errors.New("spool: seqs exhausted in this epoch")
	}
	seq := s.reserved + 1
	if s.cfg.Fsync == FsyncNever && seq > s.floor {
		if err := s.writeStateLocked(min(seq+s.cfg.SeqLease-1, MaxSeq)); err != nil {
			return 0, err
		}
	}
	s.reserved = seq
	return seq, nil
}

// Append stores a batch under seq, which must come from Reserve and be
// above every seq appended so far. It returns once the record is durable
// per the fsync policy; only then may the batch be sent. Before writing it
// drops segments past MaxAge, then, if the record does not fit in
// MaxBytes, applies the full policy: Stop returns ErrSpoolFull (the seq
// stays reserved and may be appended later); DropOldest evicts whole
// segments, bulk before high, oldest first. A failed write or fsync
// returns the error: under FsyncAlways the record is removed and the seq
// may be appended again; under FsyncInterval the record stays spooled
// (Pending will offer it) though a power cut may lose it.
func (s *Spool) Append(seq uint64, payload []byte, meta Meta) error {
	if meta.Class > High {
		return fmt.Errorf("spool: append seq %d: unknown class %d", seq, meta.Class)
	}
	if len(payload) > s.cfg.MaxRecordBytes {
		return fmt.Errorf("spool: append seq %d: %d bytes, limit %d: %w", seq, len(payload), s.cfg.MaxRecordBytes, ErrTooLarge)
	}
	s.appendMu.Lock()
	unlocked := false
	defer func() {
		if !unlocked {
			s.appendMu.Unlock()
		}
	}()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if seq <= s.appended || seq > s.reserved {
		s.mu.Unlock()
		return fmt.Errorf("spool: append seq %d: want a reserved seq in %d..%d", seq, s.appended+1, s.reserved)
	}
	now := s.now()
	s.expireLocked(now)
	size := int64(recHeaderSize + len(payload))
	// Room for the record and, conservatively, a new segment header.
	if err := s.makeRoomLocked(size+segHeaderSize, meta); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("spool: append seq %d: %w", seq, err)
	}
	g := s.active[meta.Class]
	roll := g == nil || (len(g.entries) > 0 && (g.size+size > s.cfg.SegmentBytes || seq-g.base >= 1<<32))
	var index, floor uint64
	if roll {
		index, floor = s.nextIndex, s.appended
		s.nextIndex++
	}
	s.mu.Unlock()

	if roll {
		ng, err := s.roll(g, meta.Class, index, floor)
		if err != nil {
			return fmt.Errorf("spool: append seq %d: %w", seq, err)
		}
		g = ng
	}

	s.buf = appendRecord(s.buf[:0], seq, meta.Class, now.UnixNano(), meta.Time.UnixNano(), meta.Readings, payload)
	off := g.size // only the appender changes an active segment's size
	if _, err := g.f.WriteAt(s.buf, off); err != nil {
		s.abandon(g, off)
		return fmt.Errorf("spool: append seq %d: %w", seq, err)
	}
	s.mu.Lock()
	g.add(seq, off, len(payload), meta.Readings, now.UnixNano())
	s.bytes += size
	s.records++
	s.readings += uint64(meta.Readings)
	prev := s.appended
	s.appended = seq
	if s.cfg.Fsync == FsyncNever {
		s.visible = seq
	}
	s.appends++
	s.mu.Unlock()
	s.m.appends.Inc()

	switch s.cfg.Fsync {
	case FsyncAlways:
		if err := s.fsync(g.f); err != nil {
			s.mu.Lock()
			g.removeLast()
			s.bytes -= size
			s.records--
			s.readings -= uint64(meta.Readings)
			s.appended = prev
			s.mu.Unlock()
			s.abandon(g, off)
			return fmt.Errorf("spool: append seq %d: fsync: %w", seq, err)
		}
		s.mu.Lock()
		s.visible = seq
		s.syncAcksIfDueLocked(now)
		s.mu.Unlock()
	case FsyncInterval:
		unlocked = true
		s.appendMu.Unlock()
		if err := s.waitSynced(seq); err != nil {
			return fmt.Errorf("spool: append seq %d: fsync: %w", seq, err)
		}
	}
	return nil
}

// roll seals g (may be nil) and starts segment index for class. The caller
// holds appendMu.
func (s *Spool) roll(g *segment, class Class, index, floor uint64) (*segment, error) {
	if g != nil && g.f != nil && s.cfg.Fsync == FsyncInterval {
		// Its last records may wait for a covering fsync that will no
		// longer include this file.
		if err := s.fsync(g.f); err != nil {
			return nil, err
		}
	}
	ng, err := s.createSegment(class, index, floor)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if g != nil && s.active[class] == g {
		s.sealLocked(g)
		if g.live == 0 {
			_ = s.deleteSegmentLocked(g) // logged; it stays until a later attempt
		}
	}
	s.chains[class] = append(s.chains[class], ng)
	s.active[class] = ng
	s.bytes += ng.size
	return ng, nil
}

// abandon undoes a failed write at off and seals the segment, so the next
// append starts a new file.
func (s *Spool) abandon(g *segment, off int64) {
	if err := g.f.Truncate(off); err != nil {
		s.log.Warn("spool: cannot truncate after a failed write", "segment", g.path, "err", err)
	}
	s.mu.Lock()
	if s.active[g.class] == g {
		s.sealLocked(g)
	}
	s.mu.Unlock()
}

// sealLocked ends appends to the active segment g.
func (s *Spool) sealLocked(g *segment) {
	if s.active[g.class] == g {
		s.active[g.class] = nil
	}
	if g.f != nil {
		_ = g.f.Close()
		g.f = nil
	}
	if _, dirty := s.ackDirty[g]; g.ack != nil && !dirty {
		_ = g.ack.Close() // a dirty one is closed once synced
		g.ack = nil
	}
}

// waitSynced returns once an fsync covering seq has completed, doing it
// if nobody has: at most one group fsync per FsyncInterval.
func (s *Spool) waitSynced(seq uint64) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.synced >= seq {
		return nil
	}
	if d := s.cfg.FsyncInterval - time.Since(s.lastSync); d > 0 {
		time.Sleep(d)
	}
	s.appendMu.Lock()
	s.mu.Lock()
	upto := s.appended
	var files []*os.File
	for _, g := range s.active {
		if g != nil && g.f != nil {
			files = append(files, g.f)
		}
	}
	s.mu.Unlock()
	var err error
	for _, f := range files {
		err = errors.Join(err, s.fsync(f))
	}
	if err != nil {
		// Unknown what reached the disk: continue in new files.
		s.mu.Lock()
		for _, g := range s.active {
			if g != nil {
				s.sealLocked(g)
			}
		}
		s.mu.Unlock()
	}
	s.appendMu.Unlock()
	s.lastSync = time.Now()
	if err != nil {
		return err
	}
	s.synced = upto
	s.mu.Lock()
	s.visible = max(s.visible, upto)
	s.mu.Unlock()
	return nil
}

func (s *Spool) fsync(f *os.File) error {
	start := time.Now()
	err := f.Sync()
	s.m.fsync.Observe(time.Since(start).Seconds())
	return err
}

// expireLocked drops segments whose newest record is older than MaxAge.
func (s *Spool) expireLocked(now time.Time) {
	if s.cfg.MaxAge < 0 {
		return
	}
	cutoff := now.Add(-s.cfg.MaxAge).UnixNano()
	for c := range s.chains {
		for i := 0; i < len(s.chains[c]); i++ {
			g := s.chains[c][i]
			if len(g.entries) > 0 && g.newest < cutoff && g.newest >= saneClock {
				if err := s.dropSegmentLocked(g, ReasonAge); err == nil {
					i-- // it left the chain
				}
			}
		}
	}
}

// saneClock is 2020-01-01: records appended before it were stamped by a
// clock that was not set, and are not aged out.
var saneClock = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// makeRoomLocked applies the full policy until need more bytes fit.
func (s *Spool) makeRoomLocked(need int64, meta Meta) error {
	for s.bytes+need > s.cfg.MaxBytes {
		if s.cfg.Full == Stop {
			s.countDropLocked(ReasonRejected, 1, uint64(meta.Readings))
			return ErrSpoolFull
		}
		var victim *segment
		if len(s.chains[Bulk]) > 0 {
			victim = s.chains[Bulk][0]
		} else if len(s.chains[High]) > 0 {
			victim = s.chains[High][0]
		} else {
			return ErrTooLarge // cannot happen: Validate keeps MaxRecordBytes well below MaxBytes
		}
		if err := s.dropSegmentLocked(victim, ReasonFull); err != nil {
			return err
		}
	}
	return nil
}

// dropSegmentLocked deletes g, counting its unacked records as dropped.
func (s *Spool) dropSegmentLocked(g *segment, reason string) error {
	live, readings := g.live, g.liveReadings
	if err := s.deleteSegmentLocked(g); err != nil {
		return err
	}
	if live > 0 {
		s.log.Warn("spool: dropped unacked batches", "reason", reason, "batches", live, "readings", readings,
			"first_seq", g.seqAt(0), "last_seq", g.lastSeq())
		s.countDropLocked(reason, uint64(live), readings)
		s.records -= live
		s.readings -= readings
	}
	return nil
}

func (s *Spool) countDropLocked(reason string, batches, readings uint64) {
	d := s.dropped[reason]
	d.Batches += batches
	d.Readings += readings
	s.dropped[reason] = d
	s.m.droppedBatches.WithLabelValues(reason).Add(float64(batches))
	s.m.droppedReadings.WithLabelValues(reason).Add(float64(readings))
}

// deleteSegmentLocked removes g's files and forgets it. It first makes
// sure STATE's seq floor covers g's seqs, so they are never reused; if
// that fails g stays.
func (s *Spool) deleteSegmentLocked(g *segment) error {
	if g.deleted {
		return nil
	}
	if top := g.lastSeq(); s.floor < top {
		if err := s.writeStateLocked(max(top, s.reserved)); err != nil {
			s.log.Error("spool: keeping a freed segment: cannot record the seq floor", "segment", g.path, "err", err)
			return err
		}
	}
	s.sealLocked(g)
	if g.ack != nil {
		_ = g.ack.Close()
		g.ack = nil
		delete(s.ackDirty, g)
	}
	if s.readSeg[g.class] == g {
		_ = s.readFile[g.class].Close()
		s.readSeg[g.class], s.readFile[g.class] = nil, nil
	}
	if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Error("spool: cannot delete segment", "segment", g.path, "err", err)
	}
	if err := os.Remove(g.ackPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Error("spool: cannot delete ack file", "file", g.ackPath(), "err", err)
	}
	if s.cfg.Fsync != FsyncNever {
		if err := syncDir(s.dir); err != nil {
			s.log.Warn("spool: directory fsync", "err", err)
		}
	}
	s.chains[g.class] = slices.DeleteFunc(s.chains[g.class], func(x *segment) bool { return x == g })
	s.bytes -= g.size
	g.deleted = true
	return nil
}

// Ack frees the given seqs; seqs not pending (already acked, dropped, or
// never appended) are ignored. It returns how many records it freed.
func (s *Spool) Ack(seqs ...uint64) (int, error) {
	sorted := slices.Clone(seqs)
	slices.Sort(sorted)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	var runs []ackRun
	freed := 0
	for _, seq := range slices.Compact(sorted) {
		g, i, ok := s.locateLocked(seq)
		if !ok || !s.markLocked(g, i) {
			continue
		}
		freed++
		if n := len(runs); n > 0 && runs[n-1].g == g && runs[n-1].hi == i-1 {
			runs[n-1].hi = i
		} else {
			runs = append(runs, ackRun{g, i, i})
		}
	}
	return freed, s.finishAckLocked(runs, freed)
}

// AckRange frees every pending seq in first..last.
func (s *Spool) AckRange(first, last uint64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	var runs []ackRun
	freed := 0
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if len(g.entries) == 0 || g.lastSeq() < first || g.seqAt(0) > last {
				continue
			}
			lo := g.search(first)
			hi := lo - 1
			n := 0
			for i := lo; i < len(g.entries) && g.seqAt(i) <= last; i++ {
				if s.markLocked(g, i) {
					n++
				}
				hi = i
			}
			if n > 0 {
				freed += n
				runs = append(runs, ackRun{g, lo, hi})
			}
		}
	}
	return freed, s.finishAckLocked(runs, freed)
}

type ackRun struct {
	g      *segment
	lo, hi int
}

// finishAckLocked writes the runs to the ack files and deletes sealed
// segments left with nothing pending.
func (s *Spool) finishAckLocked(runs []ackRun, freed int) error {
	if freed == 0 {
		return nil
	}
	var errs error
	// Runs of one segment together (Ack's seqs alternate between classes).
	slices.SortStableFunc(runs, func(a, b ackRun) int { return cmp.Compare(a.g.index, b.g.index) })
	for len(runs) > 0 {
		g := runs[0].g
		var b []byte
		for len(runs) > 0 && runs[0].g == g {
			b = appendAckEntry(b, g.index, g.seqAt(runs[0].lo), g.seqAt(runs[0].hi))
			runs = runs[1:]
		}
		if g.deleted {
			continue
		}
		if g.live == 0 && s.active[g.class] != g {
			if err := s.deleteSegmentLocked(g); err == nil {
				continue
			}
		}
		if err := s.writeAcksLocked(g, b); err != nil {
			errs = errors.Join(errs, err)
		}
	}
	s.scheduleAckSyncLocked()
	return errs
}

// markLocked frees entry i of g, reporting false if it already was.
func (s *Spool) markLocked(g *segment, i int) bool {
	e := &g.entries[i]
	if e.acked() {
		return false
	}
	e.rd |= ackedBit
	g.live--
	g.liveReadings -= uint64(e.readings())
	s.records--
	s.readings -= uint64(e.readings())
	return true
}

func (s *Spool) writeAcksLocked(g *segment, b []byte) error {
	if g.ack == nil {
		f, err := os.OpenFile(g.ackPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("spool: ack file: %w", err)
		}
		if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
			b = append(encodeAckHeader(g.index), b...)
			s.ackDir = true
		}
		g.ack = f
	}
	if _, err := g.ack.Write(b); err != nil {
		return fmt.Errorf("spool: ack file: %w", err)
	}
	s.ackDirty[g] = struct{}{}
	return nil
}

func (s *Spool) scheduleAckSyncLocked() {
	if s.ackTimer == nil && len(s.ackDirty) > 0 {
		s.ackDirtySince = s.now()
		s.ackTimer = time.AfterFunc(s.cfg.AckSyncInterval, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.ackTimer = nil
			if !s.closed {
				s.syncAcksLocked()
			}
		})
	}
}

// syncAcksIfDueLocked syncs the ack files now, in an append's fsync burst,
// if their timer would fire within the next quarter interval: an agent
// appending every second then never wakes up just to sync acks.
func (s *Spool) syncAcksIfDueLocked(now time.Time) {
	if len(s.ackDirty) == 0 || now.Sub(s.ackDirtySince) < s.cfg.AckSyncInterval*3/4 {
		return
	}
	if s.ackTimer != nil {
		s.ackTimer.Stop()
		s.ackTimer = nil
	}
	s.syncAcksLocked()
}

// syncAcksLocked makes written acks durable. It closes the ack files of
// sealed segments; an active segment's stays open, as most acks go there
// (reopening it costs about eight syscalls a sync).
func (s *Spool) syncAcksLocked() {
	for g := range s.ackDirty {
		if s.cfg.Fsync != FsyncNever {
			if err := s.fsync(g.ack); err != nil {
				s.log.Warn("spool: ack file fsync", "file", g.ackPath(), "err", err)
			}
		}
		if s.active[g.class] != g {
			_ = g.ack.Close()
			g.ack = nil
		}
	}
	clear(s.ackDirty)
	if s.ackDir && s.cfg.Fsync != FsyncNever {
		if err := syncDir(s.dir); err != nil {
			s.log.Warn("spool: directory fsync", "err", err)
		}
	}
	s.ackDir = false
}

// locateLocked finds the pending-or-acked record seq.
func (s *Spool) locateLocked(seq uint64) (*segment, int, bool) {
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if len(g.entries) == 0 || seq < g.seqAt(0) || seq > g.lastSeq() {
				continue
			}
			if i := g.search(seq); i < len(g.entries) && g.seqAt(i) == seq {
				return g, i, true
			}
		}
	}
	return nil, 0, false
}

// Pending iterates, in ascending seq order, over the records not yet
// acked or dropped with seq >= from, of the given classes (all when none
// are given): e.g. Pending(0, High) then Pending(0, Bulk) sends locations
// before signals. Payloads are read one at a time and no lock is held
// between records, so Append and Ack run meanwhile; records appended
// meanwhile are included, acked ones skipped if not yet reached. A record
// that fails its checksum is yielded once with an error wrapping
// ErrCorrupt (its seq set) and dropped; iteration continues. An I/O error
// ends the iteration after being yielded.
func (s *Spool) Pending(from uint64, classes ...Class) iter.Seq2[Record, error] {
	mask := classMask(classes)
	return func(yield func(Record, error) bool) {
		for cursor := from; ; {
			rec, ok, err := s.next(cursor, mask)
			if !ok {
				if err != nil {
					yield(Record{}, err)
				}
				return
			}
			if !yield(rec, err) || rec.Seq == ^uint64(0) {
				return
			}
			cursor = rec.Seq + 1
		}
	}
}

func classMask(classes []Class) uint8 {
	if len(classes) == 0 {
		return 3
	}
	var m uint8
	for _, c := range classes {
		if c <= High {
			m |= 1 << c
		}
	}
	return m
}

// next reads the first pending record with seq >= from.
func (s *Spool) next(from uint64, mask uint8) (Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Record{}, false, ErrClosed
	}
	var best *segment
	bi := 0
	for c := range s.chains {
		if mask&(1<<c) == 0 {
			continue
		}
		for _, g := range s.chains[c] {
			if g.live == 0 || g.lastSeq() < from {
				continue
			}
			i := g.firstPending(g.search(from))
			if i < len(g.entries) {
				if g.seqAt(i) <= s.visible && (best == nil || g.seqAt(i) < best.seqAt(bi)) {
					best, bi = g, i
				}
				break
			}
		}
	}
	if best == nil {
		return Record{}, false, nil
	}
	return s.readLocked(best, bi)
}

// Newest returns up to n pending records of the given classes (all when
// none are given), newest first: what to send first after a reconnect, so
// the live map is current while the backlog drains behind.
func (s *Spool) Newest(n int, classes ...Class) ([]Record, error) {
	mask := classMask(classes)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	type loc struct {
		g *segment
		i int
	}
	var locs []loc
	for c := range s.chains {
		if mask&(1<<c) == 0 {
			continue
		}
		k := 0
		for j := len(s.chains[c]) - 1; j >= 0 && k < n; j-- {
			g := s.chains[c][j]
			for i := len(g.entries) - 1; i >= 0 && k < n && g.live > 0; i-- {
				if !g.isAcked(i) && g.seqAt(i) <= s.visible {
					locs = append(locs, loc{g, i})
					k++
				}
			}
		}
	}
	slices.SortFunc(locs, func(a, b loc) int {
		x, y := a.g.seqAt(a.i), b.g.seqAt(b.i)
		if x > y {
			return -1
		}
		if x < y {
			return 1
		}
		return 0
	})
	if len(locs) > n {
		locs = locs[:n]
	}
	var out []Record
	var errs error
	for _, l := range locs {
		if l.g.deleted || l.g.isAcked(l.i) {
			continue // dropped as corrupt by an earlier read
		}
		r, _, err := s.readLocked(l.g, l.i)
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		out = append(out, r)
	}
	return out, errs
}

// Get reads the pending record seq.
func (s *Spool) Get(seq uint64) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Record{}, ErrClosed
	}
	g, i, ok := s.locateLocked(seq)
	if !ok || g.isAcked(i) || seq > s.visible {
		return Record{}, fmt.Errorf("spool: seq %d: %w", seq, ErrNotFound)
	}
	r, _, err := s.readLocked(g, i)
	return r, err
}

// readLocked reads entry i of g from disk and checks it. ok is false only
// for an I/O error; a bad checksum drops the record and returns ErrCorrupt.
func (s *Spool) readLocked(g *segment, i int) (Record, bool, error) {
	e := g.entries[i]
	seq := g.seqAt(i)
	f, err := s.fileLocked(g)
	if err != nil {
		return Record{Seq: seq}, false, err
	}
	b := make([]byte, recHeaderSize+int(e.plen))
	if _, err := f.ReadAt(b, int64(e.off)); err != nil && !errors.Is(err, io.EOF) {
		return Record{Seq: seq}, false, fmt.Errorf("spool: read seq %d: %w", seq, err)
	}
	r, ok := parseRecord(b, seq-1)
	if !ok || r.seq != seq {
		s.corrupt++
		s.m.corrupt.Inc()
		readings := uint64(e.readings())
		if s.markLocked(g, i) {
			s.countDropLocked(ReasonCorrupt, 1, readings)
			if err := s.writeAcksLocked(g, appendAckEntry(nil, g.index, seq, seq)); err != nil {
				s.log.Warn("spool: recording a corrupt record", "err", err)
			}
			s.scheduleAckSyncLocked()
			if g.live == 0 && s.active[g.class] != g {
				_ = s.deleteSegmentLocked(g)
			}
		}
		s.log.Error("spool: dropping a record that fails its checksum", "segment", g.path, "seq", seq)
		return Record{Seq: seq}, true, fmt.Errorf("spool: seq %d in %s: %w", seq, filepath.Base(g.path), ErrCorrupt)
	}
	return Record{
		Seq:      seq,
		Meta:     Meta{Class: r.class, Readings: r.readings, Time: time.Unix(0, r.batch)},
		Appended: time.Unix(0, r.appended),
		Payload:  b[recHeaderSize:],
	}, true, nil
}

// fileLocked returns a file to read g from: its own while active, else one
// kept open for the last sealed segment of its class read.
func (s *Spool) fileLocked(g *segment) (*os.File, error) {
	if g.f != nil {
		return g.f, nil
	}
	if s.readSeg[g.class] == g {
		return s.readFile[g.class], nil
	}
	f, err := os.Open(g.path)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if s.readFile[g.class] != nil {
		_ = s.readFile[g.class].Close()
	}
	s.readSeg[g.class], s.readFile[g.class] = g, f
	return f, nil
}

// Epoch is the spool's epoch.
func (s *Spool) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// Stats returns a snapshot.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Epoch: s.epoch, NextSeq: s.reserved + 1, Records: s.records, Readings: s.readings, Bytes: s.bytes,
		Segments: len(s.chains[Bulk]) + len(s.chains[High]), Appends: s.appends, Corrupt: s.corrupt,
		Dropped: map[string]Drops{}, Recovery: s.recovery,
	}
	for k, v := range s.dropped {
		st.Dropped[k] = v
	}
	return st
}

// Records is the number of records appended and not yet acked or dropped
// (Stats().Records, without the rest of the snapshot).
func (s *Spool) Records() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.records
}

// oldestAgeLocked is how long ago the oldest pending record was appended.
func (s *Spool) oldestAgeLocked() time.Duration {
	var best *segment
	bi := 0
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if g.live == 0 {
				continue
			}
			if i := g.firstPending(0); i < len(g.entries) && (best == nil || g.seqAt(i) < best.seqAt(bi)) {
				best, bi = g, i
			}
			break
		}
	}
	if best == nil {
		return 0
	}
	f, err := s.fileLocked(best)
	if err != nil {
		return 0
	}
	var h [recHeaderSize]byte
	if _, err := f.ReadAt(h[:], int64(best.entries[bi].off)); err != nil {
		return 0
	}
	return max(0, s.now().Sub(time.Unix(0, int64(le.Uint64(h[20:])))))
}

// Sync makes every appended record and ack durable now, whatever the policy.
func (s *Spool) Sync() error {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.syncAllLocked()
}

func (s *Spool) syncAllLocked() error {
	var errs error
	for _, g := range s.active {
		if g != nil && g.f != nil {
			errs = errors.Join(errs, s.fsync(g.f))
		}
	}
	if errs == nil {
		s.visible = s.appended
	}
	s.syncAcksLocked()
	return errs
}

// Close makes everything durable, records the seq floor and releases the
// directory. Calls after the first return ErrClosed.
func (s *Spool) Close() error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.ackTimer != nil {
		s.ackTimer.Stop()
		s.ackTimer = nil
	}
	err := s.syncAllLocked()
	if s.floor != s.reserved {
		// Exact on a clean close: no gap in seqs after a restart (under
		// FsyncNever this returns the unused part of the lease).
		err = errors.Join(err, s.writeStateLocked(s.reserved))
	}
	s.closed = true
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if g.f != nil {
				err = errors.Join(err, g.f.Close())
				g.f = nil
			}
			if g.ack != nil {
				_ = g.ack.Close() // synced above
				g.ack = nil
			}
		}
		s.active[c] = nil
	}
	for c, f := range s.readFile {
		if f != nil {
			_ = f.Close()
			s.readSeg[c], s.readFile[c] = nil, nil
		}
	}
	s.mu.Unlock()
	s.m.remove(s)
	err = errors.Join(err, unlockDir(s.lk))
	return err
}
