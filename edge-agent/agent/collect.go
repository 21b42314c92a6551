package agent

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/edge-agent/batcher"
	"github.com/fleetpipe/fleetpipe/edge-agent/capture"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// collector batches one vehicle's items and spools each closed batch. It
// is used from one goroutine.
type collector struct {
	a          *Agent
	v          *vehicle
	b          *batcher.Batcher
	live       bool           // the sources read now: batches also close on the wall clock
	high, bulk []wire.Reading // reused between batches

	capture *capture.Engine       // nil without capture rules
	reloads <-chan capture.Config // capture rules to put in force

	readings, fixes prometheus.Counter
}

func (a *Agent) batcherConfig() batcher.Config {
	return batcher.Config{MaxAge: a.cfg.BatchMaxAge, MaxReadings: a.cfg.BatchMaxReadings}
}

func (a *Agent) newCollector(v *vehicle, live bool) (*collector, error) {
	c := &collector{a: a, v: v, live: live, b: batcher.New(a.batcherConfig()),
		readings: a.m.readings.WithLabelValues("reading"), fixes: a.m.readings.WithLabelValues("fix")}
	return c, c.newCaptureEngine()
}

// add batches what a source emitted and hands it to the capture rules. A
// batch closes before items that would stretch it to MaxAge of their own
// clock, when the source's clock (it.Clock) says it is that old, when it
// is full, and, for live sources, MaxAge after its first item arrived.
func (c *collector) add(it source.Items) error {
	rs, fixes := it.Readings, it.Fixes
	var now int64
	if c.live {
		now = time.Now().UnixNano()
	}
	if c.capture != nil {
		if err := c.capture.Add(it, now); err != nil {
			return err
		}
	}
	if len(rs) == 0 && len(fixes) == 0 {
		return nil
	}
	c.readings.Add(float64(len(rs)))
	c.fixes.Add(float64(len(fixes)))
	if !c.b.Fits(rs, fixes) {
		if err := c.flush(); err != nil {
			return err
		}
	}
	c.b.Add(now, rs, fixes...)
	if c.b.Full() || (it.Clock != 0 && c.b.DueAt(it.Clock)) || (c.live && c.b.Expired(now)) {
		return c.flush()
	}
	return nil
}

// expire closes, on the wall clock, a live source's batch MaxAge after its
// first item arrived, and the capture windows and parts that are due.
func (c *collector) expire(now time.Time) error {
	if !c.live {
		return nil
	}
	if c.capture != nil {
		if err := c.capture.Expire(now.UnixNano()); err != nil {
			return err
		}
	}
	if c.b.Expired(now.UnixNano()) {
		return c.flush()
	}
	return nil
}

// nextExpiry is the earliest wall time expire has work at.
func (c *collector) nextExpiry() (int64, bool) {
	at, ok := c.b.ExpiresAt()
	if c.capture != nil {
		if t, open := c.capture.NextExpiry(); open && (!ok || t < at) {
			at, ok = t, true
		}
	}
	return at, ok
}

// reload puts new capture rules in force.
func (c *collector) reload(cfg capture.Config) {
	if err := c.capture.Reload(cfg); err != nil {
		c.a.logger.Error("capture rules not reloaded on this vehicle", "vehicle", c.v.id, "err", err)
	}
}

// finish spools what is left: the open batch and every open window.
func (c *collector) finish() error {
	err := c.flush()
	if c.capture != nil {
		err = errors.Join(err, c.capture.Close())
	}
	return err
}

// mixedBacklog is how many unacked batches the spool may hold for a flush
// to still be one batch.
const mixedBacklog = 16

// flush spools what the batcher holds.
//
// While the link is up and the spool holds no backlog, that is one batch,
// high class if it has fixes or priority signals: one append, one fsync,
// one publish and one ack a flush. Otherwise (an outage is filling the
// spool, and a full spool drops bulk before high) the fixes and priority
// signals go in a high-class batch and the rest in a bulk one, so that the
// high-rate signals are dropped first. A batch spooled whole just before an
// outage keeps its readings as long as its fixes.
func (c *collector) flush() error {
	rs, fixes, _, ok := c.b.Take()
	if !ok {
		return nil
	}
	defer c.b.Recycle(rs, fixes) // wire.Encode keeps no reference
	if c.v.linkUp() && c.v.spool.Records() <= mixedBacklog {
		class := spool.Bulk
		if len(fixes) > 0 || slices.ContainsFunc(rs, c.priority) {
			class = spool.High
		}
		_, err := c.spool(rs, fixes, class, nil)
		return err
	}
	high, bulk := c.high[:0], c.bulk[:0]
	for _, r := range rs {
		if c.priority(r) {
			high = append(high, r)
		} else {
			bulk = append(bulk, r)
		}
	}
	defer func() { clear(high); clear(bulk); c.high, c.bulk = high[:0], bulk[:0] }()
	if len(high) > 0 || len(fixes) > 0 {
		if _, err := c.spool(high, fixes, spool.High, nil); err != nil {
			return err
		}
	}
	if len(bulk) > 0 {
		_, err := c.spool(bulk, nil, spool.Bulk, nil)
		return err
	}
	return nil
}

// priority reports whether r is of a priority signal (--priority-signals).
func (c *collector) priority(r wire.Reading) bool {
	return slices.Contains(c.a.cfg.PrioritySignals, r.Signal)
}

// earliest is the time of the first item, the base time of a batch.
func earliest(rs []wire.Reading, fixes []wire.Fix) int64 {
	var t int64
	first := true
	for _, r := range rs {
		if first || r.Time < t {
			t, first = r.Time, false
		}
	}
	for _, f := range fixes {
		if first || f.Time < t {
			t, first = f.Time, false
		}
	}
	return t
}

// spool encodes a batch under the spool's next seq, appends it and hands
// it to the uplink. A capture window's first part gets its own seq as the
// window's id. It returns the seq, also when the batch was dropped
// (unencodable, or refused by a full spool: counted).
func (c *collector) spool(rs []wire.Reading, fixes []wire.Fix, class spool.Class, cp *wire.Capture) (uint64, error) {
	n := len(rs) + len(fixes)
	base := earliest(rs, fixes)
	if n == 0 {
		base = emptyBase(cp)
	}
	seq, err := c.v.spool.Reserve()
	if err != nil {
		return 0, fmt.Errorf("%s: spool: %w", c.v.id, err)
	}
	if cp != nil && cp.Part == 0 {
		cp.ID = seq
	}
	batch := &wire.Batch{
		Identity: wire.Identity{VehicleID: c.v.id, Epoch: c.v.spool.Epoch(), Seq: seq},
		BaseTime: base, AgentVersion: Version, Decoder: c.a.decoder, Readings: rs, Fixes: fixes, Capture: cp,
	}
	opt := wire.EncodeOptions{TickNanos: c.a.cfg.TickNanos}
	if c.v.catalog != nil && c.v.catalogAcked() {
		opt.Catalog = c.v.catalog // signals outside it make Encode name them all
	}
	payload, err := wire.Encode(batch, opt)
	if err != nil {
		c.a.m.dropped.WithLabelValues("encode").Add(float64(n))
		c.a.logger.Error("batch not encodable; dropped", "batch", batch.Identity, "err", err)
		return seq, nil
	}
	err = c.v.spool.Append(seq, payload, spool.Meta{Class: class, Readings: uint32(n), Time: time.Unix(0, base)})
	if errors.Is(err, spool.ErrSpoolFull) {
		c.a.m.dropped.WithLabelValues("spool_full").Add(float64(n))
		return seq, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: spool append: %w", c.v.id, err)
	}
	c.a.m.spooled.WithLabelValues(class.String()).Inc()
	c.v.uplink.Live(seq)
	return seq, nil
}
