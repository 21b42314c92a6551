package relay

import (
	"slices"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// ackQueue acknowledges MQTT messages in the order they arrived, as MQTT
// 3.1.1 asks, although Kafka may confirm them out of order (different
// partitions). A message that completes without an ack is passed over.
type ackQueue struct {
	mu    sync.Mutex
	slots []*ackSlot
}

type ackSlot struct {
	msg       mqtt.Message
	done, ack bool
}

func (q *ackQueue) push(msg mqtt.Message) *ackSlot {
	s := &ackSlot{msg: msg}
	q.mu.Lock()
	q.slots = append(q.slots, s)
	q.mu.Unlock()
	return s
}

func (q *ackQueue) complete(s *ackSlot, ack bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	s.done, s.ack = true, ack
	n := 0
	for n < len(q.slots) && q.slots[n].done {
		if q.slots[n].ack {
			q.slots[n].msg.Ack()
		}
		q.slots[n] = nil
		n++
	}
	q.slots = q.slots[n:]
}

// vehicleAcks collects, per vehicle, the batches Kafka took since the last
// drain.
type vehicleAcks struct {
	mu       sync.Mutex
	pending  map[string]map[uint64][]uint64 // vehicle -> epoch -> seqs
	catalogs map[string][][]byte            // vehicle -> catalog ids
}

// addCatalog records that Kafka holds a catalog the vehicle published.
func (v *vehicleAcks) addCatalog(vehicleID string, id []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.catalogs == nil {
		v.catalogs = map[string][][]byte{}
	}
	v.catalogs[vehicleID] = append(v.catalogs[vehicleID], id)
}

func (v *vehicleAcks) add(id wire.Identity) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pending == nil {
		v.pending = map[string]map[uint64][]uint64{}
	}
	epochs := v.pending[id.VehicleID]
	if epochs == nil {
		epochs = map[uint64][]uint64{}
		v.pending[id.VehicleID] = epochs
	}
	epochs[id.Epoch] = append(epochs[id.Epoch], id.Seq)
}

// drain returns the encoded Ack message for each vehicle with news, seqs
// merged into ranges, and forgets them.
func (v *vehicleAcks) drain() map[string][]byte {
	v.mu.Lock()
	pending, catalogs := v.pending, v.catalogs
	v.pending, v.catalogs = nil, nil
	v.mu.Unlock()
	for vehicleID := range catalogs {
		if _, ok := pending[vehicleID]; !ok {
			if pending == nil {
				pending = map[string]map[uint64][]uint64{}
			}
			pending[vehicleID] = nil
		}
	}
	out := make(map[string][]byte, len(pending))
	for vehicleID, epochs := range pending {
		ack := &pb.Ack{VehicleId: vehicleID, Catalogs: catalogs[vehicleID]}
		for epoch, seqs := range epochs {
			ack.Ranges = append(ack.Ranges, SeqRanges(epoch, seqs)...)
		}
		slices.SortFunc(ack.Ranges, func(a, b *pb.SeqRange) int {
			if a.Epoch != b.Epoch {
				return compare(a.Epoch, b.Epoch)
			}
			return compare(a.First, b.First)
		})
		data, err := proto.Marshal(ack)
		if err != nil {
			continue // cannot happen for this message
		}
		out[vehicleID] = data
	}
	return out
}

// SeqRanges merges seqs of one epoch into sorted inclusive ranges.
func SeqRanges(epoch uint64, seqs []uint64) []*pb.SeqRange {
	s := slices.Clone(seqs)
	slices.Sort(s)
	s = slices.Compact(s)
	var out []*pb.SeqRange
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		out = append(out, &pb.SeqRange{Epoch: epoch, First: s[i], Last: s[j]})
		i = j + 1
	}
	return out
}

func compare(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
