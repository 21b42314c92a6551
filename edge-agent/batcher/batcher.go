// Package batcher groups a vehicle's readings and fixes into batches that
// close on count or age. Age is measured on the readings' own clock (the
// car's, or the simulator's), so a replayed or simulated source batches the
// same way at any speed.
//
// A Batcher is not safe for concurrent use.
package batcher

import (
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config says when a batch closes.
type Config struct {
	MaxAge      time.Duration // from its first item's time; default 1s
	MaxReadings int           // readings plus fixes; default 10,000
}

// Batcher accumulates items until a batch is due.
type Batcher struct {
	cfg      Config
	readings []wire.Reading
	fixes    []wire.Fix
	first    int64 // time of the first item, Unix ns
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

// Add appends readings and fixes.
func (b *Batcher) Add(rs []wire.Reading, fixes ...wire.Fix) {
	for _, r := range rs {
		b.note(r.Time)
	}
	for _, f := range fixes {
		b.note(f.Time)
	}
	b.readings = append(b.readings, rs...)
	b.fixes = append(b.fixes, fixes...)
}

func (b *Batcher) note(t int64) {
	if b.empty || t < b.first {
		b.first = t
		b.empty = false
	}
}

// Len is the number of readings and fixes held.
func (b *Batcher) Len() int { return len(b.readings) + len(b.fixes) }

// Due reports whether the batch should close at time now (same clock as
// the items).
func (b *Batcher) Due(now time.Time) bool {
	if b.empty {
		return false
	}
	return b.Len() >= b.cfg.MaxReadings || now.UnixNano()-b.first >= int64(b.cfg.MaxAge)
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
