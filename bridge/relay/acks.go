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
// holds. Acks are throttled per vehicle, leading edge first: a vehicle
// that had no ack within the last AckInterval gets one as soon as Kafka
// holds its batch; after that, what Kafka takes for it waits until
// AckInterval has passed since its last ack, or until AckBatches batches
// wait. A fleet's usual vehicle (a batch a second or less) thus hears
// about each batch within milliseconds, its spool holding nothing it need
// not, while a vehicle draining a backlog gets one ack for up to
// AckBatches batches, well within its in-flight window: at a few batches
// per second per vehicle the acks cost the broker a fraction of the
// batches' own traffic.

// ackShards spreads the book over locks: every produced batch touches it.
const ackShards = 32

// ackBook collects per vehicle what Kafka took and has not been acked
// yet. It is safe for concurrent use.
type ackBook struct {
	seed     maphash.Seed
	shards   [ackShards]ackShard
	interval time.Duration
	maxBatch int
	// wake is signalled when a vehicle's ack is due at once.
	wake chan struct{}
}

type ackShard struct {
	mu sync.Mutex
	// news holds the vehicles with news or acked within the interval.
	news map[string]*vehicleNews
	// ready lists the vehicles whose ack is due now.
	ready []string
	// waiting lists, in the order they were sent, the acks whose
	// interval has not passed: their vehicles' news is due at dueAt.
	waiting []queuedVehicle
	head    int // waiting[:head] is consumed
}

type queuedVehicle struct {
	vehicle string
	dueAt   time.Time
}

type vehicleNews struct {
	ranges   []*pb.SeqRange // sorted by (epoch, first), disjoint
	catalogs [][]byte
	batches  int
	sent     time.Time // the last ack (zero: none within the interval)
	ready    bool      // listed in the shard's ready list
}

func (n *vehicleNews) empty() bool { return len(n.ranges) == 0 && len(n.catalogs) == 0 }

func newAckBook(interval time.Duration, maxBatch int) *ackBook {
	return &ackBook{seed: maphash.MakeSeed(), interval: interval, maxBatch: maxBatch, wake: make(chan struct{}, 1)}
}

func (a *ackBook) shard(vehicle string) *ackShard {
	return &a.shards[maphash.String(a.seed, vehicle)%ackShards]
}

func (s *ackShard) entry(vehicle string) *vehicleNews {
	if s.news == nil {
		s.news = map[string]*vehicleNews{}
	}
	n := s.news[vehicle]
	if n == nil {
		n = &vehicleNews{}
		s.news[vehicle] = n
	}
	return n
}

// markReady lists the vehicle as due now; it reports whether it was not
// listed yet. s.mu is held.
func (s *ackShard) markReady(vehicle string, n *vehicleNews) bool {
	if n.ready {
		return false
	}
	n.ready = true
	s.ready = append(s.ready, vehicle)
	return true
}

func (a *ackBook) signal() {
	select {
	case a.wake <- struct{}{}:
	default: // a wake is pending already
	}
}

// add records that Kafka holds a batch.
func (a *ackBook) add(id wire.Identity, now time.Time) {
	s := a.shard(id.VehicleID)
	s.mu.Lock()
	n := s.entry(id.VehicleID)
	n.ranges = addSeq(n.ranges, id.Epoch, id.Seq)
	n.batches++
	due := (n.sent.IsZero() || now.Sub(n.sent) >= a.interval || n.batches >= a.maxBatch) && s.markReady(id.VehicleID, n)
	s.mu.Unlock()
	if due {
		a.signal()
	}
}

// addCatalog records that Kafka holds a catalog the vehicle published.
// Its ack goes at once: it changes what the agent sends.
func (a *ackBook) addCatalog(vehicle string, catalogID []byte) {
	s := a.shard(vehicle)
	s.mu.Lock()
	n := s.entry(vehicle)
	n.catalogs = append(n.catalogs, catalogID)
	due := s.markReady(vehicle, n)
	s.mu.Unlock()
	if due {
		a.signal()
	}
}

// putBack returns news that could not be sent to the book; it is tried
// again an interval later.
func (a *ackBook) putBack(vehicle string, news *vehicleNews, now time.Time) {
	s := a.shard(vehicle)
	s.mu.Lock()
	n := s.entry(vehicle)
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
	n.sent = now
	s.waiting = append(s.waiting, queuedVehicle{vehicle, now.Add(a.interval)})
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

// take removes and returns the acks that are due at now: those of the
// vehicles listed ready, and of those whose interval since their last ack
// has passed; with all set, every vehicle's news.
func (a *ackBook) take(now time.Time, all bool) []vehicleAck {
	var out []vehicleAck
	for i := range a.shards {
		s := &a.shards[i]
		s.mu.Lock()
		send := func(vehicle string, n *vehicleNews) {
			if n.empty() {
				return
			}
			news := &vehicleNews{ranges: n.ranges, catalogs: n.catalogs, batches: n.batches}
			out = append(out, vehicleAck{vehicle: vehicle, news: news, payload: encodeAck(vehicle, news), batches: news.batches})
			n.ranges, n.catalogs, n.batches = nil, nil, 0
			n.sent = now
			s.waiting = append(s.waiting, queuedVehicle{vehicle, now.Add(a.interval)})
		}
		for _, v := range s.ready {
			if n := s.news[v]; n != nil {
				n.ready = false
				send(v, n)
			}
		}
		clear(s.ready)
		s.ready = s.ready[:0]
		// Acks are sent in time order, so waiting is ordered by dueAt.
		for ; s.head < len(s.waiting) && !s.waiting[s.head].dueAt.After(now); s.head++ {
			q := s.waiting[s.head]
			n := s.news[q.vehicle]
			if n == nil || !n.sent.Add(a.interval).Equal(q.dueAt) {
				continue // a later ack went, and is queued behind
			}
			if n.empty() {
				delete(s.news, q.vehicle) // quiet for an interval: forget it
				continue
			}
			send(q.vehicle, n)
		}
		if s.head > len(s.waiting)/2 {
			clear(s.waiting[copy(s.waiting, s.waiting[s.head:]):])
			s.waiting = s.waiting[:len(s.waiting)-s.head]
			s.head = 0
		}
		if all {
			for v, n := range s.news {
				send(v, n)
			}
		}
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
