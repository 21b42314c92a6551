package capture

import "unsafe"

// maxHistory bounds the samples a windowed function keeps: a signal
// sampled faster than that over the window is measured over its newest
// maxHistory samples.
const maxHistory = 1024

// historyBytes is what one sample queue may cost: a history, and each of
// its max and min queues, counted in its rule's budget.
const historyBytes = maxHistory * int64(unsafe.Sizeof(sample{}))

// maxBytes is what the history may grow to.
func (h *history) maxBytes() int64 {
	n := historyBytes
	if h.hi != nil {
		n += historyBytes
	}
	if h.lo != nil {
		n += historyBytes
	}
	return n
}

type sample struct {
	t int64
	v float64
}

// history is a signal's recent samples for one window length: what
// change, rate, avg_over, min_over and max_over read. It keeps one sample
// at or before the window's start, so change can look back the whole
// window.
type history struct {
	slot    *slot
	window  int64
	buf     []sample // a ring
	head, n int
	// hi and lo, when a condition asks for max_over or min_over, hold the
	// samples that can still be the window's largest (smallest): each
	// smaller (larger) than the one before, so the extreme is the first
	// still in the window, in constant time.
	hi, lo *deque
}

func (h *history) bytes() int64 {
	n := int64(cap(h.buf)) * int64(unsafe.Sizeof(sample{}))
	for _, q := range []*deque{h.hi, h.lo} {
		if q != nil {
			n += int64(cap(q.buf)) * int64(unsafe.Sizeof(sample{}))
		}
	}
	return n
}

func (h *history) at(i int) *sample { return &h.buf[(h.head+i)%len(h.buf)] }

func (h *history) push(t int64, v float64) {
	h.trim(t)
	if h.n == len(h.buf) {
		if len(h.buf) < maxHistory {
			nb := make([]sample, min(max(16, 2*len(h.buf)), maxHistory))
			for i := 0; i < h.n; i++ {
				nb[i] = *h.at(i)
			}
			h.buf, h.head = nb, 0
		} else {
			h.head = (h.head + 1) % len(h.buf)
			h.n--
		}
	}
	h.buf[(h.head+h.n)%len(h.buf)] = sample{t, v}
	h.n++
	if h.hi != nil {
		h.hi.push(sample{t, v}, func(a, b float64) bool { return a <= b })
	}
	if h.lo != nil {
		h.lo.push(sample{t, v}, func(a, b float64) bool { return a >= b })
	}
}

// trim drops samples no window ending at now needs: all but the newest
// one at or before now - window.
func (h *history) trim(now int64) {
	for h.n >= 2 && h.at(1).t <= now-h.window {
		h.head = (h.head + 1) % len(h.buf)
		h.n--
	}
}

// change is the newest value minus the value a window before now (or the
// oldest kept, when the history is younger than the window).
func (h *history) change(now int64) (float64, bool) {
	h.trim(now)
	if h.n == 0 {
		return 0, false
	}
	return h.at(h.n-1).v - h.at(0).v, true
}

// rate is change per second over the time it spans.
func (h *history) rate(now int64) (float64, bool) {
	h.trim(now)
	if h.n < 2 {
		return 0, false
	}
	first, last := h.at(0), h.at(h.n-1)
	if last.t <= first.t {
		return 0, false
	}
	return (last.v - first.v) / (float64(last.t-first.t) / 1e9), true
}

// avg is the mean of the samples within the window.
func (h *history) avg(now int64) (float64, bool) {
	h.trim(now)
	sum, k := 0.0, 0
	for i := 0; i < h.n; i++ {
		if s := h.at(i); s.t >= now-h.window {
			sum += s.v
			k++
		}
	}
	if k == 0 {
		return 0, false
	}
	return sum / float64(k), true
}

// extreme is the largest (or smallest) sample within the window.
func (h *history) extreme(now int64, largest bool) (float64, bool) {
	q := h.lo
	if largest {
		q = h.hi
	}
	for q.n > 0 && q.at(0).t < now-h.window {
		q.popFront()
	}
	if q.n == 0 {
		return 0, false
	}
	return q.at(0).v, true
}

// deque is a bounded double-ended queue of samples (a ring).
type deque struct {
	buf     []sample
	head, n int
}

func (q *deque) at(i int) *sample { return &q.buf[(q.head+i)%len(q.buf)] }

func (q *deque) popFront() { q.head = (q.head + 1) % len(q.buf); q.n-- }

// push drops the samples at the back that s makes irrelevant (dominated
// says a back value can no longer be the extreme once s is in), then
// appends s; a full queue drops its front, as the history drops its oldest.
func (q *deque) push(s sample, dominated func(back, new float64) bool) {
	for q.n > 0 && dominated(q.at(q.n-1).v, s.v) {
		q.n--
	}
	if q.n == len(q.buf) {
		if len(q.buf) < maxHistory {
			nb := make([]sample, min(max(16, 2*len(q.buf)), maxHistory))
			for i := 0; i < q.n; i++ {
				nb[i] = *q.at(i)
			}
			q.buf, q.head = nb, 0
		} else {
			q.popFront()
		}
	}
	*q.at(q.n) = s
	q.n++
}
