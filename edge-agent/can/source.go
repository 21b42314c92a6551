package can

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	ecan "go.einride.tech/can"
	"go.einride.tech/can/pkg/socketcan"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config says where frames come from, how to decode them and what to keep.
type Config struct {
	// DBC is the path of the DBC file. Required.
	DBC string `yaml:"dbc"`
	// Candump is the path of a `candump -L` log to replay. Exactly one of
	// Candump and Interface is set.
	Candump string `yaml:"candump"`
	// Interface is a live SocketCAN interface such as "can0".
	Interface string `yaml:"interface"`
	// Realtime paces a Candump replay by the log's timestamps; otherwise it
	// runs as fast as possible.
	Realtime bool `yaml:"realtime"`
	// Collect chooses the signals to keep; empty keeps every signal.
	Collect CollectConfig `yaml:"collect"`
}

// Validate checks the config; the error names the bad field.
func (c Config) Validate() error {
	var errs []error
	if c.DBC == "" {
		errs = append(errs, errors.New("dbc: required"))
	}
	switch {
	case c.Candump == "" && c.Interface == "":
		errs = append(errs, errors.New("candump: set candump (a log file) or interface (SocketCAN)"))
	case c.Candump != "" && c.Interface != "":
		errs = append(errs, errors.New("interface: set only one of candump and interface"))
	}
	if c.Realtime && c.Candump == "" {
		errs = append(errs, errors.New("realtime: only for candump replay"))
	}
	if err := c.Collect.Validate(); err != nil {
		errs = append(errs, prefixErrors("collect.", err))
	}
	return errors.Join(errs...)
}

func prefixErrors(prefix string, err error) error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, fmt.Errorf("%s%w", prefix, e))
		}
		return errors.Join(out...)
	}
	return fmt.Errorf("%s%w", prefix, err)
}

// Deps are the Source's dependencies (source.Deps); nil fields get no-op
// defaults.
type Deps = source.Deps

// Stats counts what a Source did. Frames seen = Decoded + the sum of
// Skipped.
type Stats struct {
	Decoded  uint64                 // frames decoded with the DBC
	Skipped  map[FrameResult]uint64 // frames and log lines not decoded, by reason
	Readings uint64                 // readings emitted
	Dropped  map[DropReason]uint64  // decoded values the collection config dropped, by reason
}

// Frames is the number of frames and log lines seen.
func (s Stats) Frames() uint64 {
	n := s.Decoded
	for _, v := range s.Skipped {
		n += v
	}
	return n
}

// Values is the number of decoded signal values: Readings plus Dropped.
func (s Stats) Values() uint64 {
	n := s.Readings
	for _, v := range s.Dropped {
		n += v
	}
	return n
}

var (
	frameResults = []FrameResult{ResultDecoded, ResultUnknownID, ResultDLCMismatch, ResultRemote, ResultErrorFrame, ResultCANFD, ResultBadLine}
	dropReasons  = []DropReason{DropNotSelected, DropInterval, DropChange, DropDeadband}
)

// counters are the Source's own counts (for Stats) and its metrics.
type counters struct {
	frames      [7]atomic.Uint64 // by frameResults index
	readings    atomic.Uint64
	dropped     [4]atomic.Uint64 // by dropReasons index
	framesM     [7]prometheus.Counter
	collectedM  prometheus.Counter
	droppedM    [4]prometheus.Counter
	frameIndex  map[FrameResult]int
	reasonIndex map[DropReason]int
}

func newCounters(reg prometheus.Registerer) *counters {
	f := promauto.With(reg)
	c := &counters{frameIndex: map[FrameResult]int{}, reasonIndex: map[DropReason]int{}}
	frames := f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_can_frames_total",
		Help: "CAN frames (and candump log lines that are not frames) by result: decoded or why they were skipped."}, []string{"result"})
	readings := f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_can_readings_total",
		Help: "Decoded CAN signal values: collected, or the collection rule that dropped them."}, []string{"result"})
	for i, r := range frameResults {
		c.frameIndex[r] = i
		c.framesM[i] = frames.WithLabelValues(string(r))
	}
	c.collectedM = readings.WithLabelValues("collected")
	for i, r := range dropReasons {
		c.reasonIndex[r] = i
		c.droppedM[i] = readings.WithLabelValues(string(r))
	}
	return c
}

func (c *counters) frame(r FrameResult) {
	i := c.frameIndex[r]
	c.frames[i].Add(1)
	c.framesM[i].Inc()
}

func (c *counters) stats() Stats {
	s := Stats{Skipped: map[FrameResult]uint64{}, Dropped: map[DropReason]uint64{}}
	for i, r := range frameResults {
		if n := c.frames[i].Load(); r == ResultDecoded {
			s.Decoded = n
		} else if n > 0 {
			s.Skipped[r] = n
		}
	}
	s.Readings = c.readings.Load()
	for i, r := range dropReasons {
		if n := c.dropped[i].Load(); n > 0 {
			s.Dropped[r] = n
		}
	}
	return s
}

// Source reads CAN frames from a candump log or a SocketCAN interface,
// decodes them and emits the readings its collection config keeps.
//
// Run may be called once. Stats is safe to call concurrently with Run.
type Source struct {
	cfg       Config
	dec       *Decoder
	col       *collector
	logger    *slog.Logger
	count     *counters
	unsampled bool // emit the values the collection config drops
	// dial opens the SocketCAN interface; tests replace it.
	dial func(ctx context.Context, iface string) (net.Conn, error)
}

// New loads the DBC, binds the collection config to it and registers the
// metrics. A collection rule that matches no signal of the DBC is an error.
func New(cfg Config, deps Deps) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dec, err := LoadDBC(cfg.DBC)
	if err != nil {
		return nil, err
	}
	return newSource(cfg, dec, deps)
}

func newSource(cfg Config, dec *Decoder, deps Deps) (*Source, error) {
	col, err := newCollector(cfg.Collect, dec)
	if err != nil {
		return nil, prefixErrors("collect.", err)
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for _, w := range dec.Warnings() {
		logger.Warn("dbc: " + w)
	}
	return &Source{cfg: cfg, dec: dec, col: col, logger: logger, count: newCounters(deps.Registerer), unsampled: deps.Unsampled,
		dial: func(ctx context.Context, iface string) (net.Conn, error) {
			return socketcan.DialContext(ctx, "can", iface)
		}}, nil
}

// Decoder is the compiled DBC the source decodes with.
func (s *Source) Decoder() *Decoder { return s.dec }

// Stats returns the counts so far.
func (s *Source) Stats() Stats { return s.count.stats() }

// Run reads frames until the log ends or ctx is cancelled (both return nil)
// and emits, from Run's goroutine, the readings each frame gives (never an
// empty Items; the slices are reused once emit returns). Reading times are
// the log's timestamps for a candump replay and the receive time for a live
// interface. With Deps.Unsampled the values the collection config drops
// travel in Items.Unsampled. Bad log lines and undecodable frames are
// counted and skipped; an error opening or reading the input is returned.
func (s *Source) Run(ctx context.Context, emit source.Emit) error {
	var kept, dropped []wire.Reading
	return s.run(ctx, func(t int64, k, d []Decoded) {
		kept, dropped = kept[:0], dropped[:0]
		for _, v := range k {
			kept = append(kept, v.Reading(t))
		}
		for _, v := range d {
			dropped = append(dropped, v.Reading(t))
		}
		emit(source.Items{Readings: kept, Unsampled: dropped})
	})
}

// run is Run with the decoded values themselves (DecodeLog wants the raw
// values too): those the collection config keeps, and, with
// Deps.Unsampled, those it drops. sink is called when either is not
// empty; both are reused after it returns.
func (s *Source) run(ctx context.Context, sink func(t int64, kept, dropped []Decoded)) error {
	if s.cfg.Interface != "" {
		return s.runLive(ctx, sink)
	}
	return s.runLog(ctx, sink)
}

// frameHandler decodes frames and applies the collection config.
type frameHandler struct {
	s                      *Source
	decoded, kept, dropped []Decoded
}

func (h *frameHandler) handle(f ecan.Frame, t int64, sink func(int64, []Decoded, []Decoded)) {
	s := h.s
	var res FrameResult
	h.decoded, res = s.dec.Decode(f, h.decoded[:0])
	s.count.frame(res)
	if res != ResultDecoded {
		return
	}
	h.kept, h.dropped = h.kept[:0], h.dropped[:0]
	for _, v := range h.decoded {
		if ok, reason := s.col.keep(v, t); ok {
			h.kept = append(h.kept, v)
		} else {
			i := s.count.reasonIndex[reason]
			s.count.dropped[i].Add(1)
			s.count.droppedM[i].Inc()
			if s.unsampled {
				h.dropped = append(h.dropped, v)
			}
		}
	}
	if len(h.kept) > 0 {
		s.count.readings.Add(uint64(len(h.kept)))
		s.count.collectedM.Add(float64(len(h.kept)))
	}
	if len(h.kept) > 0 || len(h.dropped) > 0 {
		sink(t, h.kept, h.dropped)
	}
}

func (s *Source) runLog(ctx context.Context, sink func(int64, []Decoded, []Decoded)) error {
	file, err := os.Open(s.cfg.Candump)
	if err != nil {
		return fmt.Errorf("candump: %w", err)
	}
	defer file.Close()
	r := NewCandumpReader(file)
	h := &frameHandler{s: s}
	var (
		start      time.Time // wall clock of the first frame (Realtime)
		first      int64     // log time of the first frame
		timer      *time.Timer
		badLogged  int
		frameCount int
	)
	for {
		if frameCount%256 == 0 && ctx.Err() != nil {
			return nil
		}
		frameCount++
		lf, err := r.Next()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, ErrBadLine):
			s.count.frame(ResultBadLine)
			if badLogged < 10 {
				badLogged++
				s.logger.Warn("candump: skipped line", "file", s.cfg.Candump, "err", err)
			}
			continue
		case err != nil:
			return fmt.Errorf("candump %s: %w", s.cfg.Candump, err)
		}
		if s.cfg.Realtime {
			if start.IsZero() {
				start, first = time.Now(), lf.Time
			} else if d := time.Until(start.Add(time.Duration(lf.Time - first))); d > 0 {
				if timer == nil {
					timer = time.NewTimer(d)
					defer timer.Stop()
				} else {
					timer.Reset(d)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-timer.C:
				}
			}
		}
		switch {
		case lf.Error:
			s.count.frame(ResultErrorFrame)
		case lf.FD:
			s.count.frame(ResultCANFD)
		default:
			h.handle(lf.Frame, lf.Time, sink)
		}
	}
}

// runLive reads a SocketCAN interface. Frames are timed when the agent
// reads them (einride's receiver does not expose kernel timestamps).
func (s *Source) runLive(ctx context.Context, sink func(int64, []Decoded, []Decoded)) error {
	conn, err := s.dial(ctx, s.cfg.Interface)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("socketcan %s: %w", s.cfg.Interface, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	rx := socketcan.NewReceiver(conn)
	h := &frameHandler{s: s}
	for rx.Receive() {
		if rx.HasErrorFrame() {
			s.count.frame(ResultErrorFrame)
			continue
		}
		h.handle(rx.Frame(), time.Now().UnixNano(), sink)
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := rx.Err(); err != nil {
		return fmt.Errorf("socketcan %s: %w", s.cfg.Interface, err)
	}
	return fmt.Errorf("socketcan %s: connection closed", s.cfg.Interface)
}
