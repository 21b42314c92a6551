// Package fleetsim is a fleet of simulated vehicles for load and fault
// tests of the bridge: each vehicle publishes a fixed number of batches
// (real wire batches, checksummed, of a chosen number of readings) over a
// few shared MQTT connections, listens for its end-to-end acks, and
// publishes again, as the edge agent does, every batch not acked within
// ResendAfter. It counts how often it published each batch, so a test can
// tell duplicates the fleet caused (re-sends) from any others.
package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/mqttlite"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// Config describes the fleet.
type Config struct {
	URL              string
	Prefix           string // vehicle IDs are Prefix + "0001", ...
	Vehicles         int
	Batches          int // per vehicle
	ReadingsPerBatch int
	Connections      int           // MQTT connections the vehicles share
	Interval         time.Duration // between a vehicle's new batches; 0: as fast as the window allows
	Window           int           // batches a connection has awaiting the broker's PUBACK, at most
	ResendAfter      time.Duration // 0: never re-send (load runs without acks)
	Epoch            uint64
}

// Fleet is a running simulation.
type Fleet struct {
	cfg      Config
	template *pb.Batch
	conns    []*mqttlite.Client
	vehicles []*vehicle
	byID     map[string]*vehicle
	windows  []chan struct{}

	published atomic.Int64
	resent    atomic.Int64
	acked     atomic.Int64
}

type vehicle struct {
	id   string
	conn int
	mu   sync.Mutex
	next uint64               // next new seq
	sent map[uint64]time.Time // unacked: when last published
	pubs map[uint64]int       // how often each seq was published
}

// New encodes the template batch; nothing connects until Run.
func New(cfg Config) (*Fleet, error) {
	if cfg.Connections < 1 || cfg.Vehicles < 1 || cfg.Batches < 1 {
		return nil, errors.New("fleetsim: want at least one connection, vehicle and batch")
	}
	if cfg.Window <= 0 {
		cfg.Window = 256
	}
	b := &wire.Batch{Identity: wire.Identity{VehicleID: "template", Epoch: cfg.Epoch, Seq: 1}, BaseTime: time.Now().UnixNano(), AgentVersion: "fleetsim", Decoder: "fleetsim:v1"}
	for i := range cfg.ReadingsPerBatch {
		t := b.BaseTime + int64(i/4)*10_000_000
		switch i % 4 {
		case 0:
			b.Readings = append(b.Readings, wire.Reading{Signal: "speed", Unit: "km/h", Time: t, Value: wire.Float(float64(i%97) / 4)})
		case 1:
			b.Readings = append(b.Readings, wire.Reading{Signal: "rpm", Unit: "rpm", Time: t, Value: wire.Int(int64(800 + i))})
		case 2:
			b.Readings = append(b.Readings, wire.Reading{Signal: "coolant", Unit: "C", Time: t, Value: wire.Int(int64(80 + i%3))})
		default:
			b.Readings = append(b.Readings, wire.Reading{Signal: "brake", Time: t, Value: wire.Bool(i%8 == 3)})
		}
	}
	data, err := wire.Encode(b, wire.EncodeOptions{})
	if err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, template: &pb.Batch{}, byID: map[string]*vehicle{}}
	if err := proto.Unmarshal(data, f.template); err != nil {
		return nil, err
	}
	for i := range cfg.Vehicles {
		f.vehicles = append(f.vehicles, &vehicle{id: fmt.Sprintf("%s%04d", cfg.Prefix, i+1), conn: i % cfg.Connections, next: 1,
			sent: map[uint64]time.Time{}, pubs: map[uint64]int{}})
		f.byID[f.vehicles[i].id] = f.vehicles[i]
	}
	for c := range cfg.Connections {
		var subs []mqttlite.Subscription
		for _, v := range f.vehicles {
			if v.conn == c {
				subs = append(subs, mqttlite.Subscription{Filter: topics.Ack(v.id), QoS: 1})
			}
		}
		conn, err := mqttlite.New(mqttlite.Config{URL: cfg.URL, ClientID: fmt.Sprintf("%ssim-%d", cfg.Prefix, c), CleanSession: true,
			Subscriptions: subs, OnMessage: f.onAck}, mqttlite.Deps{})
		if err != nil {
			return nil, err
		}
		f.conns = append(f.conns, conn)
		f.windows = append(f.windows, make(chan struct{}, cfg.Window))
	}
	return f, nil
}

// Payload is the batch (vehicle, seq) as the fleet publishes it.
func (f *Fleet) Payload(vehicle string, seq uint64) ([]byte, error) {
	env := proto.Clone(f.template).(*pb.Batch)
	env.VehicleId, env.Seq = vehicle, seq
	return wire.Seal(env)
}

// VehicleIDs lists the fleet's vehicles.
func (f *Fleet) VehicleIDs() []string {
	out := make([]string, len(f.vehicles))
	for i, v := range f.vehicles {
		out[i] = v.id
	}
	return out
}

func (f *Fleet) onAck(m *mqttlite.Message) {
	defer m.Ack()
	ack := &pb.Ack{}
	if err := proto.Unmarshal(m.Payload, ack); err != nil {
		return
	}
	if v := f.byID[ack.GetVehicleId()]; v != nil {
		v.mu.Lock()
		for _, r := range ack.GetRanges() {
			if r.GetEpoch() != f.cfg.Epoch {
				continue
			}
			for s := r.GetFirst(); s <= r.GetLast() && s < v.next; s++ {
				if _, ok := v.sent[s]; ok {
					delete(v.sent, s)
					f.acked.Add(1)
				}
			}
		}
		v.mu.Unlock()
	}
}

// Run connects and publishes until every batch is acked (nil) or ctx
// ends (its error).
func (f *Fleet) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, c := range f.conns {
		wg.Go(func() { _ = c.Run(ctx) })
	}
	defer func() { cancel(); wg.Wait() }()
	total := int64(f.cfg.Vehicles * f.cfg.Batches)
	tick := time.NewTicker(max(f.cfg.Interval, time.Millisecond))
	defer tick.Stop()
	for f.acked.Load() < total {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		now := time.Now()
		for _, v := range f.vehicles {
			f.step(ctx, v, now)
		}
	}
	return nil
}

// step publishes the vehicle's next new batch, and re-sends its overdue
// ones.
func (f *Fleet) step(ctx context.Context, v *vehicle, now time.Time) {
	v.mu.Lock()
	var due []uint64
	for s, at := range v.sent {
		if f.cfg.ResendAfter > 0 && now.Sub(at) >= f.cfg.ResendAfter {
			due = append(due, s)
		}
	}
	if f.cfg.ResendAfter == 0 {
		clear(v.sent) // nothing to re-send: keep no record
	}
	if v.next <= uint64(f.cfg.Batches) {
		due = append(due, v.next)
		v.next++
	}
	for _, s := range due {
		v.sent[s] = now // before publishing: an ack may come back at once
	}
	v.mu.Unlock()
	for _, s := range due {
		payload, err := f.Payload(v.id, s)
		if err != nil {
			continue
		}
		win := f.windows[v.conn]
		select {
		case win <- struct{}{}:
		case <-ctx.Done():
			return
		}
		err = f.conns[v.conn].Publish(topics.Telemetry(v.id), 1, payload, func(error) { <-win })
		if err != nil {
			<-win
			continue // not connected: re-sent after ResendAfter
		}
		if f.cfg.ResendAfter > 0 {
			v.mu.Lock()
			v.pubs[s]++
			if v.pubs[s] > 1 {
				f.resent.Add(1)
			}
			v.mu.Unlock()
		}
		f.published.Add(1)
	}
}

// Stats are the fleet's counts so far: batches published (re-sends
// included), re-sends, and batches acked.
type Stats struct{ Published, Resent, Acked int64 }

// Stats returns the counts so far.
func (f *Fleet) Stats() Stats {
	return Stats{Published: f.published.Load(), Resent: f.resent.Load(), Acked: f.acked.Load()}
}

// Publishes is how often the fleet published each batch.
func (f *Fleet) Publishes() map[wire.Identity]int {
	out := map[wire.Identity]int{}
	for _, v := range f.vehicles {
		v.mu.Lock()
		for s, n := range v.pubs {
			out[wire.Identity{VehicleID: v.id, Epoch: f.cfg.Epoch, Seq: s}] = n
		}
		v.mu.Unlock()
	}
	return out
}
