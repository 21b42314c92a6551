package batcher

import (
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func TestClosesOnAgeAndCount(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	r := func(d time.Duration) wire.Reading {
		return wire.Reading{Signal: "x", Time: t0.Add(d).UnixNano(), Value: wire.Int(1)}
	}
	b := New(Config{MaxAge: time.Second, MaxReadings: 3})
	if b.Due(t0.Add(time.Hour)) {
		t.Fatal("empty batcher is due")
	}
	b.Add([]wire.Reading{r(0)})
	if b.Due(t0.Add(999 * time.Millisecond)) {
		t.Fatal("due before MaxAge")
	}
	if !b.Due(t0.Add(time.Second)) {
		t.Fatal("not due at MaxAge")
	}
	b.Add([]wire.Reading{r(10 * time.Millisecond)}, wire.Fix{Time: t0.Add(-time.Millisecond).UnixNano()})
	if !b.Due(t0) {
		t.Fatal("not due at MaxReadings")
	}
	rs, fs, base, ok := b.Take()
	if !ok || len(rs) != 2 || len(fs) != 1 || base != t0.Add(-time.Millisecond).UnixNano() {
		t.Fatalf("Take = %d readings, %d fixes, base %d, %v", len(rs), len(fs), base, ok)
	}
	if _, _, _, ok := b.Take(); ok || b.Len() != 0 {
		t.Fatal("batcher not empty after Take")
	}
}
