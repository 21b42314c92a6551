// Package uplink publishes one vehicle's spooled batches over MQTT and frees
// each from the spool only when the cloud's end-to-end ack says Kafka holds
// it.
//
// A batch is published with QoS 1 to fleet/v1/{vehicle_id}/telemetry. The
// broker's PUBACK frees nothing: only an Ack on fleet/v1/{vehicle_id}/ack
// covering the batch's (epoch, seq) does, and then the spool drops it.
// A published batch not acked within AckTimeout is published again.
//
// Live first: a batch handed to Live goes out at once (after a reconnect,
// the newest ones first), so the cloud's live map is current within a
// batch of reconnecting. Everything else still in the spool — the backlog
// of an outage, or of a reboot — drains behind at BacklogRate batches per
// second, with at most MaxInflight batches awaiting their ack: first the
// windows of high-priority capture rules (the spool's capture class), then
// the rest, each oldest first. Duplicates that re-sending creates are dropped
// downstream by batch identity.
//
// The connection is kept up with jittered exponential backoff between
// attempts; the vehicle's retained status topic says "online" while
// connected and its will says "offline".
//
// Catalog: when the vehicle has a signal catalog (its DBC's signals), the
// uplink publishes it on fleet/v1/{vehicle_id}/catalog after connecting,
// again every AckTimeout until an Ack lists its id, and
// CatalogRegistered reports true from then on: batches encoded after that
// may refer to it instead of naming their signals.
//
// Live, Pending, WaitAcked, Connected and CatalogRegistered are safe for
// concurrent use; Run runs once.
package uplink

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// Store is the spool the uplink sends from and frees.
type Store interface {
	Epoch() uint64
	Get(seq uint64) (spool.Record, error)
	Pending(from uint64, classes ...spool.Class) iter.Seq2[spool.Record, error]
	AckRange(first, last uint64) (int, error)
	Stats() spool.Stats
}

// Config configures one vehicle's uplink.
type Config struct {
	VehicleID    string
	AgentVersion string
	MQTT         mqttconn.Config // ClientID is used as given
	// AckTimeout is how long a published batch waits for its end-to-end
	// ack before it is published again (default 10s).
	AckTimeout time.Duration
	// MaxInflight bounds the batches published and not yet acked (default 64).
	MaxInflight int
	// BacklogRate is how many backlog batches per second are published
	// (default 20); live batches do not count against it.
	BacklogRate float64
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff
	// between connection attempts (defaults 1s and 60s).
	ReconnectMin, ReconnectMax time.Duration
	// Catalog, if set, is the serialized signal catalog to register, and
	// CatalogID its id (wire.Catalog's Bytes and ID).
	Catalog, CatalogID []byte
}

func (c *Config) defaults() {
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 64
	}
	if c.BacklogRate <= 0 {
		c.BacklogRate = 20
	}
	if c.ReconnectMin <= 0 {
		c.ReconnectMin = time.Second
	}
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = max(60*time.Second, c.ReconnectMin)
	}
}

// Deps are the uplink's dependencies.
type Deps struct {
	Logger  *slog.Logger
	Metrics *Metrics // shared by all vehicles of a process; may be nil
}

// liveQueueLen bounds the batches remembered for live sending while
// disconnected; older ones are sent as backlog.
const liveQueueLen = 8

type inflight struct {
	sentAt time.Time
	conn   uint64
}

// Uplink is one vehicle's MQTT connection.
type Uplink struct {
	cfg    Config
	logger *slog.Logger
	m      *Metrics
	store  Store
	client mqtt.Client

	live   chan uint64
	acks   chan *pb.Ack
	events chan bool     // connected (true) or lost (false), for Run
	lost   chan struct{} // connection lost, for keepConnected
	done   chan struct{} // closed when Run returns: paho's handlers must not block after it

	// Owned by Run's goroutine.
	conn     uint64 // counts connections
	up       bool
	inflight map[uint64]inflight
	liveQ    []uint64 // newest last
	// cursors are, per backlog lane (capture windows, then the rest), the
	// next seq to consider.
	cursors  [len(backlogLanes)]uint64
	tokens   float64
	lastTick time.Time
	// idle is set when a whole backlog scan found nothing to send; the spool
	// is not read again until something can have changed that: a
	// reconnect, an expired in-flight batch, a live batch that did not go
	// out as live.
	idle bool

	catalogSentAt time.Time // owned by Run; zero: not sent on this connection

	// losses counts connection losses; lossesAtConnect is its value when
	// the current connection attempt began (both under genMu).
	genMu                   sync.Mutex
	losses, lossesAtConnect uint64

	connected  atomic.Bool
	registered atomic.Bool // the cloud acked the catalog
	missed     atomic.Bool // Live could not queue a batch: it is backlog now
	mu         sync.Mutex
	changed    chan struct{} // closed and replaced whenever acks free batches
}

// New builds the uplink over store; Run connects it.
func New(cfg Config, store Store, deps Deps) (*Uplink, error) {
	cfg.defaults()
	u := &Uplink{
		cfg: cfg, logger: deps.Logger.With("vehicle", cfg.VehicleID), m: deps.Metrics, store: store,
		live: make(chan uint64, 256), acks: make(chan *pb.Ack, 64), events: make(chan bool, 4), lost: make(chan struct{}, 1), done: make(chan struct{}),
		inflight: map[uint64]inflight{}, changed: make(chan struct{}),
	}
	opts, err := cfg.MQTT.ClientOptions()
	if err != nil {
		return nil, err
	}
	offline, err := statusPayload(cfg, false)
	if err != nil {
		return nil, err
	}
	// The uplink reconnects itself, with jitter, so a fleet that lost its
	// broker does not come back in lockstep.
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	opts.SetBinaryWill(topics.Status(cfg.VehicleID), offline, 1, true)
	opts.SetOnConnectHandler(u.onConnect)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) { u.onLost(err) })
	u.client = mqtt.NewClient(opts)
	return u, nil
}

func statusPayload(cfg Config, online bool) ([]byte, error) {
	return proto.Marshal(&pb.Status{VehicleId: cfg.VehicleID, Online: online, AgentVersion: cfg.AgentVersion, TimeUnixNano: time.Now().UnixNano()})
}

// Live hands over a batch just appended to the spool, to be published now.
// It never blocks on the network.
func (u *Uplink) Live(seq uint64) {
	select {
	case u.live <- seq:
	default:
		// Run is behind; the batch is in the spool and goes as backlog.
		u.missed.Store(true)
	}
}

// Connected reports whether the uplink is connected to the broker (and has
// subscribed to its acks).
func (u *Uplink) Connected() bool { return u.connected.Load() }

// CatalogRegistered reports whether the cloud has acked Config.Catalog.
func (u *Uplink) CatalogRegistered() bool { return u.registered.Load() }

// Pending is the number of spooled batches not yet acked.
func (u *Uplink) Pending() int { return u.store.Stats().Records }

// WaitAcked returns once the spool holds no unacked batch, or with an error
// naming how many remain when ctx ends first.
func (u *Uplink) WaitAcked(ctx context.Context) error {
	for {
		u.mu.Lock()
		ch := u.changed
		u.mu.Unlock()
		n := u.Pending()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d batches still unacknowledged: %w", u.cfg.VehicleID, n, ctx.Err())
		case <-ch:
		case <-time.After(time.Second): // records dropped by the spool do not signal
		}
	}
}

// Run keeps the connection up and publishes until ctx is cancelled, then
// marks the vehicle offline and disconnects. Unacked batches stay in the
// spool for the next Run.
func (u *Uplink) Run(ctx context.Context) error {
	connCtx, stopConnecting := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); u.keepConnected(connCtx) }()
	defer func() {
		close(u.done) // nobody reads events or acks any more
		stopConnecting()
		wg.Wait()
		if u.client.IsConnectionOpen() {
			if p, err := statusPayload(u.cfg, false); err == nil {
				u.client.Publish(topics.Status(u.cfg.VehicleID), 1, true, p).WaitTimeout(time.Second)
			}
		}
		u.client.Disconnect(250)
	}()

	// Few wakeups: the board sleeps more. The loop sleeps until something
	// needs it: a live batch, an ack, a connection event, the earliest
	// in-flight batch's ack timeout, or — only while backlog batches or
	// held-back live ones wait to go — the next pacing tick. Connected and
	// keeping up, it wakes for its own traffic alone.
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer wake.Stop()
	var wakeAt time.Time // zero while the timer is stopped
	u.lastTick = time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case seq := <-u.live:
			u.liveQ = append(u.liveQ, seq)
			if len(u.liveQ) > liveQueueLen {
				u.liveQ = u.liveQ[len(u.liveQ)-liveQueueLen:]
				u.idle = false // the ones pushed out are backlog now
			}
			if u.missed.Swap(false) {
				u.idle = false
			}
			u.sendLive()
		case ack := <-u.acks:
			u.applyAck(ack)
		case up := <-u.events:
			u.up = up
			if up {
				u.conn++
				u.cursors = [len(backlogLanes)]uint64{}
				u.idle = false
				u.catalogSentAt = time.Time{}
				u.sendCatalog(time.Now())
				u.sendLive()
			}
		case now := <-wake.C:
			wakeAt = time.Time{}
			if u.missed.Swap(false) {
				u.idle = false
			}
			u.expire(now)
			u.sendCatalog(now)
			u.sendLive()
			u.sendBacklog(now)
		}
		if next := u.nextWake(); !next.Equal(wakeAt) {
			if next.IsZero() {
				wake.Stop()
			} else {
				wake.Reset(time.Until(next))
			}
			wakeAt = next
		}
	}
}

// pacePeriod is the backlog's pacing tick: coarse, as the backlog rate is
// applied on elapsed time and a coarse tick only makes its bursts larger.
func (u *Uplink) pacePeriod() time.Duration {
	return min(max(u.cfg.AckTimeout/8, 10*time.Millisecond), 500*time.Millisecond)
}

// nextWake is when Run has work without an event: the earliest ack
// timeout of a batch in flight, the re-send of an unacked catalog and,
// while connected with backlog or held-back live batches, the next pacing
// tick. Zero means never.
func (u *Uplink) nextWake() time.Time {
	var next time.Time
	for _, f := range u.inflight {
		if t := f.sentAt.Add(u.cfg.AckTimeout); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if u.up && (!u.idle || len(u.liveQ) > 0) {
		if t := u.lastTick.Add(u.pacePeriod()); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if u.up && u.cfg.Catalog != nil && !u.registered.Load() && !u.catalogSentAt.IsZero() {
		if t := u.catalogSentAt.Add(u.cfg.AckTimeout); next.IsZero() || t.Before(next) {
			next = t // the catalog's re-send
		}
	}
	return next
}

// keepConnected connects, and reconnects after a loss, with jittered
// exponential backoff. It goes by the uplink's own connected flag (set by
// the on-connect handler, cleared by the lost handler), and looks again on
// each lost event and, while not connected, every 250 ms.
func (u *Uplink) keepConnected(ctx context.Context) {
	backoff := u.cfg.ReconnectMin
	for ctx.Err() == nil {
		if !u.connected.Load() && !u.client.IsConnectionOpen() {
			u.genMu.Lock()
			u.lossesAtConnect = u.losses // a loss of this connection counts past it
			u.genMu.Unlock()
			t := u.client.Connect()
			select {
			case <-t.Done():
			case <-ctx.Done():
				return // Run disconnects, which ends the attempt
			}
			if err := t.Error(); err != nil {
				if u.m != nil {
					u.m.reconnects.Inc()
				}
				wait := time.Duration(float64(backoff) * (0.5 + rand.Float64()))
				u.logger.Debug("mqtt connect failed; retrying", "err", err, "in", wait)
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				backoff = min(backoff*2, u.cfg.ReconnectMax)
				continue
			}
			backoff = u.cfg.ReconnectMin
		}
		// While connected only a loss or the end can change anything. A
		// loss may find paho still calling the dead connection open, so
		// until the uplink is connected again it looks every 250 ms.
		var retry <-chan time.Time
		if !u.connected.Load() {
			retry = time.After(250 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-u.lost:
		case <-retry:
		}
	}
}

// onConnect sets the connection up (the ack subscription, the online
// status) and only then calls the uplink connected, unless the connection
// was lost meanwhile: paho runs this handler on its own goroutine, and a
// loss during the subscription would otherwise leave the flag saying
// connected for good, and the uplink never reconnecting.
func (u *Uplink) onConnect(c mqtt.Client) {
	if t := c.Subscribe(topics.Ack(u.cfg.VehicleID), 1, u.onAck); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		u.logger.Error("subscribe to acks failed", "err", t.Error())
	}
	if p, err := statusPayload(u.cfg, true); err == nil {
		c.Publish(topics.Status(u.cfg.VehicleID), 1, true, p)
	}
	u.genMu.Lock()
	live := u.losses == u.lossesAtConnect
	if live {
		u.connected.Store(true)
	}
	u.genMu.Unlock()
	if !live {
		u.logger.Warn("mqtt connection lost while setting it up; reconnecting")
		return
	}
	u.notify(true)
}

// onLost is paho's connection-lost handler.
func (u *Uplink) onLost(err error) {
	u.genMu.Lock()
	u.losses++
	u.connected.Store(false)
	u.genMu.Unlock()
	u.logger.Warn("mqtt connection lost", "err", err)
	u.notify(false)
	select {
	case u.lost <- struct{}{}:
	default:
	}
}

// notify tells Run about the connection, or nothing once Run has returned
// (paho calls its handlers from its own goroutines, even during Disconnect).
func (u *Uplink) notify(up bool) {
	select {
	case u.events <- up:
	case <-u.done:
	}
}

// MaxAckBytes bounds an ack's payload. An ack lists merged ranges of
// seqs (about 20 bytes each) and catalog ids: a few hundred bytes in
// practice; anything near this limit is not from the bridge.
const MaxAckBytes = 64 << 10

// decodeAck parses an ack for vehicle from bytes off the network: the size
// is checked before parsing, and the ack must name the vehicle. Ranges
// whose last seq precedes their first and catalog ids of the wrong length
// are left out: they can free nothing.
func decodeAck(payload []byte, vehicle string) (*pb.Ack, error) {
	if len(payload) > MaxAckBytes {
		return nil, fmt.Errorf("ack of %d bytes, limit %d", len(payload), MaxAckBytes)
	}
	ack := &pb.Ack{}
	if err := proto.Unmarshal(payload, ack); err != nil {
		return nil, fmt.Errorf("ack: %w", err)
	}
	if ack.GetVehicleId() != vehicle {
		return nil, fmt.Errorf("ack for vehicle %.64q, not %s", ack.GetVehicleId(), vehicle)
	}
	ack.Ranges = slices.DeleteFunc(ack.Ranges, func(r *pb.SeqRange) bool { return r.GetLast() < r.GetFirst() })
	ack.Catalogs = slices.DeleteFunc(ack.Catalogs, func(id []byte) bool { return len(id) != wire.CatalogIDLen })
	return ack, nil
}

func (u *Uplink) onAck(_ mqtt.Client, msg mqtt.Message) {
	ack, err := decodeAck(msg.Payload(), u.cfg.VehicleID)
	if err != nil {
		u.logger.Warn("ignoring malformed ack", "err", err)
		return
	}
	select {
	case u.acks <- ack:
	case <-u.done: // the ack is lost; the batch stays spooled and is re-sent
	}
}

// sendCatalog publishes the catalog if it is not registered yet and was not
// sent within AckTimeout on this connection.
func (u *Uplink) sendCatalog(now time.Time) {
	if u.cfg.Catalog == nil || u.registered.Load() || !u.up || !u.connected.Load() ||
		(!u.catalogSentAt.IsZero() && now.Sub(u.catalogSentAt) < u.cfg.AckTimeout) {
		return
	}
	u.catalogSentAt = now
	u.client.Publish(topics.Catalog(u.cfg.VehicleID), 1, false, u.cfg.Catalog)
	u.logger.Debug("catalog published", "catalog", fmt.Sprintf("%x", u.cfg.CatalogID), "bytes", len(u.cfg.Catalog))
}

func (u *Uplink) applyAck(ack *pb.Ack) {
	for _, id := range ack.GetCatalogs() {
		if u.cfg.CatalogID != nil && bytes.Equal(id, u.cfg.CatalogID) && !u.registered.Swap(true) {
			u.logger.Info("catalog registered; batches refer to it from now on", "catalog", fmt.Sprintf("%x", id))
		}
	}
	epoch := u.store.Epoch()
	freed := 0
	for _, r := range ack.GetRanges() {
		if r.GetEpoch() != epoch {
			continue // an older spool's batches: nothing here to free
		}
		n, err := u.store.AckRange(r.GetFirst(), r.GetLast())
		if err != nil {
			u.logger.Error("spool ack failed", "err", err)
			continue
		}
		freed += n
		for s := range u.inflight {
			if s >= r.GetFirst() && s <= r.GetLast() {
				delete(u.inflight, s)
			}
		}
	}
	if freed > 0 {
		if u.m != nil {
			u.m.batches.WithLabelValues("acked").Add(float64(freed))
		}
		u.mu.Lock()
		close(u.changed)
		u.changed = make(chan struct{})
		u.mu.Unlock()
	}
}

// sendLive publishes the queued live batches, newest first.
func (u *Uplink) sendLive() {
	if !u.up || !u.connected.Load() {
		return
	}
	for len(u.liveQ) > 0 && len(u.inflight) < 2*u.cfg.MaxInflight {
		seq := u.liveQ[len(u.liveQ)-1]
		u.liveQ = u.liveQ[:len(u.liveQ)-1]
		if _, ok := u.inflight[seq]; ok {
			continue
		}
		rec, err := u.store.Get(seq)
		if err != nil {
			continue // acked or dropped meanwhile
		}
		u.publish(rec, "live")
	}
}

// backlogLanes are the spool classes the backlog drains, lane by lane:
// the windows of high-priority capture rules first, then everything else
// (fixes and events, signals, normal-priority windows), oldest first.
var backlogLanes = [...][]spool.Class{{spool.Capture}, {spool.High, spool.Bulk}}

// sendBacklog publishes the oldest unacked batches not in flight, capture
// windows first, within the backlog rate and the in-flight bound.
func (u *Uplink) sendBacklog(now time.Time) {
	u.tokens = min(u.tokens+now.Sub(u.lastTick).Seconds()*u.cfg.BacklogRate, max(u.cfg.BacklogRate, 1))
	u.lastTick = now
	if !u.up || !u.connected.Load() || u.idle {
		return
	}
	for lane := range backlogLanes {
		if !u.sendLane(lane) {
			return // out of tokens or room in flight
		}
	}
	u.idle = true // a whole pass over every lane found nothing to send
}

// sendLane publishes the lane's oldest batches not in flight while tokens
// and room in flight last, wrapping once to the lane's start (expired
// batches go again). It reports whether the lane has nothing more to
// send, so the next lane may go.
func (u *Uplink) sendLane(lane int) bool {
	wrapped := false
	for {
		if u.tokens < 1 || len(u.inflight) >= u.cfg.MaxInflight {
			return false
		}
		sent := false
		for rec, err := range u.store.Pending(u.cursors[lane], backlogLanes[lane]...) {
			if err != nil {
				continue
			}
			u.cursors[lane] = rec.Seq + 1
			if _, ok := u.inflight[rec.Seq]; ok {
				continue
			}
			u.publish(rec, "backlog")
			u.tokens--
			sent = true
			break
		}
		if !sent {
			if wrapped || u.cursors[lane] == 0 {
				u.cursors[lane] = 0
				return true
			}
			u.cursors[lane], wrapped = 0, true // start over: expired batches go again
		}
	}
}

func (u *Uplink) expire(now time.Time) {
	for seq, f := range u.inflight {
		if now.Sub(f.sentAt) >= u.cfg.AckTimeout || f.conn != u.conn {
			delete(u.inflight, seq)
			u.idle = false
		}
	}
}

// publish sends one batch; path says why ("live" or "backlog").
func (u *Uplink) publish(rec spool.Record, path string) {
	u.inflight[rec.Seq] = inflight{sentAt: time.Now(), conn: u.conn}
	start := time.Now()
	t := u.client.Publish(topics.Telemetry(u.cfg.VehicleID), 1, false, rec.Payload)
	if u.m == nil {
		return
	}
	u.m.batches.WithLabelValues("sent_" + path).Inc()
	u.m.bytes.Add(float64(len(rec.Payload)))
	go func() {
		if t.WaitTimeout(u.cfg.AckTimeout) && t.Error() == nil {
			u.m.publishSeconds.Observe(time.Since(start).Seconds())
		}
	}()
}
