package relay

import (
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// The end-to-end acks: which of a vehicle's batches (and catalogs) Kafka
// holds. A vehicle's news waits up to AckInterval for more to share its
// message, or less once AckBatches batches wait: at a fleet's usual one
// batch a second the ack message count is then about one a second per
// vehicle, and a vehicle draining a backlog gets one every AckBatches
// batches, well within its in-flight window.

// ackShards spreads the book over locks: every produced batch touches it.
const ackShards = 32

// ackBook collects per vehicle what Kafka took and has not been acked
// yet. It is safe for concurrent use.
type ackBook struct {
	seed   maphash.Seed
	shards [ackShards]ackShard
	// due receives vehicles whose news reached AckBatches.
	due      chan string
	maxBatch int
}

type ackShard struct {
	mu   sync.Mutex
	news map[string]*vehicleNews
	// order lists the vehicles with news, oldest news first.
	order []queuedVehicle
}

type queuedVehicle struct {
	vehicle string
	since   time.Time
}

type vehicleNews struct {
	ranges   []*pb.SeqRange // sorted by (epoch, first), disjoint
	catalogs [][]byte
	batches  int
}

func newAckBook(maxBatch int) *ackBook {
	return &ackBook{seed: maphash.MakeSeed(), due: make(chan string, 4096), maxBatch: maxBatch}
}

func (a *ackBook) shard(vehicle string) *ackShard {
	return &a.shards[maphash.String(a.seed, vehicle)%ackShards]
}

func (a *ackBook) entry(s *ackShard, vehicle string, now time.Time) *vehicleNews {
	if s.news == nil {
		s.news = map[string]*vehicleNews{}
	}
	n := s.news[vehicle]
	if n == nil {
		n = &vehicleNews{}
		s.news[vehicle] = n
		s.order = append(s.order, queuedVehicle{vehicle, now})
	}
	return n
}

// add records that Kafka holds a batch.
func (a *ackBook) add(id wire.Identity, now time.Time) {
	s := a.shard(id.VehicleID)
	s.mu.Lock()
	n := a.entry(s, id.VehicleID, now)
	n.ranges = addSeq(n.ranges, id.Epoch, id.Seq)
	n.batches++
	due := n.batches == a.maxBatch
	s.mu.Unlock()
	if due {
		select {
		case a.due <- id.VehicleID:
		default: // it goes with the next timed round
		}
	}
}

// addCatalog records that Kafka holds a catalog the vehicle published.
func (a *ackBook) addCatalog(vehicle string, catalogID []byte, now time.Time) {
	s := a.shard(vehicle)
	s.mu.Lock()
	n := a.entry(s, vehicle, now)
	n.catalogs = append(n.catalogs, catalogID)
	s.mu.Unlock()
	select {
	case a.due <- vehicle: // a catalog's ack changes what the agent sends: no waiting
	default:
	}
}

// putBack returns news that could not be sent to the book.
func (a *ackBook) putBack(vehicle string, news *vehicleNews, now time.Time) {
	s := a.shard(vehicle)
	s.mu.Lock()
	n := a.entry(s, vehicle, now)
	for _, r := range news.ranges {
		for seq := r.First; ; seq++ {
			n.ranges = addSeq(n.ranges, r.Epoch, seq)
			if seq == r.Last {
				break
			}
		}
	}
	n.catalogs = append(n.catalogs, news.catalogs...)
	n.batches += news.batches
	s.mu.Unlock()
}

// home is where the vehicle's acks go among n connections.
func (a *ackBook) home(vehicle string, n int) int {
	return int(maphash.String(a.seed, vehicle) % uint64(n))
}

// addSeq adds seq to sorted disjoint ranges, merging neighbours. Batches
// mostly arrive in order, so the common case extends the last range.
func addSeq(rs []*pb.SeqRange, epoch, seq uint64) []*pb.SeqRange {
	if k := len(rs); k > 0 {
		last := rs[k-1]
		if last.Epoch == epoch && seq >= last.First {
			switch {
			case seq <= last.Last:
				return rs
			case seq == last.Last+1:
				last.Last = seq
				return rs
			}
		}
	}
	i, _ := slices.BinarySearchFunc(rs, [2]uint64{epoch, seq}, func(r *pb.SeqRange, k [2]uint64) int {
		switch {
		case r.Epoch != k[0]:
			return cmp(r.Epoch, k[0])
		case r.Last < k[1]:
			return -1
		case r.First > k[1]:
			return 1
		}
		return 0
	})
	if i < len(rs) && rs[i].Epoch == epoch && rs[i].First <= seq && seq <= rs[i].Last {
		return rs
	}
	// Join the range before and/or after when seq touches them.
	joinPrev := i > 0 && rs[i-1].Epoch == epoch && rs[i-1].Last+1 == seq
	joinNext := i < len(rs) && rs[i].Epoch == epoch && seq+1 == rs[i].First
	switch {
	case joinPrev && joinNext:
		rs[i-1].Last = rs[i].Last
		return slices.Delete(rs, i, i+1)
	case joinPrev:
		rs[i-1].Last = seq
		return rs
	case joinNext:
		rs[i].First = seq
		return rs
	}
	return slices.Insert(rs, i, &pb.SeqRange{Epoch: epoch, First: seq, Last: seq})
}

func cmp(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// vehicleAck is one ack message to send.
type vehicleAck struct {
	vehicle string
	news    *vehicleNews
	payload []byte
	batches int
}

// take removes and returns the acks of vehicles whose news is older than
// cutoff, plus those named in extra (due early), or of every vehicle when
// all is set.
func (a *ackBook) take(cutoff time.Time, extra map[string]struct{}, all bool) []vehicleAck {
	var out []vehicleAck
	for i := range a.shards {
		s := &a.shards[i]
		s.mu.Lock()
		keep := s.order[:0]
		for _, q := range s.order {
			n := s.news[q.vehicle]
			if n == nil {
				continue
			}
			if _, early := extra[q.vehicle]; !all && !early && q.since.After(cutoff) {
				keep = append(keep, q)
				continue
			}
			delete(s.news, q.vehicle)
			out = append(out, vehicleAck{vehicle: q.vehicle, news: n, payload: encodeAck(q.vehicle, n), batches: n.batches})
		}
		clear(s.order[len(keep):])
		s.order = keep
		s.mu.Unlock()
	}
	return out
}

// encodeAck is proto.Marshal of the pb.Ack, byte for byte (the agents
// decode it with the generated code), without building the message.
func encodeAck(vehicle string, n *vehicleNews) []byte {
	size := 2 + len(vehicle) + len(n.ranges)*32
	for _, c := range n.catalogs {
		size += 2 + len(c)
	}
	b := make([]byte, 0, size)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, vehicle)
	for _, r := range n.ranges {
		var m []byte
		if r.Epoch != 0 {
			m = protowire.AppendTag(m, 1, protowire.Fixed64Type)
			m = protowire.AppendFixed64(m, r.Epoch)
		}
		if r.First != 0 {
			m = protowire.AppendTag(m, 2, protowire.VarintType)
			m = protowire.AppendVarint(m, r.First)
		}
		if r.Last != 0 {
			m = protowire.AppendTag(m, 3, protowire.VarintType)
			m = protowire.AppendVarint(m, r.Last)
		}
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	for _, c := range n.catalogs {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, c)
	}
	return b
}

// SeqRanges merges seqs of one epoch into sorted inclusive ranges.
func SeqRanges(epoch uint64, seqs []uint64) []*pb.SeqRange {
	var rs []*pb.SeqRange
	for _, s := range seqs {
		rs = addSeq(rs, epoch, s)
	}
	return rs
}
