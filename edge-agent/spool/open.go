package spool

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// keepQuarantined is how many *.corrupt files Open keeps for inspection.
const keepQuarantined = 4

// Open opens (creating it if needed) and recovers the spool in cfg.Dir.
// It fails only for a bad config, a directory it cannot use, or one
// another spool holds (ErrLocked); whatever the files contain, it
// recovers what is readable and reports the rest in Stats().Recovery.
func Open(cfg Config, deps Deps) (*Spool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Spool{
		cfg: cfg, log: deps.Logger, now: deps.Now, dir: cfg.Dir,
		dropped: map[string]Drops{}, ackDirty: map[*segment]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	var err error
	if s.m, err = metricsFor(deps.Registerer); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if s.lk, err = lockDir(cfg.Dir); err != nil {
		return nil, fmt.Errorf("spool: lock: %w", err)
	}
	s.mu.Lock()
	err = s.recoverLocked()
	s.mu.Unlock()
	if err != nil {
		s.closeFilesLocked()
		_ = unlockDir(s.lk)
		return nil, err
	}
	s.m.add(s)
	return s, nil
}

func (s *Spool) closeFilesLocked() {
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if g.f != nil {
				_ = g.f.Close()
			}
		}
	}
}

// newEpoch is a random 63-bit epoch, positive as a signed integer.
func newEpoch() uint64 {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		if e := binary.LittleEndian.Uint64(b[:]) >> 1; e != 0 {
			return e
		}
	}
}

func parseIndex(name, suffix string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, suffix)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil
}

type candidate struct {
	index uint64
	path  string
	hdr   segHeader
	size  int64
}

func (s *Spool) recoverLocked() error {
	rec := &s.recovery
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var segIdx []uint64
	ackFiles := map[uint64]bool{}
	var quarantined []string
	for _, e := range ents {
		name := e.Name()
		if i, ok := parseIndex(name, segSuffix); ok {
			segIdx = append(segIdx, i)
			s.nextIndex = max(s.nextIndex, i+1)
		} else if i, ok := parseIndex(name, ackSuffix); ok {
			ackFiles[i] = true
			s.nextIndex = max(s.nextIndex, i+1)
		} else if strings.HasSuffix(name, tmpSuffix) {
			_ = os.Remove(filepath.Join(s.dir, name)) // an interrupted STATE write or segment rewrite
		} else if strings.HasSuffix(name, corruptSuffix) {
			quarantined = append(quarantined, name)
		}
	}
	slices.Sort(segIdx)
	s.nextIndex = max(s.nextIndex, 1)

	st, stOK := state{}, false
	if b, err := os.ReadFile(filepath.Join(s.dir, stateFile)); err == nil {
		if st, stOK = parseState(b); !stOK {
			s.log.Warn("spool: STATE unreadable; taking the epoch from the segments")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: %w", err)
	}

	// Headers first: they name the epoch if STATE cannot.
	var cands []candidate
	var lost uint64 // highest seq seen in a segment set aside
	for _, idx := range segIdx {
		path := filepath.Join(s.dir, segName(idx))
		b, size, err := readPrefix(path, segHeaderSize)
		if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if size < segHeaderSize {
			// Created but never given a whole header: it holds no record.
			s.log.Warn("spool: removing a segment file cut short in its header", "segment", path, "bytes", size)
			_ = os.Remove(path)
			rec.TruncatedBytes += size
			continue
		}
		h, err := parseSegHeader(b)
		if err == nil && h.index != idx {
			err = fmt.Errorf("header names segment %d", h.index)
		}
		if err != nil {
			// Its records cannot be trusted, but their seqs may have been
			// sent: keep them out of reuse.
			if body, err := os.ReadFile(path); err == nil && len(body) > segHeaderSize {
				if recs, _ := scanRecords(body[segHeaderSize:], segHeaderSize, 0); len(recs) > 0 {
					lost = max(lost, recs[len(recs)-1].seq)
				}
			}
			quarantined = append(quarantined, s.quarantine(path, err))
			delete(ackFiles, idx)
			continue
		}
		cands = append(cands, candidate{index: idx, path: path, hdr: h, size: size})
	}
	switch {
	case stOK:
		s.epoch = st.epoch
	case len(cands) > 0:
		s.epoch = cands[len(cands)-1].hdr.epoch
	default:
		s.epoch = newEpoch()
		rec.NewEpoch = true
	}

	// Records, class by class, oldest segment first.
	top := max(st.floor, lost)
	var buf []byte
	for c := range s.chains {
		prev := uint64(0)
		for _, cd := range cands {
			if cd.hdr.class != Class(c) {
				continue
			}
			if cd.hdr.epoch != s.epoch {
				quarantined = append(quarantined, s.quarantine(cd.path, fmt.Errorf("epoch %016x, spool's is %016x", cd.hdr.epoch, s.epoch)))
				delete(ackFiles, cd.index)
				continue
			}
			g, err := s.loadSegment(cd, max(prev, cd.hdr.floor), &buf)
			if err != nil {
				return err
			}
			s.chains[c] = append(s.chains[c], g)
			s.bytes += g.size
			s.records += g.live
			s.readings += g.liveReadings
			prev = max(prev, g.lastSeq())
			top = max(top, g.lastSeq())
		}
	}
	buf = nil

	// Acks.
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if ackFiles[g.index] {
				s.loadAcks(g)
				delete(ackFiles, g.index)
			}
		}
	}
	for idx := range ackFiles {
		_ = os.Remove(filepath.Join(s.dir, strings.TrimSuffix(segName(idx), segSuffix)+ackSuffix))
	}

	s.reserved, s.appended, s.visible = top, top, top
	if !stOK || st.epoch != s.epoch || st.floor < top {
		if err := s.writeStateLocked(top); err != nil {
			return err
		}
	} else {
		s.floor = st.floor
	}

	// Free what is all acked; reopen each class's newest segment for appends.
	for c := range s.chains {
		for _, g := range slices.Clone(s.chains[c]) {
			newest := g == s.chains[c][len(s.chains[c])-1]
			if g.live == 0 && (!newest || len(g.entries) > 0) {
				if err := s.deleteSegmentLocked(g); err != nil {
					return err
				}
				continue
			}
			if newest && g.size < s.cfg.SegmentBytes {
				f, err := os.OpenFile(g.path, os.O_RDWR, 0)
				if err != nil {
					return fmt.Errorf("spool: %w", err)
				}
				g.f = f
				s.active[c] = g
				if s.cfg.Fsync != FsyncNever {
					// What a killed process wrote may still be only in the
					// page cache: make it durable before anyone sends it.
					if err := s.fsync(f); err != nil {
						return fmt.Errorf("spool: %w", err)
					}
				}
			}
		}
	}

	slices.Sort(quarantined)
	for len(quarantined) > keepQuarantined {
		_ = os.Remove(filepath.Join(s.dir, quarantined[0]))
		quarantined = quarantined[1:]
	}
	if s.cfg.Fsync != FsyncNever {
		if err := syncDir(s.dir); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	}

	s.corrupt = rec.CorruptRecords
	s.m.corrupt.Add(float64(rec.CorruptRecords))
	s.m.quarantined.Add(float64(rec.QuarantinedSegments))
	lvl := slog.LevelInfo
	if rec.CorruptRecords > 0 || rec.QuarantinedSegments > 0 || rec.AckEntriesSkipped > 0 {
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, "spool opened", "dir", s.dir, "epoch", fmt.Sprintf("%016x", s.epoch), "new_epoch", rec.NewEpoch,
		"next_seq", s.reserved+1, "pending", s.records, "bytes", s.bytes, "segments", rec.Segments,
		"corrupt_records", rec.CorruptRecords, "truncated_bytes", rec.TruncatedBytes,
		"quarantined_segments", rec.QuarantinedSegments, "ack_entries_skipped", rec.AckEntriesSkipped)
	return nil
}

// readPrefix reads up to n bytes of a file and returns its size.
func readPrefix(path string, n int) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	b := make([]byte, min(int64(n), fi.Size()))
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, 0, err
	}
	return b, fi.Size(), nil
}

// quarantine renames an unreadable segment file aside and returns its new name.
func (s *Spool) quarantine(path string, why error) string {
	s.recovery.QuarantinedSegments++
	name := fmt.Sprintf("%s.%d%s", filepath.Base(path), time.Now().UnixNano(), corruptSuffix)
	s.log.Error("spool: setting aside an unreadable segment", "segment", path, "as", name, "err", why)
	if err := os.Rename(path, filepath.Join(s.dir, name)); err != nil {
		s.log.Error("spool: cannot set the segment aside; removing it", "segment", path, "err", err)
		_ = os.Remove(path)
	}
	_ = os.Remove(strings.TrimSuffix(path, segSuffix) + ackSuffix)
	return name
}

// loadSegment reads a segment's records, cutting out torn or corrupt
// bytes: truncating a bad tail, rewriting the file around bad bytes in the
// middle. Records must have seqs above minSeq.
func (s *Spool) loadSegment(cd candidate, minSeq uint64, buf *[]byte) (*segment, error) {
	rec := &s.recovery
	rec.Segments++
	f, err := os.OpenFile(cd.path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	*buf = slices.Grow((*buf)[:0], int(cd.size))[:cd.size]
	b := *buf
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", cd.path, err)
	}
	recs, bad := scanRecords(b[segHeaderSize:], segHeaderSize, minSeq)
	rec.Records += len(recs)
	rec.CorruptRecords += len(bad)
	g := &segment{index: cd.index, class: cd.hdr.class, path: cd.path, floor: cd.hdr.floor, size: segHeaderSize}
	for _, r := range bad {
		rec.TruncatedBytes += r.size
		s.log.Warn("spool: cutting out torn or corrupt bytes", "segment", cd.path, "offset", r.off, "bytes", r.size)
	}
	switch {
	case len(bad) == 0:
	case len(bad) == 1 && bad[0].off+bad[0].size == cd.size:
		// A torn tail, the usual mark of a crash: truncate.
		if err := f.Truncate(bad[0].off); err != nil {
			return nil, fmt.Errorf("spool: truncate %s: %w", cd.path, err)
		}
		if s.cfg.Fsync != FsyncNever {
			if err := s.fsync(f); err != nil {
				return nil, fmt.Errorf("spool: %w", err)
			}
		}
	default:
		// Damage with good records after it: rewrite without it, so it is
		// counted once rather than at every start.
		nb := make([]byte, 0, cd.size)
		nb = append(nb, b[:segHeaderSize]...)
		for i := range recs {
			r := &recs[i]
			off := int64(len(nb))
			nb = append(nb, b[r.off:r.off+r.size]...)
			r.off = off
		}
		if err := writeFileAtomic(s.dir, filepath.Base(cd.path), nb); err != nil {
			return nil, fmt.Errorf("spool: rewrite %s: %w", cd.path, err)
		}
	}
	for _, r := range recs {
		g.add(r.seq, r.off, int(r.size-recHeaderSize), r.readings, r.appended)
	}
	return g, nil
}

// loadAcks applies g's ack file, repairing a torn last entry.
func (s *Spool) loadAcks(g *segment) {
	path := g.ackPath()
	b, err := os.ReadFile(path)
	if err != nil {
		s.log.Warn("spool: ack file unreadable; its batches will be re-sent", "file", path, "err", err)
		return
	}
	ranges, skipped, ok := parseAcks(b, g.index)
	if !ok {
		s.recovery.AckEntriesSkipped += max(1, len(b)/ackEntrySize)
		s.log.Warn("spool: ack file header unreadable; its batches will be re-sent", "file", path)
		_ = os.Remove(path)
		return
	}
	s.recovery.AckEntriesSkipped += skipped
	if rem := len(b) % ackEntrySize; rem != 0 {
		// A torn last entry: cut it so later entries stay aligned.
		if err := os.Truncate(path, int64(len(b)-rem)); err != nil {
			s.log.Warn("spool: ack file: cannot truncate a torn entry; removing the file", "file", path, "err", err)
			_ = os.Remove(path)
		}
	}
	for _, r := range ranges {
		for i := g.search(r[0]); i < len(g.entries) && g.seqAt(i) <= r[1]; i++ {
			s.markLocked(g, i)
		}
	}
}
