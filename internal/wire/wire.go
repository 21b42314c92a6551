// Package wire turns telemetry batches into the bytes that cross MQTT and sit
// in Kafka (proto/fleet/telemetry/v1), and back.
//
// A Batch here is the flat, easy form: a list of readings (signal, unit,
// time, typed value) and a list of location fixes. Encode lays them out a
// column per signal, shares one time column between signals sampled at the
// same instants, delta-encodes times (delta of delta) and values (exact
// integer forms of doubles where one exists) and compresses the body with
// zstd. Decode reverses that for untrusted input: it checks sizes before
// parsing or decompressing, validates every index and length, and returns an
// error wrapping ErrMalformed, ErrTooLarge or ErrUnsupported instead of
// panicking.
//
// Times are quantised to the encoder's tick (0.1 ms by default); location
// coordinates to 1e-7 degree, altitude and accuracy to 1 mm, speed to
// 1 mm/s, heading to 0.01 degree. Every other value is lossless.
//
// Encode and Decode are safe for concurrent use.
package wire

import (
	"errors"
	"fmt"
	"math"
	"regexp"
)

// SchemaVersion is the layout this package writes: 2, time and integer
// columns in the coded section. It reads 1 (every column in the body) too.
const SchemaVersion = 2

// Kind is the type of a reading's value.
type Kind uint8

// The kinds of value a reading can carry.
const (
	KindDouble Kind = iota + 1
	KindInt
	KindBool
	KindString
)

// String returns the kind's name as the Parquet output spells it.
func (k Kind) String() string {
	switch k {
	case KindDouble:
		return "double"
	case KindInt:
		return "int"
	case KindBool:
		return "bool"
	case KindString:
		return "string"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Value is a typed reading value; Kind says which field holds it.
type Value struct {
	Kind  Kind
	Float float64
	Int   int64
	Bool  bool
	Str   string
}

// Float returns a double value.
func Float(v float64) Value { return Value{Kind: KindDouble, Float: v} }

// Int returns an integer value.
func Int(v int64) Value { return Value{Kind: KindInt, Int: v} }

// Bool returns a boolean value.
func Bool(v bool) Value { return Value{Kind: KindBool, Bool: v} }

// String returns a string value.
func String(v string) Value { return Value{Kind: KindString, Str: v} }

// Reading is one sample of one signal.
type Reading struct {
	Signal string
	Unit   string
	Time   int64 // Unix nanoseconds, car clock
	Value  Value
	// Scale, Offset and Raw optionally give a double's exact integer form,
	// as a DBC defines physical values: Value.Float == Physical(Raw, Scale,
	// Offset), bit for bit. The encoder then sends the delta-coded raw
	// integers instead of the doubles. Scale 0 means no such form.
	Scale, Offset float64
	Raw           int64
}

// Physical is raw*scale+offset, rounded after the multiplication and after
// the addition on every architecture: Go may otherwise fuse them into one
// FMA instruction (it does on arm64), and a car and the cloud would then
// disagree on the last bit of a value.
func Physical(raw int64, scale, offset float64) float64 {
	return float64(float64(raw)*scale) + offset
}

// Fix is one location fix. Optional fields are NaN when the receiver did not
// report them.
type Fix struct {
	Time     int64   // Unix nanoseconds of the fix
	Lat, Lon float64 // WGS84 degrees
	Alt      float64 // metres above mean sea level, or NaN
	Speed    float64 // metres per second over ground, or NaN
	Heading  float64 // degrees clockwise from true north, or NaN
	Accuracy float64 // horizontal accuracy in metres (1 sigma), or NaN
}

// Identity names a batch everywhere downstream.
type Identity struct {
	VehicleID string
	Epoch     uint64
	Seq       uint64
}

// String formats the identity for logs and errors.
func (id Identity) String() string {
	return fmt.Sprintf("%s/%016x/%d", id.VehicleID, id.Epoch, id.Seq)
}

// Batch is one vehicle's readings and fixes over a short window.
type Batch struct {
	Identity
	BaseTime      int64 // Unix nanoseconds; times are encoded relative to it
	AgentVersion  string
	SchemaVersion uint32 // set by Decode; Encode always writes SchemaVersion
	Decoder       string // which decoder configuration produced the signals
	// Checked, set by Decode, says the batch carried an end-to-end
	// checksum and it matched (batches of older agents carry none).
	Checked  bool
	Readings []Reading
	Fixes    []Fix
	// Capture, when set, marks the batch as part of a condition-triggered
	// capture window; nil for the live stream.
	Capture *Capture
}

// Capture marks a batch as one part of a capture window (see the proto's
// Capture message).
type Capture struct {
	// ID is the seq of the window's first part: (VehicleID, Epoch, ID)
	// names the window. Never 0.
	ID          uint64
	Rule        string // the rule's name (CheckCaptureRule)
	TriggerTime int64  // Unix nanoseconds, the readings' clock
	Part        uint32 // from 0
	Final       bool   // the window's last part
}

var captureRulePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// CheckCaptureRule returns an error describing why name cannot name a
// capture rule: 1 to 64 characters of letters, digits, '_', '.' and '-',
// starting with a letter, digit or '_'.
func CheckCaptureRule(name string) error {
	if captureRulePattern.MatchString(name) {
		return nil
	}
	return fmt.Errorf("capture rule %.80q: want 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter, digit or _", name)
}

// checkCapture validates a capture marker.
func (c *Capture) check() error {
	if c.ID == 0 {
		return errors.New("capture id 0")
	}
	return CheckCaptureRule(c.Rule)
}

// Errors returned (wrapped) by Decode.
var (
	// ErrMalformed means the bytes are not a valid batch.
	ErrMalformed = errors.New("malformed batch")
	// ErrTooLarge means the batch exceeds a size limit; it was not parsed.
	ErrTooLarge = errors.New("batch too large")
	// ErrUnsupported means the batch uses a schema version or compression
	// this build does not know.
	ErrUnsupported = errors.New("unsupported batch")
)

// IsInvalid reports whether err (from Decode) says the batch itself is
// bad or refers to a catalog that does not exist: retrying cannot help,
// unlike, say, a failure to reach the catalogs.
func IsInvalid(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnsupported) ||
		errors.Is(err, ErrUnknownCatalog) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNoChecksum)
}

// ValidVehicleID reports whether id can name a vehicle: 1 to 64 characters
// of letters, digits, '_', '.', ':' and '-', starting with a letter or digit
// (so it is always a single, wildcard-free MQTT topic level). It runs on
// every batch the bridge receives, hence no regexp.
func ValidVehicleID(id string) bool {
	if len(id) == 0 || len(id) > 64 || !vehicleIDChar[id[0]] || id[0] == '_' || id[0] == '.' || id[0] == ':' || id[0] == '-' {
		return false
	}
	for i := 1; i < len(id); i++ {
		if !vehicleIDChar[id[i]] {
			return false
		}
	}
	return true
}

// vehicleIDChar marks the bytes a vehicle ID may hold.
var vehicleIDChar = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-'
	}
	return t
}()

// CheckVehicleID returns an error describing why id is not a valid vehicle ID.
func CheckVehicleID(id string) error {
	if ValidVehicleID(id) {
		return nil
	}
	return fmt.Errorf("vehicle id %q: want 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit", id)
}

// Limits bound what Decode accepts. Zero fields take the defaults.
type Limits struct {
	MaxBatchBytes int // size of the encoded batch; default 1 MiB
	MaxBodyBytes  int // size of the decompressed body; default 16 MiB
	MaxReadings   int // readings plus fixes; default 1,000,000
	// Catalogs resolves the catalog a batch may refer to instead of
	// carrying its name table; without it such a batch fails with
	// ErrUnknownCatalog.
	Catalogs CatalogLookup
	// MaxReadingsPerByte, when set, lowers MaxReadings for a batch to that
	// many per byte of the batch: the work a batch can cause grows with
	// what its sender paid in bytes. The range coder spends at least ~0.006
	// bits on any entry, and our encoder's densest batches (a second of
	// constant signals at 100 Hz and more) hold under 900 readings a byte.
	MaxReadingsPerByte int
	// MaxBodyRatio, when set, refuses a compressed body that claims to
	// decompress to more than BodyRatioFloor bytes and more than this many
	// times its compressed size.
	MaxBodyRatio int
	// RequireChecksum refuses batches without an end-to-end checksum
	// (ErrNoChecksum). Off by default: agents built before the checksum
	// existed send none, and a fleet upgrades over weeks. A batch that has
	// one is always verified.
	RequireChecksum bool
}

// BodyRatioFloor is the decompressed size below which MaxBodyRatio does
// not apply: small bodies of repeated values compress beyond any ratio.
const BodyRatioFloor = 64 << 10

// DefaultLimits are the limits Decode applies to zero fields.
var DefaultLimits = Limits{MaxBatchBytes: 1 << 20, MaxBodyBytes: 16 << 20, MaxReadings: 1_000_000}

func (l Limits) withDefaults() Limits {
	if l.MaxBatchBytes <= 0 {
		l.MaxBatchBytes = DefaultLimits.MaxBatchBytes
	}
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = DefaultLimits.MaxBodyBytes
	}
	if l.MaxReadings <= 0 {
		l.MaxReadings = DefaultLimits.MaxReadings
	}
	return l
}

func isNaN(f float64) bool { return math.IsNaN(f) }
