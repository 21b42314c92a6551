package relay

import (
	"context"
	"sync"
	"time"
)

// limiter bounds the messages in flight, by count and by bytes. acquire
// blocks the MQTT reader that calls it, which is the bridge's
// backpressure: the connection stops being read, and the broker holds the
// rest. It is safe for concurrent use.
type limiter struct {
	maxN, maxBytes int

	mu      sync.Mutex
	n       int
	bytes   int
	closed  bool
	waiting int           // goroutines waiting on changed
	changed chan struct{} // closed and replaced when room is freed, if anyone waits
}

func newLimiter(maxN, maxBytes int) *limiter {
	return &limiter{maxN: maxN, maxBytes: maxBytes, changed: make(chan struct{})}
}

// acquire takes room for a message of size bytes, waiting while there is
// none. It returns the time it waited, and false if the limiter was closed
// or ctx ended first. A message larger than the byte bound gets in alone.
func (l *limiter) acquire(ctx context.Context, size int) (time.Duration, bool) {
	var start time.Time
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return waited(start), false
		}
		if l.n == 0 || (l.n < l.maxN && l.bytes+size <= l.maxBytes) {
			l.n++
			l.bytes += size
			l.mu.Unlock()
			return waited(start), true
		}
		ch := l.changed
		l.waiting++
		l.mu.Unlock()
		if start.IsZero() {
			start = time.Now()
		}
		select {
		case <-ch:
			l.mu.Lock()
			l.waiting--
			l.mu.Unlock()
		case <-ctx.Done():
			l.mu.Lock()
			l.waiting--
			l.mu.Unlock()
			return waited(start), false
		}
	}
}

func waited(start time.Time) time.Duration {
	if start.IsZero() {
		return 0
	}
	return time.Since(start)
}

// release returns a message's room.
func (l *limiter) release(size int) {
	l.mu.Lock()
	l.n--
	l.bytes -= size
	if l.waiting > 0 {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	l.mu.Unlock()
}

// close makes every later acquire fail.
func (l *limiter) close() {
	l.mu.Lock()
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// load is the messages and bytes in flight.
func (l *limiter) load() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, l.bytes
}

// waitEmpty waits until nothing is in flight or d passes.
func (l *limiter) waitEmpty(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		l.mu.Lock()
		if l.n == 0 {
			l.mu.Unlock()
			return true
		}
		ch := l.changed
		l.waiting++
		l.mu.Unlock()
		expired := false
		select {
		case <-ch:
		case <-timer.C:
			expired = true
		}
		l.mu.Lock()
		l.waiting--
		l.mu.Unlock()
		if expired {
			return l.empty()
		}
	}
}

func (l *limiter) empty() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n == 0
}
