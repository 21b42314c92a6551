package wire

import (
	"fmt"
	"math/bits"
	"slices"
	"sync"

	ecan "go.einride.tech/can"

	"github.com/fleetpipe/fleetpipe/internal/entropy"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// The coded section (schema version 2) holds a batch's time columns and its
// integer-valued columns, range coded with adaptive models (package
// entropy): every number is a residual from a prediction, and each column
// has its own model, so what a column repeats costs almost nothing.
//
// Time columns, each in ticks from the batch's base time, are predicted
// either from their own period (the previous time plus the column's
// nominal period) or from an earlier column whose frames arrive in step
// with theirs (CAN frames sent by one ECU in one burst): the matching time
// of that column plus the offset last seen. Value columns are predicted as
// raw numbers, from the previous value, linearly from the previous two,
// from an earlier column on the same times (the change of that column), or
// — for a CAN checksum — from the other signals of the frame. Differences
// of signals with a known bit width are taken modulo 2^width.
//
// The layout is described field by field in telemetry.proto.

// signalInfo is what the coded layout knows of a signal.
type signalInfo struct {
	kind      Kind
	rawBits   uint8 // 0: unknown
	rawSigned bool
	can       bool
	msg       uint32 // index of its CAN message, when can
	msgLen    uint8
	field     frameField
}

func signalInfos(sigs []*pb.Signal, msgs []*pb.CanMessage) []signalInfo {
	out := make([]signalInfo, len(sigs))
	for i, s := range sigs {
		k, _ := kindOf(s.GetType())
		in := signalInfo{kind: k, rawBits: uint8(s.GetRawBits()), rawSigned: s.GetRawSigned()}
		if c := s.GetCan(); c != nil && in.rawBits > 0 && int(c.GetMessage()) < len(msgs) {
			in.can = true
			in.msg = c.GetMessage()
			in.msgLen = uint8(msgs[c.GetMessage()].GetLength())
			in.field = frameField{start: uint8(c.GetStartBit()), length: in.rawBits, bigEndian: c.GetBigEndian()}
		}
		out[i] = in
	}
	return out
}

// Value predictors of a coded column; checksum families follow
// predChecksum (predChecksum+family-1).
const (
	predRaw = iota
	predDelta
	predLinear
	predXref
	predChecksum
	maxPred = predChecksum + int(maxFamily) - 1
)

// dirModels are the models of the section's directory numbers.
type dirModels struct {
	count, length, period, ref, offset, signal, time, decimals, pred entropy.Int
	wrap                                                             entropy.Prob
}

func (m *dirModels) init() {
	for _, x := range []*entropy.Int{&m.count, &m.length, &m.period, &m.ref, &m.offset, &m.signal, &m.time, &m.decimals, &m.pred} {
		x.Init()
	}
	m.wrap.Reset()
}

// rawRange is the range a signal's raw integers wrap in.
type rawRange struct {
	bits   uint8 // 0 or 64: no wrapping
	signed bool
}

func (r rawRange) wraps() bool { return r.bits > 0 && r.bits < 64 }

// contains reports whether v is a raw value of the range.
func (r rawRange) contains(v int64) bool {
	if !r.wraps() {
		return true
	}
	if r.signed {
		return v >= -1<<(r.bits-1) && v < 1<<(r.bits-1)
	}
	return v >= 0 && v < 1<<r.bits
}

// diff maps a difference into [-2^(bits-1), 2^(bits-1)).
func (r rawRange) diff(x int64) int64 {
	if !r.wraps() {
		return x
	}
	sh := 64 - r.bits
	return x << sh >> sh
}

// value maps a sum into the range.
func (r rawRange) value(x int64) int64 {
	if !r.wraps() {
		return x
	}
	sh := 64 - r.bits
	if r.signed {
		return x << sh >> sh
	}
	return int64(uint64(x) << sh >> sh)
}

// nearest is the index of the element of ts (sorted ascending, not
// empty) nearest to x, the lower one on a tie, searching from index hint
// (where the answer usually is, or just after): an exponential search
// then a binary one, so O(log distance). On unsorted input it still
// returns a valid index, the same for encoder and decoder.
func nearest(ts []int64, x int64, hint int) int {
	n := len(ts)
	hint = min(max(hint, 0), n-1)
	// Find lo < hi with ts[lo] < x <= ts[hi] (lo -1 or hi n at the ends).
	lo, hi := -1, n
	if ts[hint] < x {
		lo = hint
		step := 1
		for lo+step < n && ts[lo+step] < x {
			lo += step
			step <<= 1
		}
		hi = min(lo+step, n)
	} else {
		hi = hint
		step := 1
		for hi-step >= 0 && ts[hi-step] >= x {
			hi -= step
			step <<= 1
		}
		lo = max(hi-step, -1)
	}
	// Binary search in (lo, hi) for the first index with ts[i] >= x.
	for hi-lo > 1 {
		mid := int(uint(lo+hi) >> 1)
		if ts[mid] < x {
			lo = mid
		} else {
			hi = mid
		}
	}
	if hi == n {
		return n - 1
	}
	if hi > 0 && x-ts[hi-1] <= ts[hi]-x {
		return hi - 1
	}
	return hi
}

// timeStep is how many of its reference's times a time column advances by
// per entry: its period over the reference's, at least 1.
func timeStep(period, refPeriod int64, refLen int) int64 {
	k := int64(1)
	if refPeriod > 0 && period > 0 {
		k = max((period+refPeriod/2)/refPeriod, 1)
	}
	return min(k, int64(refLen))
}

// timePredictor predicts the entries of a time column, in order.
//
// On its own period, an entry is predicted as the previous one plus the
// column's nominal period. Against a reference column, an entry is
// predicted as the reference's time `step` entries after the one the
// previous entry was matched to, plus the column's nominal offset from
// its reference: frames sent together keep about the same distance,
// whatever the jitter of the burst they share, and the nominal offset
// predicts that distance better than the last one seen.
type timePredictor struct {
	ref    []int64 // nil: own period
	period int64
	step   int64
	offset int64 // nominal offset from the reference
	i      int
	prev   int64 // previous entry
	anchor int   // index in ref the previous entry was matched to
}

func newTimePredictor(ref []int64, period, refPeriod, offset int64) *timePredictor {
	p := &timePredictor{ref: ref, period: period, offset: offset}
	if ref != nil {
		p.step = timeStep(period, refPeriod, len(ref))
	}
	return p
}

// predict returns the prediction of the next entry.
func (p *timePredictor) predict() int64 {
	switch {
	case p.i == 0 && p.ref == nil:
		return 0
	case p.i == 0:
		return p.ref[0] + p.offset
	case p.ref != nil && int64(p.anchor)+p.step < int64(len(p.ref)):
		return p.ref[int64(p.anchor)+p.step] + p.offset
	}
	return p.prev + p.period
}

// residual is what is coded for entry t.
func (p *timePredictor) residual(t int64) int64 { return t - p.predict() }

// entry turns a decoded residual back into the entry.
func (p *timePredictor) entry(r int64) int64 { return p.predict() + r }

// add records entry t.
func (p *timePredictor) add(t int64) {
	if p.ref != nil {
		p.anchor = nearest(p.ref, t-p.offset, p.anchor+int(p.step))
	}
	p.prev = t
	p.i++
}

// nominalOffset is the median distance of a column's first times from the
// nearest times of ref.
func nominalOffset(ts, ref []int64) int64 {
	var buf [sampleLen]int64
	offs := buf[:min(len(ts), sampleLen)]
	j := 0
	for i := range offs {
		j = nearest(ref, ts[i], j)
		offs[i] = ts[i] - ref[j]
	}
	slices.Sort(offs)
	return offs[len(offs)/2]
}

// valuePredictor predicts the values of a value column, in order.
type valuePredictor struct {
	pred int
	rng  rawRange // the wrap range, when the column wraps
	ref  []int64  // predXref: the other column's values
	// A checksum column: the family's prediction for each row, and the
	// checksum's width.
	family checksumFamily
	cks    []int64
	width  uint8
	i      int
	v1, v2 int64 // the previous two values
}

func (p *valuePredictor) predict() int64 {
	i := p.i
	switch p.pred {
	case predDelta:
		if i > 0 {
			return p.v1
		}
	case predLinear:
		switch {
		case i == 1:
			return p.v1
		case i > 1:
			return 2*p.v1 - p.v2
		}
	case predXref:
		if i == 0 {
			return p.ref[0]
		}
		return p.v1 + p.ref[i] - p.ref[i-1]
	}
	return 0
}

// residual is what is coded for value v.
func (p *valuePredictor) residual(v int64) int64 {
	if p.family != 0 {
		if p.family.xor() {
			return v ^ p.cks[p.i]
		}
		return rawRange{bits: p.width}.value(v - p.cks[p.i])
	}
	return p.rng.diff(v - p.predict())
}

// value turns a decoded residual back into the value.
func (p *valuePredictor) value(r int64) int64 {
	if p.family != 0 {
		if p.family.xor() {
			return r ^ p.cks[p.i]
		}
		return rawRange{bits: p.width}.value(p.cks[p.i] + r)
	}
	return p.rng.value(p.predict() + r)
}

func (p *valuePredictor) add(v int64) {
	p.v2, p.v1 = p.v1, v
	p.i++
}

// codedCol is a value column of the coded section, as the encoder sees it.
type codedCol struct {
	signal   uint32
	time     uint32
	decimals int     // -1: raw integers under the signal's scale; else value = raw/10^decimals
	vals     []int64 // the raw integers
	// The encoder's choices.
	pred int
	wrap bool
	ref  int     // predXref: index (in coding order) of the other column
	cks  []int64 // a checksum: the family's prediction for each row
}

// family is the checksum family of the column's predictor, 0 if none.
func (c *codedCol) family() checksumFamily { return predFamily(c.pred) }

// predFamily is the checksum family of predictor pred, 0 if none.
func predFamily(pred int) checksumFamily {
	if pred < predChecksum {
		return 0
	}
	return checksumFamily(pred - predChecksum + 1)
}

func (c *codedCol) predictor(cols []*codedCol, info signalInfo) *valuePredictor {
	p := &valuePredictor{pred: c.pred, family: c.family(), cks: c.cks}
	if p.family != 0 {
		p.width = info.rawBits
	}
	if c.wrap {
		p.rng = rawRange{bits: info.rawBits, signed: info.rawSigned}
	}
	if c.pred == predXref {
		p.ref = cols[c.ref].vals
	}
	return p
}

// canWrap reports whether a column may take differences modulo its
// signal's raw width.
func canWrap(info signalInfo, decimals int, pred int) bool {
	return decimals < 0 && info.rawBits > 0 && info.rawBits < 64 && pred < predChecksum
}

// sampleLen is how many entries the encoder tries its choices on.
const sampleLen = 64

// nominalPeriod is the median difference between a column's first times.
func nominalPeriod(ts []int64) int64 {
	n := min(len(ts), sampleLen+1)
	if n < 2 {
		return 0
	}
	var buf [sampleLen]int64
	ds := buf[:n-1]
	for i := 1; i < n; i++ {
		ds[i-1] = ts[i] - ts[i-1]
	}
	slices.Sort(ds)
	return max(ds[len(ds)/2], 0)
}

// timeCost estimates what coding a column's first entries under a
// predictor costs, in bits; quick uses the quick estimate instead.
func timeCost(ts []int64, p *timePredictor, quick bool) float64 {
	ts = ts[:min(len(ts), sampleLen)]
	if quick {
		var q quickCost
		for _, t := range ts {
			q.add(p.residual(t))
			p.add(t)
		}
		return float64(q.bits)
	}
	var m entropy.Int
	m.Init()
	c := entropy.NewCounter()
	for _, t := range ts {
		c.Int(&m, p.residual(t))
		p.add(t)
	}
	return c.Bits()
}

// chooseTimeRef picks how to predict time column ts: from its own period
// (ref -1) or from one of the earlier columns, with a nominal offset.
// Earlier columns whose period is not a whole fraction of the column's
// are not tried; the quick estimate ranks the others and coding costs
// decide between the best few and the column's own period.
func chooseTimeRef(earlier [][]int64, periods []int64, ts []int64, period int64) (int, int64) {
	var cands []candidate // ref, offset in quick
	offsets := map[int]int64{}
	for r := len(earlier) - 1; r >= max(0, len(earlier)-maxTimeRefs); r-- {
		k := timeStep(period, periods[r], len(earlier[r]))
		if d := period - k*periods[r]; d > period/16+1 || -d > period/16+1 {
			continue
		}
		o := nominalOffset(ts, earlier[r])
		offsets[r] = o
		q := timeCost(ts, newTimePredictor(earlier[r], period, periods[r], o), true)
		cands = append(cands, candidate{ref: r, quick: int(q)})
	}
	slices.SortStableFunc(cands, func(a, b candidate) int { return a.quick - b.quick })
	best, ref := timeCost(ts, newTimePredictor(nil, period, 0, 0), false), -1
	for _, cd := range cands[:min(len(cands), finalists)] {
		o := offsets[cd.ref]
		if c := timeCost(ts, newTimePredictor(earlier[cd.ref], period, periods[cd.ref], o), false); c < best {
			best, ref = c, cd.ref
		}
	}
	if ref < 0 {
		return -1, 0
	}
	return ref, offsets[ref]
}

// maxTimeRefs bounds the earlier time columns the encoder tries as
// references, nearest first.
const maxTimeRefs = 24

// encodeCoded returns dst with the coded section of the given time columns
// (ticks from the base time) and value columns appended.
func encodeCoded(dst []byte, times [][]int64, cols []*codedCol, infos []signalInfo) []byte {
	var m dirModels
	m.init()
	e := entropy.NewEncoder(dst)
	e.Int(&m.count, int64(len(times)))
	periods := make([]int64, len(times))
	var col entropy.Int
	for i, ts := range times {
		period := nominalPeriod(ts)
		periods[i] = period
		ref, offset := chooseTimeRef(times[:i], periods[:i], ts, period)
		e.Int(&m.length, int64(len(ts)-1))
		e.Int(&m.period, period)
		p := newTimePredictor(nil, period, 0, 0)
		if ref >= 0 {
			e.Int(&m.ref, int64(i-ref))
			e.Int(&m.offset, offset)
			p = newTimePredictor(times[ref], period, periods[ref], offset)
		} else {
			e.Int(&m.ref, 0)
		}
		col.Init()
		for _, t := range ts {
			e.Int(&col, p.residual(t))
			p.add(t)
		}
	}

	cols = chooseChecksums(cols, times, infos)
	chooseValuePredictors(cols, infos)
	e.Int(&m.count, int64(len(cols)))
	var prevSig, prevTime int64
	for i, c := range cols {
		info := infos[c.signal]
		e.Int(&m.signal, int64(c.signal)-prevSig)
		e.Int(&m.time, int64(c.time)-prevTime)
		prevSig, prevTime = int64(c.signal), int64(c.time)
		if info.kind == KindDouble {
			e.Int(&m.decimals, int64(c.decimals+1))
		}
		e.Int(&m.pred, int64(c.pred))
		if c.pred == predXref {
			e.Int(&m.ref, int64(i-c.ref))
		}
		if canWrap(info, c.decimals, c.pred) {
			e.Bit(&m.wrap, b2u(c.wrap))
		}
		p := c.predictor(cols, info)
		col.Init()
		for _, v := range c.vals {
			e.Int(&col, p.residual(v))
			p.add(v)
		}
	}
	return e.Finish()
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// chooseValuePredictors picks each column's predictor by what coding its
// first entries would cost. Checksum columns (chosen already) keep theirs.
func chooseValuePredictors(cols []*codedCol, infos []signalInfo) {
	var m entropy.Int
	sameTime := map[uint32][]int{} // earlier columns on each time column
	for i, c := range cols {
		if c.family() != 0 {
			continue
		}
		info := infos[c.signal]
		c.wrap = canWrap(info, c.decimals, predDelta)
		if c.wrap {
			r := rawRange{bits: info.rawBits, signed: info.rawSigned}
			for _, v := range c.vals {
				if !r.contains(v) {
					c.wrap = false
					break
				}
			}
		}
		n := min(len(c.vals), sampleLen)
		// A quick estimate ranks the candidates; coding costs decide
		// between the best few.
		var cands []candidate
		try := func(pred, ref int) {
			c.pred, c.ref = pred, ref
			p := c.predictor(cols, info)
			var q quickCost
			for _, v := range c.vals[:n] {
				q.add(p.residual(v))
				p.add(v)
			}
			cands = append(cands, candidate{pred: pred, ref: ref, quick: q.bits})
		}
		for _, pred := range []int{predDelta, predRaw, predLinear} {
			try(pred, 0)
		}
		earlier := sameTime[c.time]
		for k := len(earlier) - 1; k >= max(0, len(earlier)-maxValueRefs); k-- {
			try(predXref, earlier[k])
		}
		slices.SortStableFunc(cands, func(a, b candidate) int { return a.quick - b.quick })
		best, bestPred, bestRef := 0.0, -1, 0
		for _, cd := range cands[:min(len(cands), finalists)] {
			c.pred, c.ref = cd.pred, cd.ref
			m.Init()
			ctr := entropy.NewCounter()
			p := c.predictor(cols, info)
			for _, v := range c.vals[:n] {
				ctr.Int(&m, p.residual(v))
				p.add(v)
			}
			if x := ctr.Bits(); bestPred < 0 || x < best {
				best, bestPred, bestRef = x, cd.pred, cd.ref
			}
		}
		c.pred, c.ref = bestPred, bestRef
		sameTime[c.time] = append(earlier, i)
	}
}

// candidate is a way to code a column, with its quick cost estimate.
type candidate struct {
	pred, ref int
	quick     int
}

// finalists is how many candidates, the best by the quick estimate, the
// encoder estimates the coding cost of.
const finalists = 2

// quickCost is a cheap stand-in for a coding cost: the bit length of
// each residual, with a repeated residual free (the models learn those).
type quickCost struct {
	bits int
	prev int64
	n    int
}

func (q *quickCost) add(r int64) {
	if q.n == 0 || r != q.prev {
		q.bits += 1 + bits.Len64(uint64(r<<1^r>>63))
	}
	q.prev = r
	q.n++
}

// maxValueRefs bounds the earlier columns on the same times the encoder
// tries as references, nearest first.
const maxValueRefs = 8

// chooseChecksums finds, in each CAN frame's columns, a checksum the
// frame's other signals predict, marks it, and returns the columns in
// coding order: the others by signal, then the checksums by signal (a
// checksum is decoded after the signals it is computed from).
func chooseChecksums(cols []*codedCol, times [][]int64, infos []signalInfo) []*codedCol {
	slices.SortStableFunc(cols, func(a, b *codedCol) int { return int(a.signal) - int(b.signal) })
	type frameKey struct{ msg, time uint32 }
	frames := map[frameKey][]*codedCol{}
	var keys []frameKey
	for _, c := range cols {
		if info := infos[c.signal]; info.can && c.decimals < 0 {
			k := frameKey{info.msg, c.time}
			if frames[k] == nil {
				keys = append(keys, k)
			}
			frames[k] = append(frames[k], c)
		}
	}
	derived := 0
	for _, k := range keys {
		group := frames[k]
		if len(group) < 2 {
			continue
		}
		// The candidate and family that miss on the fewest frames, if
		// they miss on at most one in maxChecksumMiss.
		var best *codedCol
		var bestFam checksumFamily
		var bestCks []int64
		bestMiss := 0
		for _, c := range group {
			if fam, cks, miss := findChecksum(c, group, infos); fam != 0 && (best == nil || miss < bestMiss) {
				best, bestFam, bestCks, bestMiss = c, fam, cks, miss
			}
		}
		if best != nil && bestMiss <= len(best.vals)/maxChecksumMiss {
			best.cks, best.pred = bestCks, predChecksum+int(bestFam)-1
			derived++
		}
	}
	if derived == 0 {
		return cols
	}
	out := make([]*codedCol, 0, len(cols))
	for _, c := range cols {
		if c.family() == 0 {
			out = append(out, c)
		}
	}
	for _, c := range cols {
		if c.family() != 0 {
			out = append(out, c)
		}
	}
	return out
}

// checksumSample is how many frames a checksum family must agree on
// before the encoder checks it on all of them; maxChecksumMiss is the
// fraction of frames (1 in maxChecksumMiss) it may then miss on.
const (
	checksumSample  = 8
	maxChecksumMiss = 16
)

// findChecksum returns the family that predicts column c from the other
// columns of its frame, up to a constant, on the batch's first frames;
// its predictions for every frame; and on how many frames the residual
// differs from the one before. Family 0: none does.
func findChecksum(c *codedCol, group []*codedCol, infos []signalInfo) (checksumFamily, []int64, int) {
	info := infos[c.signal]
	w := info.rawBits
	if info.rawSigned || w < 4 || w > 8 {
		return 0, nil, 0
	}
	for _, v := range c.vals {
		if v < 0 || v >= 1<<w {
			return 0, nil, 0
		}
	}
	var fields []frameField
	var vals [][]int64
	for _, o := range group {
		if o != c {
			fields = append(fields, infos[o.signal].field)
			vals = append(vals, o.vals)
		}
	}
	misses := func(p *valuePredictor, n int) int {
		miss := 0
		var prev int64
		for j := range n {
			p.i = j
			r := p.residual(c.vals[j])
			if j > 0 && r != prev {
				miss++
			}
			prev = r
		}
		return miss
	}
	n := min(len(c.vals), checksumSample)
	for fam := checksumFamily(1); fam <= maxFamily; fam++ {
		if !fam.fits(w) {
			continue
		}
		p := &valuePredictor{family: fam, cks: frameChecksums(fam, info, fields, vals, n), width: w}
		if misses(p, n) > 0 {
			continue
		}
		p.cks = frameChecksums(fam, info, fields, vals, len(c.vals))
		return fam, p.cks, misses(p, len(c.vals))
	}
	return 0, nil, 0
}

// frameChecksums rebuilds the first n frames of a checksum's message from
// the other columns of the frame (the checksum's own bits zero) and
// returns the family's checksum of each.
func frameChecksums(fam checksumFamily, ck signalInfo, fields []frameField, vals [][]int64, n int) []int64 {
	out := make([]int64, n)
	skip := ck.field.byteMask()
	for j := range out {
		var d ecan.Data
		for k, f := range fields {
			f.place(&d, vals[k][j])
		}
		out[j] = int64(fam.predict(&d, ck.msgLen, ck.field.length, skip))
	}
	return out
}

// decodedCol is a value column read back from the coded section.
type decodedCol struct {
	signal   uint32
	time     uint32
	decimals int // -1: raw integers under the signal's scale
	vals     []int64
	family   checksumFamily // a checksum predicted from its frame: the family; else 0
}

// derived reports whether the column is a checksum predicted from its frame.
func (c decodedCol) derived() bool { return c.family != 0 }

// colArena hands out the coded section's columns from one buffer, reused
// from batch to batch: what a decode reads from them is copied out before
// it returns (readings, times, bounds), so they need not outlive it.
type colArena struct{ buf []int64 }

// arenaKeep is the largest arena kept for reuse, in entries: a hostile
// batch's million entries are not held on to.
const arenaKeep = 1 << 16

var arenas = sync.Pool{New: func() any { return new(colArena) }}

// take returns n zeroed entries (from the heap with no arena).
func (a *colArena) take(n int) []int64 {
	if a == nil {
		return make([]int64, n)
	}
	if len(a.buf)+n > cap(a.buf) {
		a.buf = make([]int64, 0, max(2*cap(a.buf), n, 1024))
	}
	s := a.buf[len(a.buf) : len(a.buf)+n : len(a.buf)+n]
	a.buf = a.buf[:len(a.buf)+n]
	clear(s)
	return s
}

func (a *colArena) release() {
	if cap(a.buf) <= arenaKeep {
		a.buf = a.buf[:0]
		arenas.Put(a)
	}
}

// decodeCoded reads a coded section: the time columns (ticks from the
// base time) and the value columns. It checks every count against lim
// before allocating, and every index; a stream that ends early is
// malformed.
func decodeCoded(data []byte, infos []signalInfo, lim Limits, a *colArena) ([][]int64, []decodedCol, error) {
	var m dirModels
	m.init()
	d := entropy.NewDecoder(data)
	budget := lim.MaxReadings // entries left to allocate
	nTimes := d.Int(&m.count)
	if nTimes < 0 || d.Overrun() {
		return nil, nil, malformed("coded: %d time columns", nTimes)
	}
	if nTimes > int64(budget) {
		return nil, nil, fmt.Errorf("%w: %d time columns, limit %d entries", ErrTooLarge, nTimes, lim.MaxReadings)
	}
	times := make([][]int64, nTimes)
	periods := make([]int64, nTimes)
	var col entropy.Int
	for i := range times {
		n := d.Int(&m.length) + 1
		if n < 1 || d.Overrun() {
			return nil, nil, malformed("coded: time column %d of %d entries", i, n)
		}
		if n > int64(budget) {
			return nil, nil, fmt.Errorf("%w: time columns of over %d entries", ErrTooLarge, lim.MaxReadings)
		}
		budget -= int(n)
		periods[i] = d.Int(&m.period)
		p := newTimePredictor(nil, periods[i], 0, 0)
		if ref := d.Int(&m.ref); ref != 0 {
			if ref < 0 || ref > int64(i) {
				return nil, nil, malformed("coded: time column %d refers to %d back", i, ref)
			}
			r := i - int(ref)
			p = newTimePredictor(times[r], periods[i], periods[r], d.Int(&m.offset))
		}
		ts := a.take(int(n))
		col.Init()
		for j := range ts {
			ts[j] = p.entry(d.Int(&col))
			p.add(ts[j])
		}
		times[i] = ts
	}

	budget = lim.MaxReadings
	nCols := d.Int(&m.count)
	if nCols < 0 || d.Overrun() {
		return nil, nil, malformed("coded: %d value columns", nCols)
	}
	if nCols > int64(budget) {
		return nil, nil, fmt.Errorf("%w: %d value columns, limit %d values", ErrTooLarge, nCols, lim.MaxReadings)
	}
	cols := make([]decodedCol, 0, nCols)
	var sig, tm int64
	for i := range int(nCols) {
		sig += d.Int(&m.signal)
		tm += d.Int(&m.time)
		if sig < 0 || sig >= int64(len(infos)) || tm < 0 || tm >= int64(len(times)) || d.Overrun() {
			return nil, nil, malformed("coded: column %d: signal %d of %d, time column %d of %d", i, sig, len(infos), tm, len(times))
		}
		info := infos[sig]
		ts := times[tm]
		if budget -= len(ts); budget < 0 {
			return nil, nil, fmt.Errorf("%w: over %d values", ErrTooLarge, lim.MaxReadings)
		}
		c := decodedCol{signal: uint32(sig), time: uint32(tm), decimals: -1}
		switch info.kind {
		case KindDouble:
			dec := d.Int(&m.decimals) - 1
			if dec < -1 || dec >= int64(len(pow10)) {
				return nil, nil, malformed("coded: column %d: %d decimals", i, dec)
			}
			c.decimals = int(dec)
		case KindInt, KindBool:
		default:
			return nil, nil, malformed("coded: column %d: a %v signal", i, info.kind)
		}
		pred := d.Int(&m.pred)
		if pred < 0 || pred > int64(maxPred) {
			return nil, nil, malformed("coded: column %d: predictor %d", i, pred)
		}
		p := &valuePredictor{pred: int(pred)}
		switch {
		case pred == predXref:
			ref := d.Int(&m.ref)
			if ref < 1 || ref > int64(i) || cols[i-int(ref)].time != c.time {
				return nil, nil, malformed("coded: column %d refers to %d back, not on its times", i, ref)
			}
			p.ref = cols[i-int(ref)].vals
		case pred >= predChecksum:
			fam := predFamily(int(pred))
			if !info.can || info.rawSigned || c.decimals >= 0 || !fam.fits(info.rawBits) {
				return nil, nil, malformed("coded: column %d: checksum of a signal that cannot have one", i)
			}
			p.family, p.width = fam, info.rawBits
			p.cks = decodedChecksums(fam, cols, infos, info, c.time, len(ts))
			c.family = fam
		}
		if canWrap(info, c.decimals, int(pred)) && d.Bit(&m.wrap) == 1 {
			p.rng = rawRange{bits: info.rawBits, signed: info.rawSigned}
		}
		c.vals = a.take(len(ts))
		col.Init()
		for j := range c.vals {
			c.vals[j] = p.value(d.Int(&col))
			p.add(c.vals[j])
		}
		cols = append(cols, c)
	}
	if d.Overrun() {
		return nil, nil, malformed("coded: the section ends early")
	}
	return times, cols, nil
}

// decodedChecksums rebuilds a checksum's predictions from the columns
// decoded so far that share its CAN message and times.
func decodedChecksums(fam checksumFamily, cols []decodedCol, infos []signalInfo, ck signalInfo, time uint32, n int) []int64 {
	var fields []frameField
	var vals [][]int64
	for _, o := range cols {
		if in := infos[o.signal]; in.can && in.msg == ck.msg && o.time == time && o.decimals < 0 && !o.derived() {
			fields = append(fields, in.field)
			vals = append(vals, o.vals)
		}
	}
	return frameChecksums(fam, ck, fields, vals, n)
}
