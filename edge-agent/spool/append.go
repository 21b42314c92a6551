package spool

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// The append path: reserving seqs, writing and syncing records, and
// making room (age, size) by dropping whole segments.

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
	if meta.Class >= numClasses {
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
		for _, c := range []Class{Bulk, High, Capture} {
			if len(s.chains[c]) > 0 {
				victim = s.chains[c][0]
				break
			}
		}
		if victim == nil {
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
