package spool

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The read path: finding pending records and reading them back.

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
		return 1<<numClasses - 1
	}
	var m uint8
	for _, c := range classes {
		if c < numClasses {
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
