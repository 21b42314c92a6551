// Package uplink publishes one vehicle's batches over MQTT and keeps each
// until the cloud's end-to-end ack says Kafka holds it.
//
// A batch is published with QoS 1 to fleet/v1/{vehicle_id}/telemetry. The
// broker's PUBACK frees nothing: only an Ack on fleet/v1/{vehicle_id}/ack
// that covers the batch's (epoch, seq) does. Batches not acked within
// AckTimeout are published again; duplicates are dropped downstream by
// batch identity. The vehicle's retained status topic says "online" while
// connected, and its will says "offline".
//
// Send, Pending and WaitAcked are safe for concurrent use.
package uplink

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// Config configures one vehicle's uplink.
type Config struct {
	VehicleID    string
	AgentVersion string
	MQTT         mqttconn.Config // ClientID is used as given
	// AckTimeout is how long a published batch waits for its end-to-end
	// ack before it is published again.
	AckTimeout time.Duration
	// ResendPerTick bounds how many overdue batches are re-published per
	// check (a quarter of AckTimeout), so a backlog drains at a bounded rate.
	ResendPerTick int
	// OnAcked, if set, is called with each batch freed by an ack.
	OnAcked func(wire.Identity)
}

// Deps are the uplink's dependencies.
type Deps struct {
	Logger  *slog.Logger
	Metrics *Metrics // shared by all vehicles of a process; may be nil
}

type pending struct {
	id       wire.Identity
	payload  []byte
	sentAt   time.Time // zero: never published
	sentConn uint64    // the connection it was last published on
	attempts int
}

type key struct{ epoch, seq uint64 }

// Uplink is one vehicle's MQTT connection.
type Uplink struct {
	cfg    Config
	logger *slog.Logger
	m      *Metrics
	client mqtt.Client

	mu      sync.Mutex
	conn    uint64 // counts connections; a batch sent on an older one is re-sent
	ready   bool   // onConnect has run for the current connection
	pending map[key]*pending
	changed chan struct{} // closed and replaced when pending shrinks
	kick    chan struct{} // asks the resend loop to run now
}

// New builds the uplink; Run connects it.
func New(cfg Config, deps Deps) (*Uplink, error) {
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 10 * time.Second
	}
	if cfg.ResendPerTick <= 0 {
		cfg.ResendPerTick = 100
	}
	u := &Uplink{
		cfg: cfg, logger: deps.Logger.With("vehicle", cfg.VehicleID), m: deps.Metrics,
		pending: map[key]*pending{}, changed: make(chan struct{}), kick: make(chan struct{}, 1),
	}
	opts, err := cfg.MQTT.ClientOptions()
	if err != nil {
		return nil, err
	}
	offline, err := statusPayload(cfg, false)
	if err != nil {
		return nil, err
	}
	opts.SetBinaryWill(topics.Status(cfg.VehicleID), offline, 1, true)
	opts.SetOnConnectHandler(u.onConnect)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		u.mu.Lock()
		u.ready = false
		u.mu.Unlock()
		u.logger.Warn("mqtt connection lost", "err", err)
	})
	opts.SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) {
		if u.m != nil {
			u.m.reconnects.Inc()
		}
	})
	u.client = mqtt.NewClient(opts)
	return u, nil
}

func statusPayload(cfg Config, online bool) ([]byte, error) {
	return proto.Marshal(&pb.Status{VehicleId: cfg.VehicleID, Online: online, AgentVersion: cfg.AgentVersion, TimeUnixNano: time.Now().UnixNano()})
}

// Run connects and re-publishes overdue batches until ctx is cancelled,
// then marks the vehicle offline and disconnects. Batches still pending
// stay pending (a later Run, or the spool, owns them).
func (u *Uplink) Run(ctx context.Context) error {
	u.client.Connect() // retries in the background
	t := time.NewTicker(max(u.cfg.AckTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if u.client.IsConnectionOpen() {
				if p, err := statusPayload(u.cfg, false); err == nil {
					u.client.Publish(topics.Status(u.cfg.VehicleID), 1, true, p).WaitTimeout(time.Second)
				}
			}
			u.client.Disconnect(250)
			return nil
		case <-t.C:
		case <-u.kick:
		}
		u.resendOverdue()
	}
}

func (u *Uplink) onConnect(c mqtt.Client) {
	if t := c.Subscribe(topics.Ack(u.cfg.VehicleID), 1, u.onAck); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		u.logger.Error("subscribe to acks failed", "err", t.Error())
	}
	if p, err := statusPayload(u.cfg, true); err == nil {
		c.Publish(topics.Status(u.cfg.VehicleID), 1, true, p)
	}
	// Whatever was published on an earlier connection may be lost: send it
	// again now rather than after the timeout.
	u.mu.Lock()
	u.conn++
	u.ready = true
	for _, p := range u.pending {
		if p.sentConn < u.conn {
			p.sentAt = time.Time{}
		}
	}
	u.mu.Unlock()
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

// Send publishes a batch and keeps it until acked. It never blocks on the
// network; while disconnected the batch waits for the connection.
func (u *Uplink) Send(id wire.Identity, payload []byte) {
	p := &pending{id: id, payload: payload}
	u.mu.Lock()
	u.pending[key{id.Epoch, id.Seq}] = p
	u.mu.Unlock()
	if u.m != nil {
		u.m.pending.Add(1)
		u.m.batches.WithLabelValues("queued").Inc()
	}
	if u.connected() {
		u.publish(p)
	}
}

// connected reports whether batches may be published now: the connection
// is open and onConnect has run for it. Publishing earlier races with
// paho's resume of its store on connect, which re-sends (and, racily,
// marks DUP) a publish made at that moment (eclipse/paho.mqtt.golang#703).
func (u *Uplink) connected() bool {
	u.mu.Lock()
	ready := u.ready
	u.mu.Unlock()
	return ready && u.client.IsConnectionOpen()
}

func (u *Uplink) publish(p *pending) {
	u.mu.Lock()
	p.sentAt = time.Now()
	p.sentConn = u.conn
	p.attempts++
	attempts := p.attempts
	u.mu.Unlock()
	start := time.Now()
	t := u.client.Publish(topics.Telemetry(u.cfg.VehicleID), 1, false, p.payload)
	if u.m != nil {
		if attempts > 1 {
			u.m.batches.WithLabelValues("resent").Inc()
		} else {
			u.m.batches.WithLabelValues("sent").Inc()
		}
		u.m.bytes.Add(float64(len(p.payload)))
		go func() {
			if t.WaitTimeout(u.cfg.AckTimeout) && t.Error() == nil {
				u.m.publishSeconds.Observe(time.Since(start).Seconds())
			}
		}()
	}
}

func (u *Uplink) resendOverdue() {
	if !u.connected() {
		return
	}
	now := time.Now()
	u.mu.Lock()
	var due []*pending
	for _, p := range u.pending {
		if p.sentAt.IsZero() || now.Sub(p.sentAt) >= u.cfg.AckTimeout {
			due = append(due, p)
		}
	}
	u.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].id.Seq < due[j].id.Seq })
	if len(due) > u.cfg.ResendPerTick {
		due = due[:u.cfg.ResendPerTick]
	}
	for _, p := range due {
		u.publish(p)
	}
}

func (u *Uplink) onAck(_ mqtt.Client, msg mqtt.Message) {
	ack := &pb.Ack{}
	if err := proto.Unmarshal(msg.Payload(), ack); err != nil || ack.GetVehicleId() != u.cfg.VehicleID {
		u.logger.Warn("ignoring malformed ack", "err", err, "vehicle_id", ack.GetVehicleId())
		return
	}
	var freed []wire.Identity
	u.mu.Lock()
	for _, r := range ack.GetRanges() {
		if r.GetLast() < r.GetFirst() || r.GetLast()-r.GetFirst() > 1<<20 {
			continue
		}
		for s := r.GetFirst(); ; s++ {
			if p, ok := u.pending[key{r.GetEpoch(), s}]; ok {
				delete(u.pending, key{r.GetEpoch(), s})
				freed = append(freed, p.id)
			}
			if s == r.GetLast() {
				break
			}
		}
	}
	if len(freed) > 0 {
		close(u.changed)
		u.changed = make(chan struct{})
	}
	u.mu.Unlock()
	if u.m != nil {
		u.m.pending.Sub(float64(len(freed)))
		u.m.batches.WithLabelValues("acked").Add(float64(len(freed)))
	}
	if u.cfg.OnAcked != nil {
		for _, id := range freed {
			u.cfg.OnAcked(id)
		}
	}
}

// Pending is the number of batches not yet acked.
func (u *Uplink) Pending() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.pending)
}

// WaitAcked returns when every batch sent so far is acked, or with an error
// when ctx ends first.
func (u *Uplink) WaitAcked(ctx context.Context) error {
	for {
		u.mu.Lock()
		n, ch := len(u.pending), u.changed
		u.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d batches still unacknowledged: %w", u.cfg.VehicleID, n, ctx.Err())
		case <-ch:
		}
	}
}
