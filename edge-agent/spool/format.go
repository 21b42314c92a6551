package spool

// On-disk format. All integers are little-endian; every checksum is
// CRC-32C (Castagnoli).
//
// Segment file NNNNNNNNNNNNNNNNNNNN.seg (20-digit index, one sequence of
// indexes shared by all classes):
//
//	header, 40 bytes
//	  0  magic "FPSG"
//	  4  format version (1)
//	  5  class (0 bulk, 1 high, 2 capture)
//	  6  2 bytes zero
//	  8  epoch
//	 16  segment index (equals the file name)
//	 24  seq floor: the highest seq reserved when the segment was created
//	 32  4 bytes zero
//	 36  CRC of bytes 0..35
//	records, back to back, each:
//	  0  magic 0xA7
//	  1  class
//	  2  2 bytes zero
//	  4  payload length n
//	  8  CRC of bytes 0..7 and 12..40+n
//	 12  seq
//	 20  append time, Unix nanoseconds (the spool's clock)
//	 28  batch time, Unix nanoseconds (the caller's)
//	 36  readings in the batch
//	 40  payload, n bytes
//
// Ack file NNNNNNNNNNNNNNNNNNNN.ack (same index as its segment), fixed
// 20-byte entries so a bad one is skipped without losing the rest:
//
//	header entry: "FPAK", version (1), 3 bytes zero, segment index, CRC of bytes 0..15
//	range entry:  first seq, last seq, CRC of the 16 bytes and the segment index
//
// STATE (replaced atomically by write, fsync, rename, directory fsync):
//
//	0 "FPST", 4 version (1), 5 3 bytes zero, 8 epoch, 16 seq floor, 24 CRC of bytes 0..23

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

const (
	segHeaderSize = 40
	recHeaderSize = 40
	ackEntrySize  = 20
	stateSize     = 28

	formatVersion = 1
	recMagic      = 0xA7

	// MaxSeq is the highest seq: seqs stay positive as signed 64-bit
	// integers, like epochs.
	MaxSeq = 1<<63 - 1

	// maxPayload bounds a record's payload whatever the configuration, so
	// a corrupt length never asks for a huge allocation.
	maxPayload = 64 << 20
)

var (
	segMagic   = [4]byte{'F', 'P', 'S', 'G'}
	ackMagic   = [4]byte{'F', 'P', 'A', 'K'}
	stateMagic = [4]byte{'F', 'P', 'S', 'T'}

	castagnoli = crc32.MakeTable(crc32.Castagnoli)

	errBadHeader = errors.New("bad segment header")
)

var le = binary.LittleEndian

// segHeader is a segment file's header.
type segHeader struct {
	class Class
	epoch uint64
	index uint64
	floor uint64
}

func (h segHeader) encode() []byte {
	b := make([]byte, segHeaderSize)
	copy(b, segMagic[:])
	b[4] = formatVersion
	b[5] = byte(h.class)
	le.PutUint64(b[8:], h.epoch)
	le.PutUint64(b[16:], h.index)
	le.PutUint64(b[24:], h.floor)
	le.PutUint32(b[36:], crc32.Checksum(b[:36], castagnoli))
	return b
}

func parseSegHeader(b []byte) (segHeader, error) {
	if len(b) < segHeaderSize || [4]byte(b[:4]) != segMagic || b[4] != formatVersion ||
		le.Uint32(b[36:]) != crc32.Checksum(b[:36], castagnoli) || b[5] >= numClasses {
		return segHeader{}, errBadHeader
	}
	return segHeader{class: Class(b[5]), epoch: le.Uint64(b[8:]), index: le.Uint64(b[16:]), floor: le.Uint64(b[24:])}, nil
}

// recInfo describes one record found in a segment.
type recInfo struct {
	off      int64 // of the record's first byte in the file
	size     int64 // header and payload
	seq      uint64
	class    Class
	appended int64
	batch    int64
	readings uint32
}

// appendRecord appends the framed record to dst.
func appendRecord(dst []byte, seq uint64, class Class, appended, batch int64, readings uint32, payload []byte) []byte {
	start := len(dst)
	var h [recHeaderSize]byte
	h[0] = recMagic
	h[1] = byte(class)
	le.PutUint32(h[4:], uint32(len(payload)))
	le.PutUint64(h[12:], seq)
	le.PutUint64(h[20:], uint64(appended))
	le.PutUint64(h[28:], uint64(batch))
	le.PutUint32(h[36:], readings)
	dst = append(dst, h[:]...)
	dst = append(dst, payload...)
	le.PutUint32(dst[start+8:], recordCRC(dst[start:]))
	return dst
}

// recordCRC is the checksum of a whole framed record b, skipping its CRC field.
func recordCRC(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[:8])
	return crc32.Update(c, castagnoli, b[12:])
}

// parseRecord decodes the record at the start of b. It reports false
// unless b starts with a whole record whose seq is above after and whose
// checksum matches. It never reads past b and never allocates.
func parseRecord(b []byte, after uint64) (recInfo, bool) {
	if len(b) < recHeaderSize || b[0] != recMagic || b[1] >= numClasses || b[2] != 0 || b[3] != 0 ||
		le.Uint64(b[12:]) <= after || le.Uint64(b[12:]) > MaxSeq {
		return recInfo{}, false
	}
	n := le.Uint32(b[4:])
	if n > maxPayload || uint64(n) > uint64(len(b)-recHeaderSize) {
		return recInfo{}, false
	}
	size := recHeaderSize + int(n)
	if le.Uint32(b[8:]) != recordCRC(b[:size]) {
		return recInfo{}, false
	}
	return recInfo{
		size: int64(size), seq: le.Uint64(b[12:]), class: Class(b[1]),
		appended: int64(le.Uint64(b[20:])), batch: int64(le.Uint64(b[28:])), readings: le.Uint32(b[36:]),
	}, true
}

// region is a byte range [off, off+size) of a segment file.
type region struct{ off, size int64 }

// scanRecords reads the records of a segment body b, which starts at file
// offset base (just after the header). Bytes that do not form a valid
// record are skipped by resynchronising on the next valid record whose seq
// is above the previous one's (and above minSeq); each maximal run of such
// bytes is one bad region. Records and bad regions tile b exactly, in
// order. It never panics, whatever b holds.
func scanRecords(b []byte, base int64, minSeq uint64) (recs []recInfo, bad []region) {
	last := minSeq
	badStart := -1
	for i := 0; i < len(b); {
		if r, ok := parseRecord(b[i:], last); ok {
			if badStart >= 0 {
				bad = append(bad, region{base + int64(badStart), int64(i - badStart)})
				badStart = -1
			}
			r.off = base + int64(i)
			recs = append(recs, r)
			last = r.seq
			i += int(r.size)
			continue
		}
		if badStart < 0 {
			badStart = i
		}
		// Skip ahead to the next candidate magic byte.
		next := indexByteFrom(b, i+1, recMagic)
		if next < 0 {
			next = len(b)
		}
		i = next
	}
	if badStart >= 0 {
		bad = append(bad, region{base + int64(badStart), int64(len(b) - badStart)})
	}
	return recs, bad
}

func indexByteFrom(b []byte, from int, c byte) int {
	for i := from; i < len(b); i++ {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// ack entries

func encodeAckHeader(index uint64) []byte {
	b := make([]byte, ackEntrySize)
	copy(b, ackMagic[:])
	b[4] = formatVersion
	le.PutUint64(b[8:], index)
	le.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	return b
}

func ackHeaderOK(b []byte, index uint64) bool {
	return len(b) >= ackEntrySize && [4]byte(b[:4]) == ackMagic && b[4] == formatVersion &&
		le.Uint64(b[8:]) == index && le.Uint32(b[16:]) == crc32.Checksum(b[:16], castagnoli)
}

func ackEntryCRC(b []byte, index uint64) uint32 {
	var ix [8]byte
	le.PutUint64(ix[:], index)
	return crc32.Update(crc32.Checksum(b[:16], castagnoli), castagnoli, ix[:])
}

func appendAckEntry(dst []byte, index, first, last uint64) []byte {
	var b [ackEntrySize]byte
	le.PutUint64(b[0:], first)
	le.PutUint64(b[8:], last)
	le.PutUint32(b[16:], ackEntryCRC(b[:], index))
	return append(dst, b[:]...)
}

// parseAcks returns the ranges in an ack file's bytes, skipping entries
// whose checksum fails and a torn last entry; good reports a valid header.
func parseAcks(b []byte, index uint64) (ranges [][2]uint64, skipped int, good bool) {
	if !ackHeaderOK(b, index) {
		return nil, 0, false
	}
	for b = b[ackEntrySize:]; len(b) > 0; b = b[min(len(b), ackEntrySize):] {
		if len(b) < ackEntrySize || le.Uint32(b[16:]) != ackEntryCRC(b, index) {
			skipped++
			continue
		}
		first, last := le.Uint64(b), le.Uint64(b[8:])
		if first <= last {
			ranges = append(ranges, [2]uint64{first, last})
		}
	}
	return ranges, skipped, true
}

// state file

type state struct{ epoch, floor uint64 }

func (s state) encode() []byte {
	b := make([]byte, stateSize)
	copy(b, stateMagic[:])
	b[4] = formatVersion
	le.PutUint64(b[8:], s.epoch)
	le.PutUint64(b[16:], s.floor)
	le.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
	return b
}

func parseState(b []byte) (state, bool) {
	if len(b) != stateSize || [4]byte(b[:4]) != stateMagic || b[4] != formatVersion ||
		le.Uint32(b[24:]) != crc32.Checksum(b[:24], castagnoli) {
		return state{}, false
	}
	s := state{epoch: le.Uint64(b[8:]), floor: le.Uint64(b[16:])}
	return s, s.epoch != 0 && s.epoch < 1<<63
}
