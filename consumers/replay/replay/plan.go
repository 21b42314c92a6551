package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Range is the slice of one partition a replay reads: offsets [Start, End).
type Range struct {
	Partition     int32 `json:"partition"`
	Start         int64 `json:"start"`
	End           int64 `json:"end"`
	LogStart      int64 `json:"log_start"`      // the partition's log start offset when planned
	HighWatermark int64 `json:"high_watermark"` // the partition's high watermark when planned
	// Bytes estimates the range's size in the log: the partition's size on
	// the broker, prorated by offsets; -1 when the broker did not say.
	Bytes int64 `json:"bytes"`
}

// Records is the number of offsets in the range: the records a replay reads
// (for --vehicle, the vehicle's records are a subset of them).
func (r Range) Records() int64 { return r.End - r.Start }

// Plan is what a replay reads, fixed before any record is read.
type Plan struct {
	Topic      string  `json:"topic"`
	Partitions int32   `json:"partitions"` // the topic's partition count
	Slice      string  `json:"slice"`      // the slice in words
	Vehicle    string  `json:"vehicle,omitempty"`
	Ranges     []Range `json:"ranges"` // ascending by partition
}

// Records sums the records of every range.
func (p Plan) Records() int64 {
	var n int64
	for _, r := range p.Ranges {
		n += r.Records()
	}
	return n
}

// Bytes sums the estimated bytes of every range, or returns -1 when the
// broker gave no sizes.
func (p Plan) Bytes() int64 {
	var n int64
	for _, r := range p.Ranges {
		if r.Bytes < 0 {
			return -1
		}
		n += r.Bytes
	}
	return n
}

// WriteTo prints the plan as the --dry-run output.
func (p Plan) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	fmt.Fprintf(cw, "replay plan: topic %s (%d partitions), %s\n", p.Topic, p.Partitions, p.Slice)
	tw := tabwriter.NewWriter(cw, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "partition\tstart offset\tend offset\trecords\test. bytes\tlog start\thigh watermark\t")
	for _, r := range p.Ranges {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t%d\t%d\t\n", r.Partition, r.Start, r.End, r.Records(), humanBytes(r.Bytes), r.LogStart, r.HighWatermark)
	}
	tw.Flush()
	fmt.Fprintf(cw, "records to read: %d", p.Records())
	if p.Vehicle != "" {
		// A --vehicle plan reads its partition's records but writes only the
		// vehicle's; the count is an upper bound then.
		fmt.Fprint(cw, " (an upper bound when --vehicle filters)")
	}
	fmt.Fprintf(cw, "\nestimated bytes to read: %s\n", humanBytes(p.Bytes()))
	_, err := fmt.Fprint(cw, "")
	if err == nil {
		err = cw.err
	}
	return cw.n, err
}

// humanBytes formats n with a binary unit, or "unknown" for -1.
func humanBytes(n int64) string {
	if n < 0 {
		return "unknown"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// PartitionFor returns the partition Kafka's default partitioner (murmur2 of
// the key, sign bit cleared, modulo the partition count) puts a vehicle's
// records in, which is where the bridge produces them.
func PartitionFor(vehicleID string, partitions int) int32 {
	p := kgo.StickyKeyPartitioner(nil).ForTopic("")
	return int32(p.Partition(&kgo.Record{Key: []byte(vehicleID)}, partitions))
}

// millisCeil is the first whole Kafka millisecond at or after t: a record
// (millisecond timestamps) is at or after t exactly when it is at or after
// this millisecond.
func millisCeil(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// plan asks the cluster where the slice starts and ends. High watermarks are
// listed first, so the plan never reaches past what the topic held then.
func plan(ctx context.Context, cfg Config, adm *kadm.Client, logger *slog.Logger) (Plan, error) {
	p := Plan{Topic: cfg.Topic, Slice: cfg.describe(), Vehicle: cfg.Vehicle}
	details, err := adm.ListTopics(ctx, cfg.Topic)
	if err != nil {
		return p, fmt.Errorf("kafka: metadata of %s: %w", cfg.Topic, err)
	}
	td, ok := details[cfg.Topic]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return p, cli.FieldError("topic", "topic %q does not exist", cfg.Topic)
	}
	if td.Err != nil {
		return p, fmt.Errorf("kafka: metadata of %s: %w", cfg.Topic, td.Err)
	}
	n := len(td.Partitions)
	if n == 0 {
		return p, fmt.Errorf("kafka: topic %s has no partitions", cfg.Topic)
	}
	p.Partitions = int32(n)

	// The partitions to read, each with its --offsets bounds (Unset when
	// the time range or the log decides).
	var want []OffsetRange
	if cfg.offsetMode() {
		if want, err = ParseOffsets(cfg.Offsets); err != nil {
			return p, cli.FieldError("offsets", "%v", err)
		}
		for _, r := range want {
			if int(r.Partition) >= n {
				return p, cli.FieldError("offsets", "partition %d does not exist: %s has partitions 0 to %d", r.Partition, cfg.Topic, n-1)
			}
		}
	} else {
		for i := range n {
			want = append(want, OffsetRange{Partition: int32(i), Start: Unset, End: Unset})
		}
	}
	if cfg.Vehicle != "" {
		vp := PartitionFor(cfg.Vehicle, n)
		i := slices.IndexFunc(want, func(r OffsetRange) bool { return r.Partition == vp })
		if i < 0 {
			return p, cli.FieldError("offsets", "vehicle %s is on partition %d of %s, which --offsets does not name", cfg.Vehicle, vp, cfg.Topic)
		}
		p.Slice += fmt.Sprintf(" (partition %d)", vp)
		want = want[i : i+1]
	}

	ends, err := listed(adm.ListEndOffsets(ctx, cfg.Topic))
	if err != nil {
		return p, fmt.Errorf("kafka: high watermarks of %s: %w", cfg.Topic, err)
	}
	starts, err := listed(adm.ListStartOffsets(ctx, cfg.Topic))
	if err != nil {
		return p, fmt.Errorf("kafka: log start offsets of %s: %w", cfg.Topic, err)
	}
	var afterFrom, afterTo kadm.ListedOffsets
	if cfg.timeMode() {
		from, to, err := cfg.timeRange()
		if err != nil {
			return p, err
		}
		if !from.IsZero() {
			if afterFrom, err = listed(adm.ListOffsetsAfterMilli(ctx, millisCeil(from), cfg.Topic)); err != nil {
				return p, fmt.Errorf("kafka: offsets at --from: %w", err)
			}
		}
		if !to.IsZero() {
			if afterTo, err = listed(adm.ListOffsetsAfterMilli(ctx, millisCeil(to), cfg.Topic)); err != nil {
				return p, fmt.Errorf("kafka: offsets at --to: %w", err)
			}
		}
	}
	sizes := partitionSizes(ctx, adm, cfg.Topic, want, logger)

	for _, w := range want {
		part := w.Partition
		hw, ok1 := ends.Lookup(cfg.Topic, part)
		ls, ok2 := starts.Lookup(cfg.Topic, part)
		if !ok1 || !ok2 {
			return p, fmt.Errorf("kafka: no offsets listed for %s partition %d", cfg.Topic, part)
		}
		r := Range{Partition: part, LogStart: ls.Offset, HighWatermark: hw.Offset, Start: ls.Offset, End: hw.Offset, Bytes: -1}
		// ListOffsets by time gives the first offset whose record is at or
		// after the time (the high watermark if none is): every record
		// before it is earlier.
		if o, ok := afterFrom.Lookup(cfg.Topic, part); ok {
			r.Start = o.Offset
		}
		if o, ok := afterTo.Lookup(cfg.Topic, part); ok {
			r.End = min(r.End, o.Offset)
		}
		if w.Start != Unset {
			r.Start = w.Start
			if r.Start < r.LogStart {
				logger.Warn("--offsets start is before the log start (older records were deleted); starting at the log start",
					"partition", part, "start", w.Start, "log_start", r.LogStart)
				r.Start = r.LogStart
			}
		}
		if w.End != Unset {
			r.End = w.End
			if r.End > r.HighWatermark {
				logger.Warn("--offsets end is past the high watermark; stopping at the high watermark (replay never waits for new data)",
					"partition", part, "end", w.End, "high_watermark", r.HighWatermark)
				r.End = r.HighWatermark
			}
		}
		if r.Start > r.End {
			if w.Start != Unset {
				logger.Warn("--offsets start is past the end of the range; nothing to read", "partition", part, "start", w.Start, "end", r.End)
			}
			r.Start = r.End
		}
		if size, ok := sizes[part]; ok {
			r.Bytes = 0
			if logged := r.HighWatermark - r.LogStart; logged > 0 {
				r.Bytes = int64(float64(size) * float64(r.Records()) / float64(logged))
			}
		}
		p.Ranges = append(p.Ranges, r)
	}
	return p, nil
}

// partitionSizes returns the bytes each partition of topic takes on its
// leader's disk, or nothing (logged at debug) when the broker will not say
// (DescribeLogDirs needs the Describe permission on the cluster).
func partitionSizes(ctx context.Context, adm *kadm.Client, topic string, want []OffsetRange, logger *slog.Logger) map[int32]int64 {
	set := kadm.TopicsSet{}
	for _, r := range want {
		set.Add(topic, r.Partition)
	}
	dirs, err := adm.DescribeAllLogDirs(ctx, set)
	if err != nil {
		logger.Debug("no partition sizes for the byte estimate", "err", err)
		return nil
	}
	sizes := map[int32]int64{}
	dirs.Each(func(d kadm.DescribedLogDir) {
		if d.Err != nil {
			return
		}
		for _, parts := range d.Topics {
			for _, pd := range parts {
				if pd.Topic == topic && !pd.IsFuture && pd.Size > sizes[pd.Partition] {
					sizes[pd.Partition] = pd.Size
				}
			}
		}
	})
	return sizes
}

// listed returns the offsets, or the first error of a listing.
func listed(l kadm.ListedOffsets, err error) (kadm.ListedOffsets, error) {
	if err != nil {
		return nil, err
	}
	if err := l.Error(); err != nil {
		return nil, err
	}
	return l, nil
}
