package wire

import (
	"fmt"

	ecan "go.einride.tech/can"
)

// CANMessage is a CAN frame definition, as a catalog records it.
type CANMessage struct {
	ID       uint32
	Extended bool
	Length   uint8 // data bytes, 1..8
}

// CANField says where a DBC signal sits in its frame. Its length is the
// signal's RawBits.
type CANField struct {
	Message   CANMessage
	StartBit  uint8 // the DBC start bit (LSB for Intel, MSB for Motorola)
	BigEndian bool  // Motorola byte order
}

// checkCANField reports whether a field of the given length lies within
// its message's data.
func checkCANField(start, length uint32, bigEndian bool, msgLen uint32) error {
	if msgLen == 0 || msgLen > 8 {
		return fmt.Errorf("message length %d bytes, want 1..8", msgLen)
	}
	if length == 0 || length > 64 {
		return fmt.Errorf("field of %d bits", length)
	}
	size := 8 * msgLen
	if start >= size {
		return fmt.Errorf("start bit %d beyond %d bits", start, size)
	}
	if bigEndian {
		// Motorola: start is the MSB in saw-tooth numbering; in
		// "linear" big-endian order the field runs from lin onwards.
		lin := 8*(start/8) + 7 - start%8
		if lin+length > size {
			return fmt.Errorf("big-endian field at %d of %d bits overruns %d bits", start, length, size)
		}
		return nil
	}
	if start+length > size {
		return fmt.Errorf("little-endian field at %d of %d bits overruns %d bits", start, length, size)
	}
	return nil
}

// frameField is a field to place in a rebuilt frame.
type frameField struct {
	start, length uint8
	bigEndian     bool
}

// place sets the field's bits of d to the low bits of raw.
func (f frameField) place(d *ecan.Data, raw int64) {
	v := uint64(raw)
	if f.length < 64 {
		v &= 1<<f.length - 1
	}
	if f.bigEndian {
		d.SetUnsignedBitsBigEndian(f.start, f.length, v)
	} else {
		d.SetUnsignedBitsLittleEndian(f.start, f.length, v)
	}
}

// byteMask returns which bytes of the frame hold at least one of the
// field's bits.
func (f frameField) byteMask() uint8 {
	var d ecan.Data
	f.place(&d, -1)
	var m uint8
	for i, b := range d {
		if b != 0 {
			m |= 1 << i
		}
	}
	return m
}

// A checksum family predicts a checksum field from the rest of its frame
// (the field's own bits zero), up to a constant: every car maker's
// variant (which address bytes, which initial value, a negation) only
// moves that constant, so the residual between the real checksum and the
// prediction is the same on every frame, and a constant residual costs
// almost nothing to code. The family a column uses is chosen per batch by
// the encoder, which checks it on the batch's frames; a wrong guess
// (a corrupt frame, an unknown algorithm) costs bits, never values.
type checksumFamily uint8

const (
	sumNibblesNeg checksumFamily = iota + 1 // minus the sum of the nibbles (Honda)
	sumNibbles                              // the sum of the nibbles
	sumBytes                                // the sum of the bytes (Toyota, Tesla, Subaru)
	sumBytesNeg                             // minus the sum of the bytes
	xorBytes                                // the XOR of the bytes, folded to the field's width
	crc8SAE                                 // CRC-8, polynomial 0x1D (SAE J1850), over the other bytes
	crc8AUTOSAR                             // CRC-8, polynomial 0x2F (AUTOSAR), over the other bytes
	maxFamily     = crc8AUTOSAR
)

// xor reports whether the family's residual is the XOR of checksum and
// prediction (rather than their difference modulo 2^width).
func (f checksumFamily) xor() bool { return f >= xorBytes }

// fits reports whether the family applies to a field of width bits.
func (f checksumFamily) fits(width uint8) bool {
	switch f {
	case crc8SAE, crc8AUTOSAR:
		return width == 8
	case xorBytes:
		return width == 4 || width == 8
	}
	return width >= 4 && width <= 8
}

// predict is the family's checksum of frame d (length bytes), masked to
// width bits; skip has a bit set for each byte the checksum occupies.
func (f checksumFamily) predict(d *ecan.Data, length uint8, width uint8, skip uint8) uint64 {
	var s uint64
	switch f {
	case sumNibblesNeg, sumNibbles:
		for _, b := range d[:length] {
			s += uint64(b&0xF) + uint64(b>>4)
		}
		if f == sumNibblesNeg {
			s = -s
		}
	case sumBytes, sumBytesNeg:
		for _, b := range d[:length] {
			s += uint64(b)
		}
		if f == sumBytesNeg {
			s = -s
		}
	case xorBytes:
		var x byte
		for _, b := range d[:length] {
			x ^= b
		}
		if width == 4 {
			x ^= x >> 4
		}
		s = uint64(x)
	case crc8SAE, crc8AUTOSAR:
		table := &crcSAE
		if f == crc8AUTOSAR {
			table = &crcAUTOSAR
		}
		var c byte
		for i, b := range d[:length] {
			if skip&(1<<i) == 0 {
				c = table[c^b]
			}
		}
		s = uint64(c)
	}
	return s & (1<<width - 1)
}

var crcSAE, crcAUTOSAR = crc8Table(0x1D), crc8Table(0x2F)

func crc8Table(poly byte) (t [256]byte) {
	for i := range t {
		c := byte(i)
		for range 8 {
			if c&0x80 != 0 {
				c = c<<1 ^ poly
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}
