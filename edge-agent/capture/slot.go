package capture

import (
	"fmt"
	"math"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// slot is one signal: its name, its latest value (for conditions) and
// which rules read and capture it.
type slot struct {
	index         uint32
	name, unit    string
	kind          wire.Kind // 0 while unknown
	scale, offset float64   // the exact-integer form of its doubles

	num   float64
	str   string
	known bool
	t     int64

	// strs and strIndex intern a string signal's values for the rings
	// (a status takes a few values): up to maxInterned.
	strs     []string
	strIndex map[string]uint32

	hist    []*history // windowed functions over it
	refs    uint64     // rules whose condition reads it
	capture uint64     // rules whose windows hold it
	next    *slot      // the slot that followed it last time
}

func (s *slot) set(r *wire.Reading) {
	s.t, s.known, s.unit = r.Time, true, r.Unit // the ring's readings carry the unit of the signal's latest
	switch r.Value.Kind {
	case wire.KindDouble:
		s.num = r.Value.Float
		s.known = !math.IsNaN(s.num)
	case wire.KindInt:
		s.num = float64(r.Value.Int)
	case wire.KindBool:
		s.num = 0
		if r.Value.Bool {
			s.num = 1
		}
	case wire.KindString:
		s.str = r.Value.Str
		s.known = s.kind == wire.KindString || s.kind == 0
	}
}

// maxInterned bounds the distinct values a string signal interns; rings
// keep the values beyond it in a table of their own.
const maxInterned = 1024

// intern returns the index of a string value of the slot.
func (s *slot) intern(v string) (uint32, bool) {
	if i, ok := s.strIndex[v]; ok {
		return i, true
	}
	if len(s.strs) >= maxInterned {
		return 0, false
	}
	if s.strIndex == nil {
		s.strIndex = map[string]uint32{}
	}
	i := uint32(len(s.strs))
	s.strs = append(s.strs, v)
	s.strIndex[v] = i
	return i, true
}

// maxSlots bounds the signals the engine tracks: names outside the
// catalog beyond it are not captured.
const maxSlots = 1 << 16

// locationFields are the fix fields a condition reads, in ring order.
var locationFields = [fixFields]string{"lat", "lon", "alt", "speed", "heading", "accuracy"}

func (e *Engine) addSlot(name, unit string) *slot {
	s := &slot{index: uint32(len(e.slots)), name: name, unit: unit}
	e.slots = append(e.slots, s)
	e.byName[name] = s
	return s
}

// conditionSlot is the slot a condition reads by name.
func (e *Engine) conditionSlot(name string) (*slot, error) {
	if s, ok := e.byName[name]; ok && s != e.loc {
		return s, nil
	}
	if e.strict {
		if c := closest(name, e.names); c != "" {
			return nil, fmt.Errorf("unknown signal %s (did you mean %s?)", name, c)
		}
		return nil, fmt.Errorf("unknown signal %s: the vehicle's sources do not emit it", name)
	}
	return e.addSlot(name, ""), nil
}

// lookup finds a reading's slot, trying first the one that followed the
// previous reading's last time (readings come in a repeating order: the
// signals of one CAN frame, frame after frame). A signal outside the
// catalog gets a slot of its own, up to maxSlots.
func (e *Engine) lookup(r *wire.Reading) *slot {
	if p := e.prev; p != nil && p.next != nil && p.next.name == r.Signal {
		e.prev = p.next
		return p.next
	}
	s, ok := e.byName[r.Signal]
	if !ok {
		if len(e.slots) >= maxSlots {
			return nil
		}
		s = e.addSlot(r.Signal, r.Unit)
		for _, ru := range e.rules {
			if ru.selects(s.name) {
				s.capture |= ru.bit
			}
		}
	}
	if s.kind == 0 {
		s.kind = r.Value.Kind
		if r.Value.Kind == wire.KindDouble && r.Scale != 0 {
			s.scale, s.offset = r.Scale, r.Offset
		}
	}
	if e.prev != nil {
		e.prev.next = s
	}
	e.prev = s
	return s
}
