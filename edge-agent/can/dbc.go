package can

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"

	ecan "go.einride.tech/can"
	"go.einride.tech/can/pkg/dbc"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// ValueType is how a signal's bits hold its raw value (the DBC's
// SIG_VALTYPE_).
type ValueType uint8

// The raw value types a DBC signal can have.
const (
	ValueInteger ValueType = iota // two's complement or unsigned integer (the default)
	ValueFloat32                  // IEEE 754 single, 32 bits
	ValueFloat64                  // IEEE 754 double, 64 bits
)

// Signal is one DBC signal, compiled for decoding. It is read-only once the
// Decoder is built.
type Signal struct {
	Name        string // the DBC signal name
	FullName    string // "MESSAGE.SIGNAL": the name readings carry
	Message     *Message
	Start       uint8 // DBC start bit: LSB for Intel, MSB for Motorola (saw-tooth numbering)
	Length      uint8 // bits, 1..64
	BigEndian   bool  // Motorola byte order (@0); Intel is @1
	Signed      bool
	Type        ValueType
	Factor      float64
	Offset      float64
	Min, Max    float64 // the DBC's physical range; informative, never applied
	Unit        string
	Multiplexer bool   // this signal is the message's multiplexer switch (M)
	Multiplexed bool   // this signal is present only when the switch equals MuxValue (mN)
	MuxValue    uint64 // the switch value for a multiplexed signal
	index       int    // position among all the decoder's signals
}

// Integer reports whether the signal's physical value is its raw integer:
// factor 1, offset 0, an integer type, and a raw value that fits int64.
// Such signals become wire.Int readings; all others wire.Float.
func (s *Signal) Integer() bool {
	return s.Type == ValueInteger && s.Factor == 1 && s.Offset == 0 && (s.Signed || s.Length < 64)
}

// Message is one DBC message (frame definition).
type Message struct {
	Name     string
	ID       uint32 // 11-bit or 29-bit CAN ID, without flags
	Extended bool
	Length   uint8     // expected data length in bytes
	Signals  []*Signal // in DBC order
	mux      *Signal
}

// Decoder decodes classic CAN frames with a DBC. It is safe for concurrent
// use: decoding does not modify it.
type Decoder struct {
	messages []*Message
	standard [ecan.MaxID + 1]*Message
	extended map[uint32]*Message
	signals  []*Signal
	warnings []string
}

// LoadDBC reads and compiles a DBC file.
func LoadDBC(path string) (*Decoder, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dbc: %w", err)
	}
	return ParseDBC(path, data)
}

// ParseDBC compiles DBC source; name is used in error messages.
//
// Real DBC files have syntax errors in statements that carry no decoding
// information (opendbc has `CM_ SG_ 304 "...";` with no signal name, and a
// VAL_ without its ';') and messages with IDs no frame can carry (a
// "standard" ID of 13274): those statements are left out and reported by
// Warnings. A syntax error in a message, signal or value-type statement, a
// signal that does not fit its message, a message with two multiplexer
// switches, or a duplicate message ID is an error. Messages longer than 8 bytes (CAN FD) are left out with a warning:
// this decoder reads classic CAN frames only.
func ParseDBC(name string, data []byte) (*Decoder, error) {
	data, warnings, err := cleanDBC(name, data)
	if err != nil {
		return nil, fmt.Errorf("dbc: %w", err)
	}
	p := dbc.NewParser(name, data)
	if err := p.Parse(); err != nil {
		return nil, fmt.Errorf("dbc: %w", err)
	}
	d := &Decoder{extended: make(map[uint32]*Message), warnings: warnings}
	byKey := make(map[uint32]*Message)
	for _, def := range p.Defs() {
		md, ok := def.(*dbc.MessageDef)
		if !ok || md.MessageID == dbc.IndependentSignalsMessageID {
			continue
		}
		if err := md.MessageID.Validate(); err != nil {
			return nil, fmt.Errorf("dbc: %v: message %s: %w", md.Pos, md.Name, err)
		}
		if md.Size > ecan.MaxDataLength {
			d.warnings = append(d.warnings, fmt.Sprintf("%v: message %s: %d bytes is CAN FD, not decoded", md.Pos, md.Name, md.Size))
			continue
		}
		m := &Message{Name: string(md.Name), ID: md.MessageID.ToCAN(), Extended: md.MessageID.IsExtended(), Length: uint8(md.Size)}
		key := msgKey(m.ID, m.Extended)
		if prev, dup := byKey[key]; dup {
			return nil, fmt.Errorf("dbc: %v: message %s: ID 0x%X already used by %s", md.Pos, m.Name, m.ID, prev.Name)
		}
		byKey[key] = m
		seen := make(map[string]bool, len(md.Signals))
		for _, sd := range md.Signals {
			s := &Signal{
				Name: string(sd.Name), FullName: m.Name + "." + string(sd.Name), Message: m,
				BigEndian: sd.IsBigEndian, Signed: sd.IsSigned,
				Factor: sd.Factor, Offset: sd.Offset, Min: sd.Minimum, Max: sd.Maximum, Unit: sd.Unit,
				Multiplexer: sd.IsMultiplexerSwitch, Multiplexed: sd.IsMultiplexed, MuxValue: sd.MultiplexerSwitch,
			}
			where := fmt.Sprintf("dbc: %v: signal %s", sd.Pos, s.FullName)
			if seen[s.Name] {
				return nil, fmt.Errorf("%s: defined twice", where)
			}
			seen[s.Name] = true
			if err := checkBits(sd.StartBit, sd.Size, sd.IsBigEndian, md.Size); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			s.Start, s.Length = uint8(sd.StartBit), uint8(sd.Size)
			if s.Multiplexer {
				if m.mux != nil {
					return nil, fmt.Errorf("%s: second multiplexer switch (first is %s)", where, m.mux.Name)
				}
				m.mux = s
			}
			m.Signals = append(m.Signals, s)
		}
		for _, s := range m.Signals {
			if s.Multiplexed && m.mux == nil {
				return nil, fmt.Errorf("dbc: message %s: signal %s is multiplexed (m%d) but the message has no multiplexer switch", m.Name, s.Name, s.MuxValue)
			}
		}
		d.messages = append(d.messages, m)
	}
	for _, def := range p.Defs() {
		vt, ok := def.(*dbc.SignalValueTypeDef)
		if !ok {
			continue
		}
		s := d.lookupSignal(byKey, vt.MessageID, string(vt.SignalName))
		if s == nil {
			d.warnings = append(d.warnings, fmt.Sprintf("%v: SIG_VALTYPE_ for unknown signal %s", vt.Pos, vt.SignalName))
			continue
		}
		switch {
		case vt.SignalValueType == dbc.SignalValueTypeInt:
			s.Type = ValueInteger
		case vt.SignalValueType == dbc.SignalValueTypeFloat32 && s.Length == 32:
			s.Type = ValueFloat32
		case vt.SignalValueType == dbc.SignalValueTypeFloat64 && s.Length == 64:
			s.Type = ValueFloat64
		default:
			return nil, fmt.Errorf("dbc: %v: signal %s: value type %d does not fit %d bits", vt.Pos, s.FullName, vt.SignalValueType, s.Length)
		}
	}
	sort.SliceStable(d.messages, func(i, j int) bool {
		a, b := d.messages[i], d.messages[j]
		if a.Extended != b.Extended {
			return !a.Extended
		}
		return a.ID < b.ID
	})
	for _, m := range d.messages {
		if m.Extended {
			d.extended[m.ID] = m
		} else {
			d.standard[m.ID] = m
		}
		for _, s := range m.Signals {
			s.index = len(d.signals)
			d.signals = append(d.signals, s)
		}
	}
	return d, nil
}

func (d *Decoder) lookupSignal(byKey map[uint32]*Message, id dbc.MessageID, name string) *Signal {
	m := byKey[msgKey(id.ToCAN(), id.IsExtended())]
	if m == nil {
		return nil
	}
	for _, s := range m.Signals {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func msgKey(id uint32, extended bool) uint32 {
	if extended {
		return id | 1<<31
	}
	return id
}

// checkBits checks that a signal's bit field lies inside a message of size
// bytes (at most 8).
func checkBits(start, length uint64, bigEndian bool, size uint64) error {
	if length < 1 || length > 64 {
		return fmt.Errorf("length %d: want 1..64 bits", length)
	}
	bits := 8 * size
	if start >= bits {
		return fmt.Errorf("start bit %d outside the %d-byte message", start, size)
	}
	if !bigEndian {
		if start+length > bits {
			return fmt.Errorf("bits %d..%d (Intel) outside the %d-byte message", start, start+length-1, size)
		}
		return nil
	}
	// Motorola: count the MSB's position in a big-endian bit stream
	// (byte 0 bit 7 first) and walk length-1 bits towards the LSB.
	msb := 8*(start/8) + (7 - start%8)
	if msb+length > bits {
		return fmt.Errorf("start bit %d, %d bits (Motorola) run past the %d-byte message", start, length, size)
	}
	return nil
}

// Messages returns the decodable messages, standard IDs first, by ID.
func (d *Decoder) Messages() []*Message { return d.messages }

// Signals returns every signal of every message, in Messages order.
func (d *Decoder) Signals() []*Signal { return d.signals }

// Catalog is the wire catalog of every signal of the DBC, with each
// non-integer signal's factor and offset: batches that refer to it carry a
// signal's raw integers and nothing else.
func (d *Decoder) Catalog() (*wire.Catalog, error) {
	return wire.NewCatalog(d.SignalSpecs())
}

// SignalSpecs are the catalog entries of every signal of the DBC, in
// Signals order (see Catalog).
func (d *Decoder) SignalSpecs() []wire.SignalSpec {
	specs := make([]wire.SignalSpec, 0, len(d.signals))
	for _, s := range d.signals {
		spec := wire.SignalSpec{Name: s.FullName, Unit: s.Unit, Kind: wire.KindInt}
		if !s.Integer() {
			spec.Kind = wire.KindDouble
			if s.Type != ValueFloat32 && s.Type != ValueFloat64 {
				spec.Scale, spec.Offset = s.Factor, s.Offset
			}
		}
		if s.Type == ValueInteger {
			// The raw bit field's range and place: counters wrap in
			// it, checksums are predicted from the frame it sits in.
			m := s.Message
			spec.RawBits, spec.RawSigned = s.Length, s.Signed
			spec.CAN = &wire.CANField{Message: wire.CANMessage{ID: m.ID, Extended: m.Extended, Length: m.Length},
				StartBit: s.Start, BigEndian: s.BigEndian}
		}
		specs = append(specs, spec)
	}
	return specs
}

// Message returns the message for a CAN ID, or nil.
func (d *Decoder) Message(id uint32, extended bool) *Message {
	if extended {
		return d.extended[id]
	}
	if id > ecan.MaxID {
		return nil
	}
	return d.standard[id]
}

// Warnings lists what ParseDBC ignored (malformed comments, CAN FD messages).
func (d *Decoder) Warnings() []string { return d.warnings }

// Decoded is one signal value decoded from one frame.
type Decoded struct {
	Signal   *Signal
	Raw      int64   // the bit field; for unsigned 64-bit signals the uint64 bit pattern, for float signals the IEEE bits
	Physical float64 // float64(raw)*factor + offset (for float signals: the float value*factor + offset)
}

// Value is the reading's value: wire.Int(Raw) for Integer signals,
// wire.Float(Physical) otherwise.
func (v Decoded) Value() wire.Value {
	if v.Signal.Integer() {
		return wire.Int(v.Raw)
	}
	return wire.Float(v.Physical)
}

// Reading is the wire reading of the value at time t (Unix ns).
func (v Decoded) Reading(t int64) wire.Reading {
	r := wire.Reading{Signal: v.Signal.FullName, Unit: v.Signal.Unit, Time: t, Value: v.Value()}
	if r.Value.Kind == wire.KindDouble && v.Signal.Type != ValueFloat32 && v.Signal.Type != ValueFloat64 {
		// The DBC's exact integer form: the wire sends raw integers.
		r.Scale, r.Offset, r.Raw = v.Signal.Factor, v.Signal.Offset, v.Raw
	}
	return r
}

// FrameResult says what became of a frame (or log line).
type FrameResult string

// The results a frame can have; they are the values of the metric's result
// label.
const (
	ResultDecoded     FrameResult = "decoded"
	ResultUnknownID   FrameResult = "unknown_id"   // ID not in the DBC
	ResultDLCMismatch FrameResult = "dlc_mismatch" // data length differs from the DBC's
	ResultRemote      FrameResult = "remote"       // remote transmission request: no data
	ResultErrorFrame  FrameResult = "error_frame"  // controller error frame
	ResultCANFD       FrameResult = "can_fd"       // CAN FD frame: not decoded
	ResultBadLine     FrameResult = "bad_line"     // log line that is not a frame
)

// Decode appends the frame's signal values to dst and returns it with
// ResultDecoded, or returns dst unchanged with the reason the frame was
// skipped. A multiplexed message yields its switch, its plain signals and
// only the multiplexed signals whose value matches the switch.
func (d *Decoder) Decode(f ecan.Frame, dst []Decoded) ([]Decoded, FrameResult) {
	if f.IsRemote {
		return dst, ResultRemote
	}
	m := d.Message(f.ID, f.IsExtended)
	if m == nil {
		return dst, ResultUnknownID
	}
	if f.Length != m.Length {
		return dst, ResultDLCMismatch
	}
	var sw int64
	if m.mux != nil {
		sw, _ = m.mux.decode(&f.Data)
	}
	for _, s := range m.Signals {
		if s.Multiplexed && (sw < 0 || uint64(sw) != s.MuxValue) {
			continue
		}
		raw, phys := s.decode(&f.Data)
		dst = append(dst, Decoded{Signal: s, Raw: raw, Physical: phys})
	}
	return dst, ResultDecoded
}

func (s *Signal) decode(data *ecan.Data) (raw int64, physical float64) {
	var u uint64
	if s.BigEndian {
		u = data.UnsignedBitsBigEndian(s.Start, s.Length)
	} else {
		u = data.UnsignedBitsLittleEndian(s.Start, s.Length)
	}
	var x float64
	switch {
	case s.Type == ValueFloat32:
		raw, x = int64(u), float64(math.Float32frombits(uint32(u)))
	case s.Type == ValueFloat64:
		raw, x = int64(u), math.Float64frombits(u)
	case s.Signed:
		raw = signExtend(u, s.Length)
		x = float64(raw)
	default:
		raw, x = int64(u), float64(u)
	}
	// The explicit conversion rounds the product before the offset is
	// added: without it the compiler may fuse the two into one FMA on
	// arm64, and the agent's values would differ in the last bit from
	// amd64 and from every other DBC decoder.
	return raw, float64(x*s.Factor) + s.Offset
}

func signExtend(u uint64, bits uint8) int64 {
	shift := 64 - bits
	return int64(u<<shift) >> shift
}

// cleanDBC makes real-world DBC files parseable without losing anything a
// decoder needs. It splits the source into top-level statements (a line
// starting in column 0 begins one; indented lines continue it) and parses
// each on its own. A statement that fails is blanked out (newlines kept, so
// positions in later errors stay right) and reported as a warning when it
// carries no decoding information (comments, value descriptions,
// attributes, nodes, ...) or is a message whose ID no CAN frame can carry.
// Any other failing message, signal or value-type statement is an error.
func cleanDBC(name string, data []byte) ([]byte, []string, error) {
	var warnings []string
	out := data
	line := 1
	for start := 0; start < len(data); {
		end, lines := statementEnd(data, start)
		stmt := data[start:end]
		if len(bytes.TrimSpace(stmt)) > 0 {
			if err := dbc.NewParser(name, stmt).Parse(); err != nil {
				kw, _, _ := bytes.Cut(bytes.TrimLeft(stmt, " \t"), []byte(" "))
				first, _, _ := bytes.Cut(stmt, []byte("\n"))
				first = bytes.TrimSpace(first)
				switch string(kw) {
				case "BO_":
					if id, ok := badMessageID(stmt); ok {
						warnings = append(warnings, fmt.Sprintf("%s:%d: ignored message %.40q: %v", name, line, first, id.Validate()))
						break
					}
					fallthrough
				case "SG_", "SIG_VALTYPE_", "SG_MUL_VAL_":
					return nil, nil, fmt.Errorf("%s:%d: %.60q: %w", name, line, first, err)
				default:
					warnings = append(warnings, fmt.Sprintf("%s:%d: ignored malformed %s statement %.60q", name, line, kw, first))
				}
				if &out[0] == &data[0] {
					out = bytes.Clone(data)
				}
				for j := start; j < end; j++ {
					if out[j] != '\n' {
						out[j] = ' '
					}
				}
			}
		}
		line += lines
		start = end
	}
	return out, warnings, nil
}

// badMessageID reports the ID of a "BO_ <id> ..." statement when it is not a
// valid CAN ID (opendbc has standard IDs above 0x7FF).
func badMessageID(stmt []byte) (dbc.MessageID, bool) {
	fields := bytes.Fields(stmt)
	if len(fields) < 2 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(fields[1]), 10, 32)
	if err != nil {
		return 0, false
	}
	id := dbc.MessageID(n)
	return id, id.Validate() != nil
}

// statementEnd returns the end of the top-level statement starting at i:
// the start of the next line that begins in column 0 outside a quoted
// string (where \" is an escaped quote), and the number of newlines in it.
func statementEnd(data []byte, i int) (end, lines int) {
	inString := false
	for ; i < len(data); i++ {
		switch c := data[i]; {
		case inString && c == '\\' && i+1 < len(data) && data[i+1] == '"':
			i++
		case c == '"':
			inString = !inString
		case c == '\n':
			lines++
			if !inString && i+1 < len(data) && data[i+1] != ' ' && data[i+1] != '\t' && data[i+1] != '\r' && data[i+1] != '\n' {
				return i + 1, lines
			}
		}
	}
	return len(data), lines
}
