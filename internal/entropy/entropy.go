// Package entropy is an adaptive binary range coder and the integer model
// the wire format codes its columns with.
//
// The coder is the carry-less range coder of LZMA (Igor Pavlov's design,
// public domain): every binary decision is coded with a probability that
// adapts to the decisions seen so far, so a stream needs no tables and a
// run of predictable numbers costs a small fraction of a bit each. Int
// codes a signed 64-bit number under such a model: whether it is zero, its
// sign, its bit length (unary, each step with its own probability) and the
// two bits below the leading one, the rest as plain bits. One Int model per
// column learns that column's distribution as it goes.
//
// Why not a general-purpose compressor: zstd, on the varints of small
// residuals, codes bytes with one Huffman table per block and cannot
// spend less than a bit on a number; here a constant residual (a CAN
// counter's +1, a checksum's fixed offset) costs almost nothing and each
// column's model is its own. No maintained Go library exposes an adaptive
// binary coder, hence this one (fuzzed on its own, FuzzDecode, and inside
// the wire package's batch decoder fuzz test).
//
// Decoding untrusted bytes is safe: a Decoder reads zeros past the end of
// its input and reports that with Overrun; it never panics and its work is
// bounded by the number of decisions the caller asks for.
//
// Encoder, Decoder and Int are not safe for concurrent use.
package entropy

import (
	"math"
	"math/bits"
)

const (
	probBits = 12
	probOne  = 1 << probBits // probabilities are of a 0 bit, in 1/4096ths
	topValue = 1 << 24
	// adaptLimit bounds how slowly a probability follows the decisions:
	// the n-th decision moves it 1/(n+1.5) of the way, down to
	// 1/(adaptLimit+1.5). A fresh probability learns from its first few
	// decisions at once; a seasoned one still follows change. Batches are
	// short (a second of a 1 Hz signal is one number), so fast learning
	// beats precision.
	adaptLimit = 16
)

// Prob is the adaptive probability of one binary decision. The zero value
// is not ready: use Reset (Int.Init does it for its probabilities).
type Prob struct {
	p uint16 // of a 0 bit, in 1/probOne; always in [1, probOne-1]
	n uint8  // decisions seen, up to adaptLimit
}

// Reset forgets what p learned.
func (p *Prob) Reset() { *p = Prob{p: probOne / 2} }

// adaptRate[n] is 65536/(n+1.5).
var adaptRate = func() (t [adaptLimit + 1]uint32) {
	for n := range t {
		t[n] = uint32(65536 / (float64(n) + 1.5))
	}
	return t
}()

// update adapts p to a decision. It has no data-dependent branch (the
// decisions of noisy numbers are unpredictable): mask is all ones for a 1
// and zero for a 0.
func (p *Prob) update(mask uint32) {
	r := adaptRate[p.n]
	q := uint32(p.p)
	up := ((probOne - q) * r) >> 16
	down := (q * r) >> 16
	p.p = uint16(q + up&^mask - down&mask)
	if p.n < adaptLimit {
		p.n++
	}
}

// Encoder writes a range-coded stream.
type Encoder struct {
	low       uint64
	rng       uint32
	cache     byte
	cacheSize int
	started   bool // the first byte, always zero, is not written
	out       []byte
	// dry: count the cost of the decisions instead of coding them.
	dry  bool
	cost uint64 // in 1/costScale bits
}

// NewEncoder returns an encoder appending to dst.
func NewEncoder(dst []byte) *Encoder {
	e := &Encoder{}
	e.Reset(dst)
	return e
}

// Reset starts a new stream appending to dst.
func (e *Encoder) Reset(dst []byte) {
	*e = Encoder{rng: 0xFFFFFFFF, cacheSize: 1, out: dst}
}

func (e *Encoder) shiftLow() {
	if uint32(e.low) < 0xFF000000 || e.low>>32 != 0 {
		carry := byte(e.low >> 32)
		temp := e.cache
		for {
			if e.started {
				e.out = append(e.out, temp+carry)
			}
			e.started = true
			temp = 0xFF
			e.cacheSize--
			if e.cacheSize == 0 {
				break
			}
		}
		e.cache = byte(e.low >> 24)
	}
	e.cacheSize++
	e.low = (e.low & 0x00FFFFFF) << 8
}

// NewCounter returns an encoder that writes nothing and counts what
// coding would cost (Bits), adapting the models exactly as coding would:
// for choosing between ways to code a column.
func NewCounter() *Encoder { return &Encoder{dry: true} }

// Bits is the cost of what a counter was given so far, in bits.
func (e *Encoder) Bits() float64 { return float64(e.cost) / costScale }

// Bit codes one decision (0 or 1) under p, and adapts p.
func (e *Encoder) Bit(p *Prob, bit uint32) {
	mask := -bit // all ones for a 1
	if e.dry {
		q := uint32(p.p)
		q = q&^mask | (probOne-q)&mask
		e.cost += uint64(costTable[q>>costShift])
		p.update(mask)
		return
	}
	bound := (e.rng >> probBits) * uint32(p.p)
	e.low += uint64(bound & mask)
	e.rng = bound&^mask | (e.rng-bound)&mask
	p.update(mask)
	for e.rng < topValue {
		e.rng <<= 8
		e.shiftLow()
	}
}

// Direct codes the low n bits of v (n <= 64), each as likely 0 as 1.
func (e *Encoder) Direct(v uint64, n int) {
	if e.dry {
		e.cost += uint64(n) * costScale
		return
	}
	// Up to directChunk bits at a time: the range (at least 2^24) is cut
	// into 2^k equal slots.
	for n > 0 {
		k := min(n, directChunk)
		n -= k
		e.rng >>= uint(k)
		e.low += uint64(e.rng) * (v >> uint(n) & (1<<uint(k) - 1))
		for e.rng < topValue {
			e.rng <<= 8
			e.shiftLow()
		}
	}
}

// directChunk is how many plain bits Direct codes at once.
const directChunk = 8

// Finish flushes the stream and returns it (dst with the stream appended).
func (e *Encoder) Finish() []byte {
	if e.dry {
		return e.out
	}
	for range 5 {
		e.shiftLow()
	}
	return e.out
}

// Decoder reads a range-coded stream.
type Decoder struct {
	code, rng uint32
	in        []byte
	pos       int
	overrun   int
}

// NewDecoder returns a decoder of src.
func NewDecoder(src []byte) *Decoder {
	d := &Decoder{}
	d.Reset(src)
	return d
}

// Reset starts decoding src.
func (d *Decoder) Reset(src []byte) {
	*d = Decoder{rng: 0xFFFFFFFF, in: src}
	for range 4 {
		d.code = d.code<<8 | uint32(d.next())
	}
}

func (d *Decoder) next() byte {
	if d.pos < len(d.in) {
		b := d.in[d.pos]
		d.pos++
		return b
	}
	d.overrun++
	return 0
}

// Overrun reports whether the decoder needed bytes past the end of its
// input: the stream was truncated or is not what the caller decoded.
func (d *Decoder) Overrun() bool { return d.overrun > 0 }

// Bit decodes one decision under p, and adapts p.
func (d *Decoder) Bit(p *Prob) uint32 {
	bound := (d.rng >> probBits) * uint32(p.p)
	var bit uint32
	if d.code >= bound {
		bit = 1
	}
	mask := -bit
	d.code -= bound & mask
	d.rng = bound&^mask | (d.rng-bound)&mask
	p.update(mask)
	for d.rng < topValue {
		d.rng <<= 8
		d.code = d.code<<8 | uint32(d.next())
	}
	return bit
}

// Direct decodes n plain bits (n <= 64).
func (d *Decoder) Direct(n int) uint64 {
	var v uint64
	for n > 0 {
		k := min(n, directChunk)
		n -= k
		d.rng >>= uint(k)
		x := d.code / d.rng
		if x >= 1<<uint(k) { // only a corrupt stream gets here
			x = 1<<uint(k) - 1
		}
		d.code -= uint32(x) * d.rng
		v = v<<uint(k) | uint64(x)
		for d.rng < topValue {
			d.rng <<= 8
			d.code = d.code<<8 | uint32(d.next())
		}
	}
	return v
}

// Int is the adaptive model of one stream of signed integers.
type Int struct {
	// Whether the number is zero, its sign and whether its length is more
	// than 1, 2 and 3 bits are each learnt under what the previous number
	// was: zero, or of 1-2, 3-5 or more bits (magClass), and its sign.
	zero   [4]Prob
	sign   [3]Prob
	short  [4][3]Prob
	mag    uint8    // the previous number's magClass
	sgn    uint8    // the previous number's sign: 0 zero, 1 positive, 2 negative
	length [64]Prob // length[k-1]: is the bit length more than k?
	// Below the leading one: every bit of a number up to treeBits long,
	// each under the bits before it (a binary tree), so any distribution
	// of small numbers is learnt, a constant one included; of a longer
	// number the top modelledBits bits, under its length.
	tree [1 << treeBits]Prob // tree[1<<(n-1) + node] for n bits
	mant [65][modelledBits]Prob
	// Noise: the low bits of a number are as good as random when the
	// stream's numbers differ from each other by far more. spread tracks
	// the bit length of those differences (in 1/16 bits, learning a
	// quarter of the way each number); the number's lowBits(spread) low
	// bits are then coded plain, and the rest under the model: half the
	// decisions on a noisy signal, nothing lost on a regular one (whose
	// differences are small, so all its bits stay modelled).
	spread uint32
	prev   int64
	seen   bool
}

// lowBits is how many low bits of a number go plain, for a stream whose
// numbers differ by about 2^(spread/16): all but the top keptBits of that
// difference.
func lowBits(spread uint32) int {
	return max(int(spread+8)>>4-keptBits, 0)
}

// keptBits is how many bits of a stream's typical difference stay modelled.
const keptBits = 3

// learn records x in m's spread.
func (m *Int) learn(x int64) {
	if m.seen { // a stream's first number is no guide to the rest
		d := uint64(x - m.prev)
		if int64(d) < 0 {
			d = -d
		}
		l := uint32(bits.Len64(d)) << 4
		m.spread = uint32(int32(m.spread) + (int32(l)-int32(m.spread))>>2)
	}
	m.prev, m.seen = x, true
}

// treeBits is the longest number whose every bit is modelled.
const treeBits = 6

// Init resets m to no knowledge.
func (m *Int) Init() { *m = freshInt }

var freshInt = func() (m Int) {
	for i := range m.zero {
		m.zero[i].Reset()
		for j := range m.short[i] {
			m.short[i][j].Reset()
		}
	}
	for i := range m.sign {
		m.sign[i].Reset()
	}
	for i := range m.length {
		m.length[i].Reset()
	}
	for i := range m.tree {
		m.tree[i].Reset()
	}
	for i := range m.mant {
		for j := range m.mant[i] {
			m.mant[i][j].Reset()
		}
	}
	return m
}()

// lengthProb is the probability that a number is longer than k bits.
func (m *Int) lengthProb(k int) *Prob {
	if k <= len(m.short[0]) {
		return &m.short[m.mag][k-1]
	}
	return &m.length[k-1]
}

// magClass sorts a number of n bits into one of the contexts of the next.
func magClass(n int) uint8 {
	switch {
	case n <= 2:
		return 1
	case n <= 5:
		return 2
	}
	return 3
}

// modelledBits is how many bits below the leading one have probabilities;
// the rest are plain.
const modelledBits = 2

// Int codes x under m.
func (e *Encoder) Int(m *Int, x int64) {
	low := lowBits(m.spread)
	m.learn(x)
	if x == 0 {
		e.Bit(&m.zero[m.mag], 0)
		m.mag, m.sgn = 0, 0
		return
	}
	e.Bit(&m.zero[m.mag], 1)
	u := uint64(x)
	sgn := uint8(1)
	if x < 0 {
		sgn = 2
		u = -u
	}
	e.Bit(&m.sign[m.sgn], uint32(sgn-1))
	if low > 0 {
		// u-1 = hi<<low | lo: hi+1 is coded under the model, lo plain.
		defer e.Direct(u-1, low)
		u = (u-1)>>uint(low) + 1
	}
	n := bits.Len64(u)
	for k := 1; k < n; k++ {
		e.Bit(m.lengthProb(k), 1)
	}
	if n < 64 {
		e.Bit(m.lengthProb(n), 0)
	}
	m.mag, m.sgn = magClass(n), sgn
	rest := n - 1 // bits below the leading one
	if n <= treeBits {
		node := 1
		for rest > 0 {
			rest--
			bit := uint32(u>>uint(rest)) & 1
			e.Bit(&m.tree[1<<(n-1)+node], bit)
			node = node<<1 | int(bit)
		}
		return
	}
	for i := 0; i < modelledBits; i++ {
		rest--
		e.Bit(&m.mant[n][i], uint32(u>>uint(rest))&1)
	}
	e.Direct(u, rest)
}

// Int decodes a number coded under m.
func (d *Decoder) Int(m *Int) int64 {
	x := d.number(m, lowBits(m.spread))
	m.learn(x)
	return x
}

func (d *Decoder) number(m *Int, low int) int64 {
	if d.Bit(&m.zero[m.mag]) == 0 {
		m.mag, m.sgn = 0, 0
		return 0
	}
	neg := d.Bit(&m.sign[m.sgn]) == 1
	n := 1
	for n < 64 && d.Bit(m.lengthProb(n)) == 1 {
		n++
	}
	m.mag, m.sgn = magClass(n), 1
	if neg {
		m.sgn = 2
	}
	u := uint64(1)
	rest := n - 1
	if n <= treeBits {
		node := 1
		for ; rest > 0; rest-- {
			bit := d.Bit(&m.tree[1<<(n-1)+node])
			node = node<<1 | int(bit)
		}
		u = uint64(node)
	} else {
		for i := range modelledBits {
			rest--
			u = u<<1 | uint64(d.Bit(&m.mant[n][i]))
		}
		u = u<<uint(rest) | d.Direct(rest)
	}
	if low > 0 {
		u = ((u-1)<<uint(low) | d.Direct(low)) + 1
	}
	if neg {
		u = -u
	}
	return int64(u)
}

const (
	costScale = 1 << 8
	costShift = 4 // costTable has one entry per 16 probability steps
)

// costTable[p>>costShift] is -log2(p/probOne) in 1/costScale bits.
var costTable = func() (t [probOne >> costShift]uint32) {
	for i := range t {
		p := (float64(i) + 0.5) / float64(len(t))
		t[i] = uint32(-math.Log2(p)*costScale + 0.5)
	}
	return t
}()
