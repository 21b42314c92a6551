package gps

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Source produces location fixes. Run emits, from Run's own goroutine,
// one Items holding one fix for each fix, in the order the receiver
// reported them (which is not always time order: recordings are spliced,
// clocks jump), and returns nil when ctx is cancelled or a finite input is
// exhausted; any other error is permanent. Sources are not safe for
// concurrent Runs.
type Source = source.Source

// Deps are a source's dependencies (source.Deps). A nil Logger discards
// logs; a nil Registerer leaves the metrics unregistered.
type Deps = source.Deps

// fixEmitter emits each fix as an Items of its own, from a buffer reused
// for every fix.
func fixEmitter(emit source.Emit) func(wire.Fix) {
	var buf [1]wire.Fix
	return func(f wire.Fix) {
		buf[0] = f
		emit(source.Items{Fixes: buf[:]})
	}
}

// New validates cfg and returns the source it describes: an *NMEASource or
// a *GPSDSource.
func New(cfg Config, deps Deps) (Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := NewMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "gps", "kind", cfg.Kind)
	if cfg.Kind == KindGPSD {
		return &GPSDSource{cfg: cfg, m: m, log: log}, nil
	}
	return &NMEASource{cfg: cfg, m: m, log: log}, nil
}

// backoff is a jittered exponential backoff.
type backoff struct {
	min, max, cur time.Duration
}

// next returns the wait before the next attempt: between half and all of a
// bound that doubles from min up to max.
func (b *backoff) next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.min
	case b.cur < b.max:
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(b.cur-half+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx is done, reporting whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// errLineTooLong marks a line longer than the reader's limit (the rest of it
// has been discarded).
var errLineTooLong = errors.New("line too long")

// lineReader reads newline-terminated lines of at most max bytes without
// ever buffering more than that, so a device sending garbage without line
// ends costs bounded memory.
type lineReader struct {
	r       *bufio.Reader
	discard bool
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, max)}
}

// next returns the next line (valid until the next call), errLineTooLong
// for an over-long one, or the reader's error (io.EOF at the end; a last
// line without a newline is returned first).
func (l *lineReader) next() ([]byte, error) {
	for {
		line, err := l.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			l.discard = true
			continue
		}
		if l.discard {
			// The tail of an over-long line, up to its newline or the
			// error, which the next call reads again.
			l.discard = false
			return nil, errLineTooLong
		}
		if len(line) > 0 {
			return line, nil
		}
		return nil, err
	}
}
