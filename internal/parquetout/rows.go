package parquetout

import (
	"math"
	"slices"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Splitter turns decoded batches into rows, grouped by the hour each row
// falls in. It reuses its buffers between batches, so it allocates nothing
// per row once warm. A Splitter is used by one goroutine.
type Splitter struct {
	readings  []ReadingRow
	locations []LocationRow
	hours     []int64 // hour start of each reading or fix of the batch in hand
	distinct  []int64
	capID     string
	capTrig   int64
}

// Emit receives the rows of one hour of one batch. The slices are only
// valid during the call (the Splitter reuses them); a FileWriter copies
// what it is given.
type Emit struct {
	Readings  func(h Hour, rows []ReadingRow) error
	Locations func(h Hour, rows []LocationRow) error
}

// Split calls emit once per (table, hour) that b has rows in, hours in
// ascending order, each with that hour's rows in batch order. Pointer fields
// of the rows point into b and into the Splitter.
func (s *Splitter) Split(b *wire.Batch, emit Emit) error {
	var c capture
	if b.Capture != nil {
		s.capID, s.capTrig = CaptureID(b.Identity, b.Capture), floorMicros(b.Capture.TriggerTime)
		c = capture{id: &s.capID, rule: &b.Capture.Rule, trigger: &s.capTrig}
	}
	if len(b.Readings) > 0 {
		if err := s.splitReadings(b, c, emit.Readings); err != nil {
			return err
		}
	}
	if len(b.Fixes) > 0 {
		return s.splitLocations(b, c, emit.Locations)
	}
	return nil
}

// capture is the capture columns of a batch's rows, all nil for the live
// stream.
type capture struct {
	id, rule *string
	trigger  *int64
}

// groupHours fills s.hours with each time's hour and s.distinct with the
// distinct hours, ascending.
func (s *Splitter) groupHours(n int, timeOf func(int) int64) {
	s.hours = s.hours[:0]
	s.distinct = s.distinct[:0]
	for i := range n {
		h := HourOf("", timeOf(i)).Start
		s.hours = append(s.hours, h)
		if len(s.distinct) == 0 || (h != s.distinct[len(s.distinct)-1] && !slices.Contains(s.distinct, h)) {
			s.distinct = append(s.distinct, h)
		}
	}
	slices.Sort(s.distinct)
}

func (s *Splitter) splitReadings(b *wire.Batch, c capture, emit func(Hour, []ReadingRow) error) error {
	s.groupHours(len(b.Readings), func(i int) int64 { return b.Readings[i].Time })
	for _, h := range s.distinct {
		rows := s.readings[:0]
		for i := range b.Readings {
			if s.hours[i] != h {
				continue
			}
			r := &b.Readings[i]
			row := ReadingRow{
				VehicleID: b.VehicleID, TS: floorMicros(r.Time), Signal: r.Signal, Unit: r.Unit, Type: r.Value.Kind.String(),
				Epoch: b.Epoch, Seq: b.Seq, BatchIndex: int32(i),
				CaptureID: c.id, CaptureRule: c.rule, CaptureTriggerTS: c.trigger,
			}
			switch r.Value.Kind {
			case wire.KindDouble:
				row.ValueDouble = &r.Value.Float
			case wire.KindInt:
				row.ValueInt = &r.Value.Int
			case wire.KindBool:
				row.ValueBool = &r.Value.Bool
			case wire.KindString:
				row.ValueString = &r.Value.Str
			}
			rows = append(rows, row)
		}
		s.readings = rows
		if err := emit(Hour{Table: Readings, Start: h}, rows); err != nil {
			return err
		}
	}
	return nil
}

func (s *Splitter) splitLocations(b *wire.Batch, c capture, emit func(Hour, []LocationRow) error) error {
	s.groupHours(len(b.Fixes), func(i int) int64 { return b.Fixes[i].Time })
	for _, h := range s.distinct {
		rows := s.locations[:0]
		for i := range b.Fixes {
			if s.hours[i] != h {
				continue
			}
			f := &b.Fixes[i]
			rows = append(rows, LocationRow{
				VehicleID: b.VehicleID, TS: floorMicros(f.Time), Lat: f.Lat, Lon: f.Lon,
				Alt: present(&f.Alt), Speed: present(&f.Speed), Heading: present(&f.Heading), Accuracy: present(&f.Accuracy),
				Epoch: b.Epoch, Seq: b.Seq, BatchIndex: int32(i),
				CaptureID: c.id, CaptureRule: c.rule, CaptureTriggerTS: c.trigger,
			})
		}
		s.locations = rows
		if err := emit(Hour{Table: Locations, Start: h}, rows); err != nil {
			return err
		}
	}
	return nil
}

// floorMicros turns Unix nanoseconds into microseconds, rounding down (so a
// row never moves into the next hour).
func floorMicros(ns int64) int64 {
	us := ns / 1000
	if ns%1000 < 0 {
		us--
	}
	return us
}

// present is nil for an absent (NaN) optional value.
func present(f *float64) *float64 {
	if math.IsNaN(*f) {
		return nil
	}
	return f
}

// Row sizes, uncompressed, for callers that estimate memory.
const (
	ReadingRowBytes  = 40
	LocationRowBytes = 80
)
