package wire

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// ErrUnknownCatalog means a batch refers to a catalog the decoder was not
// given. The batch is fine; the catalog must be fetched first.
var ErrUnknownCatalog = errors.New("unknown catalog")

// SignalSpec is one entry of a catalog. Scale and Offset, for a double
// signal, are its raw-to-physical factor and offset (a DBC signal's): batches
// then carry such a signal's values as the raw integers alone.
//
// RawBits and RawSigned, when RawBits is non-zero, bound the signal's raw
// integers (a DBC signal's bit field): the coded layout may then take
// differences modulo 2^RawBits, so a wrapping counter costs nothing. CAN,
// for a DBC signal, is where the field sits in its frame: the coded layout
// may then predict a checksum from the frame's other signals. Both only
// make batches smaller; leaving them out is never wrong.
type SignalSpec struct {
	Name, Unit    string
	Kind          Kind
	Scale, Offset float64
	RawBits       uint8
	RawSigned     bool
	CAN           *CANField
}

// Catalog is a registered name table: batches encoded with it carry its id
// and column indexes instead of signal names. A Catalog is immutable and
// safe for concurrent use.
type Catalog struct {
	id      []byte
	data    []byte
	signals []*pb.Signal
	info    []signalInfo // per signal, what the coded layout needs
	index   map[signalKey]uint32
}

// CatalogIDLen is the length of a catalog id.
const CatalogIDLen = 16

// NewCatalog builds a catalog of the given signals, in order.
func NewCatalog(specs []SignalSpec) (*Catalog, error) {
	msg := &pb.Catalog{}
	msgIndex := map[CANMessage]uint32{}
	for i, s := range specs {
		typ, err := valueType(s.Kind)
		if err != nil {
			return nil, fmt.Errorf("wire: catalog signal %d (%s): %w", i, s.Name, err)
		}
		sig := &pb.Signal{Name: s.Name, Unit: s.Unit, Type: typ, RawBits: uint32(s.RawBits), RawSigned: s.RawSigned}
		if s.Kind == KindDouble && s.Scale != 0 {
			sig.Scale, sig.Offset = s.Scale, s.Offset
		}
		if c := s.CAN; c != nil {
			mi, ok := msgIndex[c.Message]
			if !ok {
				mi = uint32(len(msg.CanMessages))
				msgIndex[c.Message] = mi
				msg.CanMessages = append(msg.CanMessages, &pb.CanMessage{Id: c.Message.ID, Extended: c.Message.Extended, Length: uint32(c.Message.Length)})
			}
			sig.Can = &pb.CanField{Message: mi, StartBit: uint32(c.StartBit), BigEndian: c.BigEndian}
		}
		msg.Signals = append(msg.Signals, sig)
	}
	if err := checkCatalog(msg); err != nil {
		return nil, fmt.Errorf("wire: %w", err)
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return newCatalog(msg, data)
}

// checkCatalog validates what the coded layout relies on: raw ranges and
// CAN fields that lie within their frames.
func checkCatalog(msg *pb.Catalog) error {
	for i, s := range msg.GetSignals() {
		if _, err := kindOf(s.GetType()); err != nil {
			return fmt.Errorf("catalog signal %d (%s): %v", i, s.GetName(), err)
		}
		if s.GetRawBits() > 64 {
			return fmt.Errorf("catalog signal %d (%s): raw_bits %d", i, s.GetName(), s.GetRawBits())
		}
		c := s.GetCan()
		if c == nil {
			continue
		}
		if c.GetMessage() >= uint32(len(msg.GetCanMessages())) {
			return fmt.Errorf("catalog signal %d (%s): CAN message %d of %d", i, s.GetName(), c.GetMessage(), len(msg.GetCanMessages()))
		}
		m := msg.GetCanMessages()[c.GetMessage()]
		if err := checkCANField(c.GetStartBit(), s.GetRawBits(), c.GetBigEndian(), m.GetLength()); err != nil {
			return fmt.Errorf("catalog signal %d (%s): CAN field: %v", i, s.GetName(), err)
		}
	}
	return nil
}

// ParseCatalog reads a serialized catalog (as registered), checking it.
func ParseCatalog(data []byte, lim Limits) (*Catalog, error) {
	lim = lim.withDefaults()
	if len(data) > lim.MaxBodyBytes {
		return nil, fmt.Errorf("%w: catalog of %d bytes, limit %d", ErrTooLarge, len(data), lim.MaxBodyBytes)
	}
	msg := &pb.Catalog{}
	if err := proto.Unmarshal(data, msg); err != nil {
		return nil, malformed("catalog: %v", err)
	}
	if err := checkCatalog(msg); err != nil {
		return nil, malformed("%v", err)
	}
	return newCatalog(msg, data)
}

func newCatalog(msg *pb.Catalog, data []byte) (*Catalog, error) {
	sum := sha256.Sum256(data)
	c := &Catalog{id: sum[:CatalogIDLen], data: data, signals: msg.GetSignals(), index: make(map[signalKey]uint32, len(msg.GetSignals()))}
	c.info = signalInfos(c.signals, msg.GetCanMessages())
	for i, s := range c.signals {
		k, _ := kindOf(s.GetType())
		key := signalKey{s.GetName(), s.GetUnit(), k}
		if _, dup := c.index[key]; !dup {
			c.index[key] = uint32(i)
		}
	}
	return c, nil
}

// ID is the catalog's id: the first 16 bytes of the SHA-256 of Bytes.
func (c *Catalog) ID() []byte { return bytes.Clone(c.id) }

// Bytes is the catalog as registered.
func (c *Catalog) Bytes() []byte { return bytes.Clone(c.data) }

// Len is the number of signals.
func (c *Catalog) Len() int { return len(c.signals) }

// CatalogLookup finds registered catalogs by id, for Decode.
type CatalogLookup interface {
	Catalog(id []byte) (*Catalog, bool)
}

// Catalogs is a CatalogLookup over a fixed set, e.g. for tests and tools.
type Catalogs map[string]*Catalog

// Add registers c.
func (cs Catalogs) Add(c *Catalog) { cs[string(c.id)] = c }

// Catalog implements CatalogLookup.
func (cs Catalogs) Catalog(id []byte) (*Catalog, bool) {
	c, ok := cs[string(id)]
	return c, ok
}

func kindOf(t pb.ValueType) (Kind, error) {
	switch t {
	case pb.ValueType_VALUE_TYPE_DOUBLE:
		return KindDouble, nil
	case pb.ValueType_VALUE_TYPE_INT:
		return KindInt, nil
	case pb.ValueType_VALUE_TYPE_BOOL:
		return KindBool, nil
	case pb.ValueType_VALUE_TYPE_STRING:
		return KindString, nil
	}
	return 0, fmt.Errorf("value type %v", t)
}
