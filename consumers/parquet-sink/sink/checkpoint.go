package sink

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// checkpoint is the sink's durable state for one Kafka partition, kept on
// S3 next to the data (so the data and the state that describes it can
// never disagree):
//
//   - NextOffset is the first offset not yet in a file;
//   - Pending lists files a write starting at NextOffset may have left
//     behind: a restart that writes a different set of files from that
//     offset deletes the ones it did not rewrite;
//   - Seen is the duplicate filter as of NextOffset.
type checkpoint struct {
	Topic      string                       `json:"topic"`
	Partition  int32                        `json:"partition"`
	NextOffset int64                        `json:"next_offset"`
	Pending    []string                     `json:"pending,omitempty"`
	Seen       map[string]map[string]seqSet `json:"seen,omitempty"` // vehicle -> epoch (hex) -> seqs
}

func checkpointKey(topic string, partition int32) string {
	return fmt.Sprintf("_sink/checkpoints/%s+%d.json", topic, partition)
}

// seqSet is a set of seqs as sorted, disjoint, non-adjacent inclusive ranges.
type seqSet [][2]uint64

func (s seqSet) has(x uint64) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i][1] >= x })
	return i < len(s) && s[i][0] <= x
}

func (s seqSet) add(x uint64) seqSet {
	i := sort.Search(len(s), func(i int) bool { return s[i][1] >= x })
	if i < len(s) && s[i][0] <= x {
		return s // present
	}
	joinLeft := i > 0 && s[i-1][1]+1 == x
	joinRight := i < len(s) && x+1 == s[i][0]
	switch {
	case joinLeft && joinRight:
		s[i-1][1] = s[i][1]
		return slices.Delete(s, i, i+1)
	case joinLeft:
		s[i-1][1] = x
	case joinRight:
		s[i][0] = x
	default:
		s = slices.Insert(s, i, [2]uint64{x, x})
	}
	return s
}

// seenFilter remembers which batches a partition has written, so that the
// copies at-least-once delivery makes are dropped. It keeps at most
// maxEpochs epochs per vehicle, forgetting the least recently used.
type seenFilter struct {
	maxEpochs int
	vehicles  map[string]*vehicleSeen
	clock     uint64
}

type vehicleSeen struct {
	epochs map[uint64]*epochSeen
}

type epochSeen struct {
	seqs     seqSet
	lastUsed uint64
}

func newSeenFilter(maxEpochs int) *seenFilter {
	return &seenFilter{maxEpochs: maxEpochs, vehicles: map[string]*vehicleSeen{}}
}

func (f *seenFilter) has(id wire.Identity) bool {
	v := f.vehicles[id.VehicleID]
	if v == nil {
		return false
	}
	e := v.epochs[id.Epoch]
	return e != nil && e.seqs.has(id.Seq)
}

func (f *seenFilter) add(id wire.Identity) {
	f.clock++
	v := f.vehicles[id.VehicleID]
	if v == nil {
		v = &vehicleSeen{epochs: map[uint64]*epochSeen{}}
		f.vehicles[id.VehicleID] = v
	}
	e := v.epochs[id.Epoch]
	if e == nil {
		if len(v.epochs) >= f.maxEpochs {
			var oldest uint64
			first := true
			for k, x := range v.epochs {
				if first || x.lastUsed < v.epochs[oldest].lastUsed {
					oldest, first = k, false
				}
			}
			delete(v.epochs, oldest)
		}
		e = &epochSeen{}
		v.epochs[id.Epoch] = e
	}
	e.seqs = e.seqs.add(id.Seq)
	e.lastUsed = f.clock
}

func (f *seenFilter) snapshot() map[string]map[string]seqSet {
	out := make(map[string]map[string]seqSet, len(f.vehicles))
	for vid, v := range f.vehicles {
		m := make(map[string]seqSet, len(v.epochs))
		for epoch, e := range v.epochs {
			m[strconv.FormatUint(epoch, 16)] = slices.Clone(e.seqs)
		}
		out[vid] = m
	}
	return out
}

func (f *seenFilter) restore(m map[string]map[string]seqSet) error {
	for vid, epochs := range m {
		for hex, seqs := range epochs {
			epoch, err := strconv.ParseUint(hex, 16, 64)
			if err != nil {
				return fmt.Errorf("checkpoint: epoch %q of %s: %w", hex, vid, err)
			}
			for _, r := range seqs {
				if r[1] < r[0] {
					return fmt.Errorf("checkpoint: bad range %v of %s", r, vid)
				}
			}
			v := f.vehicles[vid]
			if v == nil {
				v = &vehicleSeen{epochs: map[uint64]*epochSeen{}}
				f.vehicles[vid] = v
			}
			v.epochs[epoch] = &epochSeen{seqs: slices.Clone(seqs)}
		}
	}
	return nil
}

func (c *checkpoint) marshal() ([]byte, error) { return json.Marshal(c) }

func parseCheckpoint(data []byte) (*checkpoint, error) {
	var c checkpoint
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if c.NextOffset < 0 {
		return nil, fmt.Errorf("checkpoint: negative next_offset %d", c.NextOffset)
	}
	return &c, nil
}
