// Package batcher groups a vehicle's readings and fixes into batches that
// close on count or age.
//
// Age is measured on the readings' own clock: a batch holds items whose
// times lie less than MaxAge apart, and an item that would stretch it to
// MaxAge or more closes it first (Fits). So a recorded log replayed at any
// speed, or a simulation run at any speed-up, batches the same way, by the
// recording's time. A source that knows its clock has moved on without
// new items (a simulation step) says so with DueAt. A live source also
// closes a batch on the wall clock when its items stop coming (Expired),
// measured from when the batch's first item arrived, so a car clock that
// disagrees with the board's never closes batches early or late.
//
// A Batcher is not safe for concurrent use.
package batcher

import (
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config says when a batch closes.
type Config struct {
	MaxAge      time.Duration // span of its items' times; default 1s
	MaxReadings int           // readings plus fixes; default 10,000
}

// Batcher accumulates items until a batch is due.
type Batcher struct {
	cfg      Config
	readings []wire.Reading
	fixes    []wire.Fix
	first    int64 // earliest item time, Unix ns
	last     int64 // latest item time
	opened   int64 // arrival time of the first item (the caller's clock)
	empty    bool
	spareR   []wire.Reading // recycled by the caller, used by the next batch
	spareF   []wire.Fix
}

// New returns an empty batcher.
func New(cfg Config) *Batcher {
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = time.Second
	}
	if cfg.MaxReadings <= 0 {
		cfg.MaxReadings = 10_000
	}
	return &Batcher{cfg: cfg, empty: true}
}

// span returns the earliest and latest time of the items.
func span(rs []wire.Reading, fixes []wire.Fix) (lo, hi int64, ok bool) {
	for _, r := range rs {
		if !ok || r.Time < lo {
			lo = r.Time
		}
		if !ok || r.Time > hi {
			hi = r.Time
		}
		ok = true
	}
	for _, f := range fixes {
		if !ok || f.Time < lo {
			lo = f.Time
		}
		if !ok || f.Time > hi {
			hi = f.Time
		}
		ok = true
	}
	return lo, hi, ok
}

// Fits reports whether the items can join the batch without its times
// spanning MaxAge or more. An empty batch takes anything.
func (b *Batcher) Fits(rs []wire.Reading, fixes []wire.Fix) bool {
	lo, hi, ok := span(rs, fixes)
	if b.empty || !ok {
		return true
	}
	return max(hi, b.last)-min(lo, b.first) < int64(b.cfg.MaxAge)
}

// Add appends readings and fixes that arrived at time arrival (Unix ns on
// the caller's clock, for Expired). The batcher copies them.
func (b *Batcher) Add(arrival int64, rs []wire.Reading, fixes ...wire.Fix) {
	lo, hi, ok := span(rs, fixes)
	if !ok {
		return
	}
	if b.empty {
		b.first, b.last, b.opened, b.empty = lo, hi, arrival, false
	} else {
		b.first, b.last = min(b.first, lo), max(b.last, hi)
	}
	b.readings = append(b.readings, rs...)
	b.fixes = append(b.fixes, fixes...)
}

// Len is the number of readings and fixes held.
func (b *Batcher) Len() int { return len(b.readings) + len(b.fixes) }

// Full reports whether the batch holds MaxReadings items.
func (b *Batcher) Full() bool { return b.Len() >= b.cfg.MaxReadings }

// DueAt reports whether the batch is full, or MaxAge old when the
// readings' clock reads now (Unix ns): a source that knows no earlier item
// will follow closes it at once instead of at its next item.
func (b *Batcher) DueAt(now int64) bool {
	return !b.empty && (b.Full() || now-b.first >= int64(b.cfg.MaxAge))
}

// Expired reports whether MaxAge has passed since the batch's first item
// arrived, on the clock Add was given (a live source's wall clock).
func (b *Batcher) Expired(now int64) bool {
	return !b.empty && now-b.opened >= int64(b.cfg.MaxAge)
}

// ExpiresAt is when Expired turns true (on the clock Add was given); ok is
// false for an empty batch, which never expires.
func (b *Batcher) ExpiresAt() (at int64, ok bool) {
	return b.opened + int64(b.cfg.MaxAge), !b.empty
}

// Take returns what is held, with the earliest item time as base time, and
// empties the batcher. ok is false when it held nothing. The caller owns
// the slices; handing them back with Recycle once done lets the next batch
// reuse their memory.
func (b *Batcher) Take() (readings []wire.Reading, fixes []wire.Fix, base int64, ok bool) {
	if b.empty {
		return nil, nil, 0, false
	}
	readings, fixes, base = b.readings, b.fixes, b.first
	b.readings, b.fixes, b.empty = b.spareR[:0], b.spareF[:0], true
	b.spareR, b.spareF = nil, nil
	return readings, fixes, base, true
}

// Recycle gives back slices from Take that the caller no longer uses.
func (b *Batcher) Recycle(readings []wire.Reading, fixes []wire.Fix) {
	clear(readings) // drop string references
	b.spareR, b.spareF = readings[:0], fixes[:0]
}
