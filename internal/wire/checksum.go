package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// The end-to-end checksum (Batch.checksum, field 10) is the CRC-32C of the
// batch's bytes with the checksum field itself left out. Leaving the field
// out, rather than zeroing it, makes the definition independent of where
// the field sits and of any field added later: every byte of every other
// field is covered, whoever wrote it. Encode writes it last, so computing
// it is one pass over the bytes before it and verifying it one pass over
// the whole batch.
//
// CRC-32C detects every burst of up to 32 flipped bits and any odd number
// of flips; a random corruption passes with probability 2^-32. It is not an
// authenticator: a device that means harm computes it too (device identity
// is the broker's job, with client certificates and ACLs).

// Errors returned (wrapped) by Decode and Checker.Check about the checksum.
var (
	// ErrCorrupt means the batch's checksum does not match its bytes: it
	// was damaged somewhere between the agent's spool and the reader.
	ErrCorrupt = errors.New("corrupt batch")
	// ErrNoChecksum means the batch has no checksum and the reader was
	// told to require one (Limits.RequireChecksum).
	ErrNoChecksum = errors.New("batch has no checksum")
)

// checksumField is Batch.checksum's field number; checksumTag is its tag
// byte (fixed32 wire type) and checksumLen the field's whole length.
const (
	checksumField = 10
	checksumTag   = checksumField<<3 | byte(protowire.Fixed32Type)
	checksumLen   = 1 + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendChecksum appends the checksum field to b, a serialized Batch that
// has none, and returns the extended slice. Encode does this; tools that
// rewrite a batch's envelope (load generators, tests) use it to seal the
// result.
func AppendChecksum(b []byte) []byte {
	sum := crc32.Update(0, castagnoli, b)
	b = append(b, checksumTag)
	return binary.LittleEndian.AppendUint32(b, sum)
}

// Seal serializes env with a fresh checksum, replacing any it holds: for
// tools and tests that build or rewrite envelopes themselves.
func Seal(env *pb.Batch) ([]byte, error) {
	c := proto.Clone(env).(*pb.Batch)
	c.Checksum = 0 // absent: proto3 does not write a zero
	buf := make([]byte, 0, proto.Size(c)+checksumLen)
	buf, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, c)
	if err != nil {
		return nil, fmt.Errorf("wire: marshal batch: %w", err)
	}
	return AppendChecksum(buf), nil
}

// batchWireTypes are the wire types of Batch's fields up to the checksum;
// a batch that uses another for one of them is malformed (the generated
// parser would silently keep such a field as unknown, and a bit flip in a
// tag could then pass for a batch without a checksum). Later fields are
// skipped here: the generated parser reads them.
var batchWireTypes = [...]protowire.Type{
	1: protowire.BytesType, 2: protowire.Fixed64Type, 3: protowire.VarintType, 4: protowire.VarintType,
	5: protowire.BytesType, 6: protowire.VarintType, 7: protowire.VarintType, 8: protowire.BytesType,
	9: protowire.BytesType, 10: protowire.Fixed32Type,
}

// verifyChecksum checks a serialized batch's checksum, if it has one,
// before anything else reads the batch, and reports whether it had one.
// A batch whose top-level fields do not parse is malformed, unless its last
// bytes are a checksum field that does not match the rest: then it is
// corrupt (most damaged batches are), which is the more useful reason.
func verifyChecksum(data []byte) (bool, error) {
	at, n := -1, 0 // the checksum field's offset; how many there are
	for off := 0; off < len(data); {
		num, typ, tagLen := protowire.ConsumeTag(data[off:])
		if tagLen < 0 {
			return false, envelopeError(data, "envelope: field at byte %d: %v", off, protowire.ParseError(tagLen))
		}
		valLen := protowire.ConsumeFieldValue(num, typ, data[off+tagLen:])
		if valLen < 0 {
			return false, envelopeError(data, "envelope: field %d at byte %d: %v", num, off, protowire.ParseError(valLen))
		}
		if int(num) < len(batchWireTypes) && typ != batchWireTypes[num] {
			return false, envelopeError(data, "envelope: field %d has wire type %d, want %d", num, typ, batchWireTypes[num])
		}
		if num == checksumField {
			at, n = off, n+1
		}
		off += tagLen + valLen
	}
	switch {
	case n == 0:
		return false, nil
	case n > 1:
		return false, malformed("envelope: %d checksum fields", n)
	}
	want := binary.LittleEndian.Uint32(data[at+1:])
	got := crc32.Update(0, castagnoli, data[:at])
	got = crc32.Update(got, castagnoli, data[at+checksumLen:])
	if got != want {
		return true, fmt.Errorf("%w: checksum %08x, the bytes give %08x", ErrCorrupt, want, got)
	}
	return true, nil
}

// envelopeError is the error for a batch whose fields do not parse: corrupt
// if it ends in a checksum that does not match, else malformed.
func envelopeError(data []byte, format string, args ...any) error {
	if n := len(data); n >= checksumLen && data[n-checksumLen] == checksumTag {
		want := binary.LittleEndian.Uint32(data[n-4:])
		if got := crc32.Update(0, castagnoli, data[:n-checksumLen]); got != want {
			return fmt.Errorf("%w: checksum %08x, the bytes give %08x (and "+format+")", append([]any{ErrCorrupt, want, got}, args...)...)
		}
	}
	return malformed(format, args...)
}
