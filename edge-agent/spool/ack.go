package spool

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// The ack path: freeing records, recording acks durably, deleting
// segments with nothing left pending.

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
