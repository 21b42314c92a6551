package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// segment is one segment file and the in-memory index of its records.
type segment struct {
	index   uint64
	class   Class
	path    string
	floor   uint64 // from the header: highest seq appended before it
	size    int64  // bytes in the file
	base    uint64 // seq of entries[0]
	entries []entry
	live    int // entries not acked
	// liveReadings sums the readings of the live entries.
	liveReadings uint64
	newest       int64 // latest append time, Unix nanoseconds
	f            *os.File
	ack          *os.File // open while it holds unsynced entries, or while g is active
	deleted      bool
}

// entry indexes one record in 16 bytes.
type entry struct {
	dseq uint32 // seq - segment base
	off  uint32
	plen uint32
	rd   uint32 // readings; the top bit marks the record freed
}

const ackedBit = 1 << 31

func (e entry) acked() bool      { return e.rd&ackedBit != 0 }
func (e entry) readings() uint32 { return e.rd &^ ackedBit }

func (g *segment) seqAt(i int) uint64 { return g.base + uint64(g.entries[i].dseq) }

// lastSeq is the highest seq in g, or its floor when it is empty.
func (g *segment) lastSeq() uint64 {
	if len(g.entries) == 0 {
		return g.floor
	}
	return g.seqAt(len(g.entries) - 1)
}

func (g *segment) isAcked(i int) bool { return g.entries[i].acked() }

// search is the index of the first entry with seq >= seq.
func (g *segment) search(seq uint64) int {
	return sort.Search(len(g.entries), func(i int) bool { return g.seqAt(i) >= seq })
}

// firstPending is the index of the first unacked entry at or after i.
func (g *segment) firstPending(i int) int {
	for ; i < len(g.entries) && g.entries[i].acked(); i++ {
	}
	return i
}

// add indexes a record; seq is above every seq in g. Readings above 2^31-1
// are clamped (a batch never holds that many).
func (g *segment) add(seq uint64, off int64, plen int, readings uint32, appended int64) {
	if len(g.entries) == 0 {
		g.base = seq
	}
	readings = min(readings, ackedBit-1)
	g.entries = append(g.entries, entry{dseq: uint32(seq - g.base), off: uint32(off), plen: uint32(plen), rd: readings})
	g.size = off + recHeaderSize + int64(plen)
	g.live++
	g.liveReadings += uint64(readings)
	g.newest = max(g.newest, appended)
}

// removeLast undoes the last add (an append whose fsync failed).
func (g *segment) removeLast() {
	e := g.entries[len(g.entries)-1]
	g.entries = g.entries[:len(g.entries)-1]
	g.size = int64(e.off)
	if !e.acked() {
		g.live--
		g.liveReadings -= uint64(e.readings())
	}
}

func (g *segment) ackPath() string { return strings.TrimSuffix(g.path, segSuffix) + ackSuffix }

const (
	segSuffix     = ".seg"
	ackSuffix     = ".ack"
	corruptSuffix = ".corrupt"
	tmpSuffix     = ".tmp"
	stateFile     = "STATE"
	lockFile      = "LOCK"
)

func segName(index uint64) string { return fmt.Sprintf("%020d%s", index, segSuffix) }

// createSegment makes segment file index, durable (file and directory)
// unless the policy is FsyncNever.
func (s *Spool) createSegment(class Class, index, floor uint64) (*segment, error) {
	path := filepath.Join(s.dir, segName(index))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	h := segHeader{class: class, epoch: s.epoch, index: index, floor: floor}
	_, err = f.Write(h.encode())
	if err == nil && s.cfg.Fsync != FsyncNever {
		if err = s.fsync(f); err == nil {
			err = syncDir(s.dir)
		}
	}
	if err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, err
	}
	return &segment{index: index, class: class, path: path, floor: floor, size: segHeaderSize, f: f}, nil
}

// writeStateLocked replaces STATE atomically and durably, whatever the
// fsync policy: the epoch and the seq floor must survive a power cut.
func (s *Spool) writeStateLocked(floor uint64) error {
	if err := writeFileAtomic(s.dir, stateFile, state{epoch: s.epoch, floor: floor}.encode()); err != nil {
		return fmt.Errorf("spool: write state: %w", err)
	}
	s.floor = floor
	return nil
}

// writeFileAtomic writes dir/name through a temporary file, fsync and
// rename, then fsyncs the directory.
func writeFileAtomic(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, name+tmpSuffix)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory, making file creations, renames and removals
// in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, os.ErrInvalid) {
		return nil // platforms that cannot fsync a directory
	}
	return err
}
