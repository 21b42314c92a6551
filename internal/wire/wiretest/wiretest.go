// Package wiretest holds what benchmarks of the wire encoding share: cutting
// readings into time windows, measuring the encoded size, and the naive
// baseline the encoding is compared with.
package wiretest

import (
	"math"
	"time"

	"github.com/klauspost/compress/snappy"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Windows splits time-ordered readings into batches spanning d each.
func Windows(rs []wire.Reading, d time.Duration) [][]wire.Reading {
	if len(rs) == 0 {
		return nil
	}
	var out [][]wire.Reading
	start := 0
	for i := range rs {
		if rs[i].Time-rs[start].Time >= int64(d) {
			out = append(out, rs[start:i])
			start = i
		}
	}
	return append(out, rs[start:])
}

// EncodedBytes is the total size of the batches as the agent encodes them
// (0.1 ms time resolution, zstd), with a registered catalog if one is given.
func EncodedBytes(batches [][]wire.Reading, fixes [][]wire.Fix, cat *wire.Catalog) (int, error) {
	n := 0
	for i, rs := range batches {
		b := &wire.Batch{
			Identity:     wire.Identity{VehicleID: "car-0001", Epoch: 1 << 62, Seq: uint64(i + 1)},
			AgentVersion: "0.2.0", Decoder: "bench", Readings: rs,
		}
		if len(rs) > 0 {
			b.BaseTime = rs[0].Time
		}
		if fixes != nil {
			b.Fixes = fixes[i]
		}
		data, err := wire.Encode(b, wire.EncodeOptions{TickNanos: 100_000, Catalog: cat})
		if err != nil {
			return 0, err
		}
		n += len(data)
	}
	return n, nil
}

// BaselineBytes is the naive encoding the agent's is compared with: one
// protobuf message per reading (signal id, time offset in ms from the
// batch start, value as a double), length-delimited, each batch compressed
// with snappy.
func BaselineBytes(batches [][]wire.Reading) int {
	ids := map[string]uint64{}
	n := 0
	var buf []byte
	for _, rs := range batches {
		buf = buf[:0]
		for _, r := range rs {
			id, ok := ids[r.Signal]
			if !ok {
				id = uint64(len(ids) + 1)
				ids[r.Signal] = id
			}
			var msg []byte
			msg = protowire.AppendTag(msg, 1, protowire.VarintType)
			msg = protowire.AppendVarint(msg, id)
			msg = protowire.AppendTag(msg, 2, protowire.VarintType)
			msg = protowire.AppendVarint(msg, uint64((r.Time-rs[0].Time)/1e6))
			msg = protowire.AppendTag(msg, 3, protowire.Fixed64Type)
			msg = protowire.AppendFixed64(msg, math.Float64bits(AsFloat(r.Value)))
			buf = protowire.AppendBytes(buf, msg)
		}
		n += len(snappy.Encode(nil, buf))
	}
	return n
}

// AsFloat is a value as a double, as the baseline sends it.
func AsFloat(v wire.Value) float64 {
	switch v.Kind {
	case wire.KindInt:
		return float64(v.Int)
	case wire.KindBool:
		if v.Bool {
			return 1
		}
		return 0
	}
	return v.Float
}
