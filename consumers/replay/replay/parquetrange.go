package replay

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
)

// rangeManifest describes the backfill of one range in a prefix, at
// {prefix}/_replay/{topic}+{partition}+{first offset, 20 digits}/range.json,
// beside that range's checkpoint and duplicate filter (parquetlog's state
// prefix). It says what the range's files were made with, so that a replay
// that continues the range uses the same (or is refused), and how far the
// range reaches, so that a replay of another range that overlaps it is
// refused before it writes rows twice.
type rangeManifest struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Start     int64  `json:"start"`
	// End is the largest end a replay of the range planned (exclusive).
	End     int64          `json:"end"`
	Vehicle string         `json:"vehicle,omitempty"`
	Signals []string       `json:"signals,omitempty"`
	Options ParquetOptions `json:"options"`
	// Replay is the --resume name of the replay that last extended it.
	Replay  string    `json:"replay,omitempty"`
	Updated time.Time `json:"updated"`
}

// rangeDir is the state prefix of a range's backfill.
func rangeDir(topic string, partition int32, start int64) string {
	return fmt.Sprintf("%s/%s+%d+%020d", statePrefix, topic, partition, start)
}

func (p *parquetBackfill) manifest(rg Range) rangeManifest {
	return rangeManifest{
		Topic: p.plan.Topic, Partition: rg.Partition, Start: rg.Start, End: rg.End,
		Vehicle: p.cfg.Vehicle, Signals: slices.Clone([]string(p.cfg.Signals)), Options: p.cfg.Parquet,
		Replay: p.cfg.Resume,
	}
}

// checkRanges reads the manifests of the prefix's backfills of m's
// partition. It refuses m when it overlaps another range's, or when it
// starts where another starts but with other settings (the files would
// differ). It returns the manifest of the range that starts where m
// does, if any.
func (p *parquetBackfill) checkRanges(ctx context.Context, m rangeManifest) (*rangeManifest, error) {
	dir := fmt.Sprintf("%s/%s+%d+", statePrefix, m.Topic, m.Partition)
	objs, err := p.store.List(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("--to-parquet: listing the backfills in %s: %w", p.store.URI(""), err)
	}
	var same *rangeManifest
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, "/range.json") {
			continue
		}
		data, err := p.store.Get(ctx, o.Key)
		if err != nil {
			return nil, fmt.Errorf("--to-parquet: %w", err)
		}
		var e rangeManifest
		if err := json.Unmarshal(data, &e); err != nil {
			return nil, fmt.Errorf("--to-parquet: %s: %w", p.store.URI(o.Key), err)
		}
		if e.Start == m.Start {
			if err := m.sameSettings(e, p.store.URI("")); err != nil {
				return nil, err
			}
			same = &e
			continue
		}
		if e.Start < m.End && m.Start < e.End {
			return nil, cli.FieldError("to-parquet", "%s holds a backfill of %s partition %d, offsets %d-%d; this replay's range %d-%d overlaps it and would write its rows twice: write into another prefix, or replay that range (from offset %d) to continue or extend it",
				p.store.URI(""), e.Topic, e.Partition, e.Start, e.End, m.Start, m.End, e.Start)
		}
	}
	return same, nil
}

// sameSettings fails, naming the first flag, unless m's filters and
// options are earlier's: a range continued with other settings would not
// give the files one replay gives.
func (m rangeManifest) sameSettings(earlier rangeManifest, uri string) error {
	differs := func(flag string, was, is any) error {
		return cli.FieldError(flag, "%s holds a backfill of %s partition %d from offset %d made with --%s %v, not %v: a range continued with other settings gives other files; use the same, or write into another prefix",
			uri, m.Topic, m.Partition, m.Start, flag, was, is)
	}
	switch {
	case earlier.Vehicle != m.Vehicle:
		return differs("vehicle", quoteEmpty(earlier.Vehicle), quoteEmpty(m.Vehicle))
	case !slices.Equal(earlier.Signals, m.Signals):
		return differs("signals", quoteEmpty(strings.Join(earlier.Signals, ",")), quoteEmpty(strings.Join(m.Signals, ",")))
	}
	if flag, was, is := earlier.Options.diff(m.Options); flag != "" {
		return differs(flag, was, is)
	}
	return nil
}

// diff names the flag of the first setting in which o and n differ, with
// the two values; "" when they are the same.
func (o ParquetOptions) diff(n ParquetOptions) (flag string, was, is any) {
	switch {
	case o.MaxFileRows != n.MaxFileRows:
		return "max-file-rows", o.MaxFileRows, n.MaxFileRows
	case o.MaxFileBytes != n.MaxFileBytes:
		return "max-file-bytes", o.MaxFileBytes, n.MaxFileBytes
	case o.MaxFileAge != n.MaxFileAge:
		return "max-file-age", o.MaxFileAge, n.MaxFileAge
	case o.RowGroupRows != n.RowGroupRows:
		return "row-group-rows", o.RowGroupRows, n.RowGroupRows
	case o.Compression != n.Compression:
		return "compression", o.Compression, n.Compression
	case o.DedupEpochs != n.DedupEpochs:
		return "dedup-epochs", o.DedupEpochs, n.DedupEpochs
	case o.DedupTTL != n.DedupTTL:
		return "dedup-ttl", o.DedupTTL, n.DedupTTL
	case o.DedupMaxVehicles != n.DedupMaxVehicles:
		return "dedup-max-vehicles", o.DedupMaxVehicles, n.DedupMaxVehicles
	}
	return "", nil, nil
}

func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

func (p *parquetBackfill) putManifest(ctx context.Context, m rangeManifest) error {
	m.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	key := rangeDir(m.Topic, m.Partition, m.Start) + "/range.json"
	if _, err := p.store.PutBytes(ctx, key, data, objstore.PutOptions{ContentType: "application/json"}); err != nil {
		return fmt.Errorf("--to-parquet: %w", err)
	}
	return nil
}
