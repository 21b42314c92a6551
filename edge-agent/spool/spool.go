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
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Class is a record's priority class. Under DropOldest, bulk records are
// dropped first, then high ones, capture ones last.
type Class uint8

const (
	// Bulk is for high-rate signals.
	Bulk Class = 0
	// High is for locations and events.
	High Class = 1
	// Capture is for the windows of high-priority capture rules: what a
	// fleet asked for by name, sent ahead of any backlog.
	Capture Class = 2

	numClasses = 3
)

func (c Class) String() string {
	switch c {
	case Bulk:
		return "bulk"
	case High:
		return "high"
	case Capture:
		return "capture"
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
	chains    [numClasses][]*segment
	active    [numClasses]*segment
	bytes     int64
	records   int
	readings  uint64

	// Per class, the sealed segment last read and its open file, so
	// reading a backlog in order opens each file once.
	readSeg  [numClasses]*segment
	readFile [numClasses]*os.File
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
		Segments: len(s.chains[Bulk]) + len(s.chains[High]) + len(s.chains[Capture]), Appends: s.appends, Corrupt: s.corrupt,
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
