package batcher

import (
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

var t0 = time.Date(2020, 3, 1, 12, 0, 0, 0, time.UTC) // a recording's clock, years before the wall clock

func r(d time.Duration) wire.Reading {
	return wire.Reading{Signal: "x", Time: t0.Add(d).UnixNano(), Value: wire.Int(1)}
}

func TestClosesOnCount(t *testing.T) {
	b := New(Config{MaxAge: time.Second, MaxReadings: 3})
	if b.DueAt(t0.Add(time.Hour).UnixNano()) || b.Full() {
		t.Fatal("empty batcher is due")
	}
	b.Add(0, []wire.Reading{r(0), r(time.Millisecond)})
	if b.Full() {
		t.Fatal("full at 2 of 3")
	}
	b.Add(0, nil, wire.Fix{Time: t0.Add(-time.Millisecond).UnixNano()})
	if !b.Full() || !b.DueAt(t0.UnixNano()) {
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

// TestAgeFollowsTheReadingsClock: old timestamps do not make every batch
// "older than MaxAge"; a batch closes when its items would span MaxAge.
func TestAgeFollowsTheReadingsClock(t *testing.T) {
	b := New(Config{MaxAge: time.Second})
	var batches [][]wire.Reading
	for ms := 0; ms < 3500; ms += 10 { // 100 Hz for 3.5 s of recording
		item := []wire.Reading{r(time.Duration(ms) * time.Millisecond)}
		if !b.Fits(item, nil) {
			rs, _, _, _ := b.Take()
			batches = append(batches, rs)
		}
		b.Add(time.Now().UnixNano(), item)
		if b.DueAt(item[0].Time) {
			t.Fatalf("due at its own latest item (%d ms)", ms)
		}
	}
	rs, _, _, _ := b.Take()
	batches = append(batches, rs)
	if len(batches) != 4 {
		t.Fatalf("%d batches of 3.5 s at 1 s, want 4", len(batches))
	}
	for i, rs := range batches[:3] {
		if len(rs) != 100 || rs[0].Time != t0.Add(time.Duration(i)*time.Second).UnixNano() {
			t.Errorf("batch %d: %d readings from %v, want 100 from second %d", i, len(rs), time.Unix(0, rs[0].Time).UTC(), i)
		}
	}
}

// TestClockJumps: a time step backwards or forwards by MaxAge or more
// starts a new batch rather than stretching one.
func TestClockJumps(t *testing.T) {
	b := New(Config{MaxAge: time.Second})
	b.Add(0, []wire.Reading{r(10 * time.Second)})
	if b.Fits([]wire.Reading{r(8 * time.Second)}, nil) || b.Fits([]wire.Reading{r(12 * time.Second)}, nil) {
		t.Error("an item 2 s away fits a 1 s batch")
	}
	if !b.Fits([]wire.Reading{r(9*time.Second + 1)}, nil) || !b.Fits(nil, []wire.Fix{{Time: r(10*time.Second + 999*time.Millisecond).Time}}) {
		t.Error("an item within 1 s does not fit")
	}
}

// TestDueAtTheSourceClock: a source whose clock has passed the batch's
// MaxAge (a simulation step) closes it without waiting for another item.
func TestDueAtTheSourceClock(t *testing.T) {
	b := New(Config{MaxAge: time.Second})
	b.Add(0, []wire.Reading{r(0), r(990 * time.Millisecond)})
	if b.DueAt(t0.Add(999 * time.Millisecond).UnixNano()) {
		t.Error("due before MaxAge on the source clock")
	}
	if !b.DueAt(t0.Add(time.Second).UnixNano()) {
		t.Error("not due at MaxAge on the source clock")
	}
}

// TestExpiresOnArrival: a live source's batch closes MaxAge after its first
// item arrived, whatever the items' own times say.
func TestExpiresOnArrival(t *testing.T) {
	b := New(Config{MaxAge: time.Second})
	wall := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	if b.Expired(wall) {
		t.Fatal("empty batcher expired")
	}
	b.Add(wall, []wire.Reading{r(0)}) // the car's clock is six years behind
	b.Add(wall+int64(500*time.Millisecond), []wire.Reading{r(time.Millisecond)})
	if b.Expired(wall + int64(999*time.Millisecond)) {
		t.Error("expired before MaxAge since the first arrival")
	}
	if !b.Expired(wall + int64(time.Second)) {
		t.Error("not expired MaxAge after the first arrival")
	}
}
