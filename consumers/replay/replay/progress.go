package replay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// progress shows how far a replay is while it runs: a live bar on a
// terminal (records, bytes, rate, ETA), log lines every --progress-interval
// otherwise. It reads the replay's counters; it never blocks the replay.
type progress struct {
	stop func()
	wg   sync.WaitGroup
}

// startProgress starts the display chosen by mode for a replay of total
// records. done reports how many of them are read so far.
func startProgress(mode string, interval time.Duration, stderr io.Writer, logger *slog.Logger, total int64, done func() Stats) *progress {
	if mode == ProgressAuto {
		mode = ProgressLines
		if isTerminal(stderr) {
			mode = ProgressBar
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &progress{stop: cancel}
	start := time.Now()
	switch mode {
	case ProgressBar:
		p.wg.Go(func() { runBar(ctx, stderr, total, start, done) })
	case ProgressLines:
		p.wg.Go(func() {
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					s := done()
					rate := perSecond(s.Records, time.Since(start))
					logger.Info("replay progress", "records", s.Records, "of", total,
						"bytes", s.Bytes, "readings", s.Readings, "fixes", s.Fixes, "bad", s.Bad, "skipped", s.Skipped,
						"records_per_s", int64(rate), "eta", eta(total-s.Records, rate))
				}
			}
		})
	}
	return p
}

// finish stops the display (the bar draws its last state).
func (p *progress) finish() {
	p.stop()
	p.wg.Wait()
}

func runBar(ctx context.Context, w io.Writer, total int64, start time.Time, done func() Stats) {
	opts := []mpb.ContainerOption{mpb.WithOutput(w), mpb.WithAutoRefresh(), mpb.WithRefreshRate(200 * time.Millisecond)}
	if !isTerminal(w) {
		opts = append(opts, mpb.WithWidth(160)) // --progress bar into a pipe: no terminal to measure
	}
	c := mpb.New(opts...)
	bar := c.AddBar(max(total, 1), mpb.BarWidth(24),
		mpb.PrependDecorators(decor.Name("replay "), decor.Percentage(decor.WCSyncSpace)),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
			s := done()
			el := time.Since(start)
			rate := perSecond(s.Records, el)
			return fmt.Sprintf("%d/%d records %s %s rec/s %s readings/s ETA %s",
				s.Records, total, humanBytes(s.Bytes), siNumber(rate), siNumber(perSecond(s.Readings, el)), eta(total-s.Records, rate))
		})),
	)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			bar.SetCurrent(done().Records)
		case <-ctx.Done():
			bar.SetCurrent(done().Records)
			bar.Abort(false) // keep the last line on screen, complete or not
			c.Wait()
			return
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// eta is the time left at rate, rounded for display.
func eta(left int64, rate float64) string {
	if left <= 0 {
		return "0s"
	}
	if rate <= 0 {
		return "?"
	}
	return (time.Duration(float64(left)/rate*float64(time.Second)) + time.Second/2).Truncate(time.Second).String()
}

// siNumber formats a rate with a k/M/G suffix.
func siNumber(f float64) string {
	switch {
	case f >= 1e9:
		return fmt.Sprintf("%.2fG", f/1e9)
	case f >= 1e6:
		return fmt.Sprintf("%.2fM", f/1e6)
	case f >= 1e3:
		return fmt.Sprintf("%.1fk", f/1e3)
	}
	return fmt.Sprintf("%.0f", f)
}
