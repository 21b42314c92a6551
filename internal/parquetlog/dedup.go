package parquetlog

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/klauspost/compress/zstd"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// DedupConfig bounds the duplicate filter of one partition. The filter
// remembers, per vehicle and spool epoch, which batch seqs were written, as
// ranges. At every window's end (a deterministic point) it forgets, in this
// order:
//   - vehicles not heard from in TTL of record time (Kafka timestamps);
//   - beyond MaxVehicles, the vehicles heard from least recently;
//   - beyond MaxEpochs per vehicle, its least recently used epochs;
//   - beyond MaxRanges per epoch, its lowest seq ranges.
//
// A duplicate of a forgotten batch is written again; a forgotten batch is
// never mistaken for a duplicate, so the filter never loses a reading.
type DedupConfig struct {
	TTL         int64 // milliseconds of record time
	MaxVehicles int
	MaxEpochs   int
	MaxRanges   int
}

// DefaultDedup keeps a week, a million vehicles a partition, 8 epochs and
// 1024 ranges.
var DefaultDedup = DedupConfig{TTL: 7 * 24 * 3600 * 1000, MaxVehicles: 1_000_000, MaxEpochs: 8, MaxRanges: 1024}

type seqRange [2]uint64 // inclusive

type epochSeen struct {
	Epoch  uint64
	Last   int64 // record time (ms) of the last batch of this epoch
	Ranges []seqRange
}

type vehicleSeen struct {
	Last   int64 // record time (ms) of the vehicle's last batch
	Epochs []*epochSeen
}

// seenSet is a duplicate filter (the committed one) or the part a window
// added to it (a delta).
type seenSet struct {
	vehicles map[string]*vehicleSeen
}

func newSeenSet() *seenSet { return &seenSet{vehicles: map[string]*vehicleSeen{}} }

func (s *seenSet) len() int { return len(s.vehicles) }

func (s *seenSet) has(id wire.Identity) bool {
	v := s.vehicles[id.VehicleID]
	if v == nil {
		return false
	}
	for _, e := range v.Epochs {
		if e.Epoch == id.Epoch {
			return rangesHave(e.Ranges, id.Seq)
		}
	}
	return false
}

func rangesHave(rs []seqRange, x uint64) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i][1] >= x })
	return i < len(rs) && rs[i][0] <= x
}

// add records id as seen at record time ts (ms).
func (s *seenSet) add(id wire.Identity, ts int64) {
	s.addRange(id.VehicleID, id.Epoch, seqRange{id.Seq, id.Seq}, ts)
}

func (s *seenSet) addRange(vehicle string, epoch uint64, r seqRange, ts int64) {
	v := s.vehicles[vehicle]
	if v == nil {
		v = &vehicleSeen{}
		s.vehicles[vehicle] = v
	}
	v.Last = max(v.Last, ts)
	var e *epochSeen
	for _, x := range v.Epochs {
		if x.Epoch == epoch {
			e = x
			break
		}
	}
	if e == nil {
		e = &epochSeen{Epoch: epoch}
		v.Epochs = append(v.Epochs, e)
	}
	e.Last = max(e.Last, ts)
	e.Ranges = insertRange(e.Ranges, r)
}

// insertRange adds r to sorted, disjoint, non-adjacent ranges, merging.
func insertRange(rs []seqRange, r seqRange) []seqRange {
	i := sort.Search(len(rs), func(i int) bool { return rs[i][1]+1 >= r[0] || rs[i][1] == ^uint64(0) })
	j := i
	for j < len(rs) && (r[1] == ^uint64(0) || rs[j][0] <= r[1]+1) {
		r[0] = min(r[0], rs[j][0])
		r[1] = max(r[1], rs[j][1])
		j++
	}
	if i == j {
		return slices.Insert(rs, i, r)
	}
	rs[i] = r
	return slices.Delete(rs, i+1, j)
}

// merge adds every range of d into s.
func (s *seenSet) merge(d *seenSet) {
	for vid, dv := range d.vehicles {
		for _, de := range dv.Epochs {
			for _, r := range de.Ranges {
				s.addRange(vid, de.Epoch, r, de.Last)
			}
		}
		if v := s.vehicles[vid]; v != nil {
			v.Last = max(v.Last, dv.Last)
		}
	}
}

// evict applies cfg's forgetting rules as of record time now (ms) and
// returns how many vehicles it forgot.
func (s *seenSet) evict(cfg DedupConfig, now int64) int {
	before := len(s.vehicles)
	for vid, v := range s.vehicles {
		if cfg.TTL > 0 && v.Last < now-cfg.TTL {
			delete(s.vehicles, vid)
			continue
		}
		if cfg.MaxEpochs > 0 && len(v.Epochs) > cfg.MaxEpochs {
			slices.SortFunc(v.Epochs, func(a, b *epochSeen) int {
				return cmp.Or(-cmp.Compare(a.Last, b.Last), cmp.Compare(a.Epoch, b.Epoch))
			})
			v.Epochs = v.Epochs[:cfg.MaxEpochs]
		}
		for _, e := range v.Epochs {
			if cfg.MaxRanges > 0 && len(e.Ranges) > cfg.MaxRanges {
				e.Ranges = slices.Delete(e.Ranges, 0, len(e.Ranges)-cfg.MaxRanges)
			}
		}
	}
	if cfg.MaxVehicles > 0 && len(s.vehicles) > cfg.MaxVehicles {
		ids := make([]string, 0, len(s.vehicles))
		for vid := range s.vehicles {
			ids = append(ids, vid)
		}
		slices.SortFunc(ids, func(a, b string) int {
			return cmp.Or(cmp.Compare(s.vehicles[a].Last, s.vehicles[b].Last), cmp.Compare(a, b))
		})
		for _, vid := range ids[:len(ids)-cfg.MaxVehicles] {
			delete(s.vehicles, vid)
		}
	}
	return before - len(s.vehicles)
}

// The persisted form: JSON (readable with zstdcat | jq), zstd-compressed.
type seenDoc struct {
	Format int `json:"format"`
	// End is the record time (ms) the window ended at, for a delta: the
	// time its forgetting rules were applied at.
	End      int64                    `json:"end,omitempty"`
	Vehicles map[string]vehicleSeenJS `json:"vehicles"`
}

type vehicleSeenJS struct {
	Last   int64          `json:"last"`
	Epochs []epochSeenJSN `json:"epochs"`
}

type epochSeenJSN struct {
	Epoch  string     `json:"epoch"` // 16 hex digits
	Last   int64      `json:"last"`
	Ranges []seqRange `json:"seqs"`
}

var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
)

// marshal returns the compressed document and a short hash of it, which
// names the object it is stored as (content-addressed: two writers that
// store the same name store the same bytes).
func (s *seenSet) marshal(end int64) (data []byte, hash string, err error) {
	doc := seenDoc{Format: 1, End: end, Vehicles: make(map[string]vehicleSeenJS, len(s.vehicles))}
	for vid, v := range s.vehicles {
		js := vehicleSeenJS{Last: v.Last}
		eps := slices.Clone(v.Epochs)
		slices.SortFunc(eps, func(a, b *epochSeen) int { return cmp.Compare(a.Epoch, b.Epoch) })
		for _, e := range eps {
			js.Epochs = append(js.Epochs, epochSeenJSN{Epoch: fmt.Sprintf("%016x", e.Epoch), Last: e.Last, Ranges: e.Ranges})
		}
		doc.Vehicles[vid] = js
	}
	raw, err := json.Marshal(doc) // map keys are sorted: the bytes are deterministic
	if err != nil {
		return nil, "", err
	}
	data = zenc.EncodeAll(raw, nil)
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:8]), nil
}

func unmarshalSeen(data []byte) (*seenSet, int64, error) {
	raw, err := zdec.DecodeAll(data, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("dedup state: %w", err)
	}
	var doc seenDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		return nil, 0, fmt.Errorf("dedup state: %w", err)
	}
	if doc.Format != 1 {
		return nil, 0, fmt.Errorf("dedup state: format %d (this build reads 1)", doc.Format)
	}
	s := newSeenSet()
	for vid, js := range doc.Vehicles {
		v := &vehicleSeen{Last: js.Last}
		for _, e := range js.Epochs {
			epoch, err := strconv.ParseUint(e.Epoch, 16, 64)
			if err != nil {
				return nil, 0, fmt.Errorf("dedup state: epoch %q of %s: %w", e.Epoch, vid, err)
			}
			for i, r := range e.Ranges {
				if r[1] < r[0] || (i > 0 && r[0] <= e.Ranges[i-1][1]) {
					return nil, 0, fmt.Errorf("dedup state: bad seq ranges of %s", vid)
				}
			}
			v.Epochs = append(v.Epochs, &epochSeen{Epoch: epoch, Last: e.Last, Ranges: e.Ranges})
		}
		s.vehicles[vid] = v
	}
	return s, doc.End, nil
}
