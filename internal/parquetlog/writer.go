package parquetlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Rules decide where windows end. They read only the records (offsets,
// Kafka timestamps, rows and bytes), so the same records from the same
// offset always give the same windows.
type Rules struct {
	// MaxRows closes a window once it holds this many rows.
	MaxRows int64
	// MaxBytes closes a window once its files have this many bytes of
	// Parquet (whole row groups: a file overshoots by up to one).
	MaxBytes int64
	// MaxAge closes a window before the first record whose Kafka timestamp
	// is this much later than the window's first record's.
	MaxAge time.Duration
	// QuietMargin is how far behind the wall clock a record's Kafka
	// timestamp may be when it is appended (producer buffering, clock
	// skew). A caught-up partition's window is closed once the wall clock
	// is MaxAge + QuietMargin past its first record: any record still to
	// come would have closed it by MaxAge anyway.
	QuietMargin time.Duration
}

// Config is one partition's writer.
type Config struct {
	Topic     string
	Partition int32
	// Writer names this process in checkpoints (e.g. the instance ID); a
	// random token is added per claim.
	Writer string
	// Start is where a partition without a checkpoint starts: an offset,
	// or -1 for its first record read.
	Start int64
	// StatePrefix is the folder, under the store's prefix, of the
	// checkpoints and filter state; "" means "_sink". Writers of one
	// partition with different state prefixes know nothing of each other:
	// give them different data prefixes too.
	StatePrefix string
	Rules       Rules
	Dedup       DedupConfig
	Files       parquetout.Options
}

// Deps are a Writer's dependencies.
type Deps struct {
	Store   *objstore.Store
	Logger  *slog.Logger
	Metrics *Metrics
	// Step, for tests, is called at each step of a commit: "intent" (the
	// window is recorded), "complete" (after each file), "state" (the
	// filter is stored), "committed" (the checkpoint moved on). It may
	// block, to interleave writers. If it returns an error the writer stops
	// there as a crash would: nothing is cleaned up.
	Step func(step string) error
}

// Record is one Kafka record, decoded. The Writer keeps nothing of Batch
// once Add returns: callers may reuse it.
type Record struct {
	Offset    int64
	Timestamp time.Time // the record's Kafka timestamp
	// Batch is the decoded batch, or nil when the record is not a valid
	// batch (Invalid says why): it takes an offset but adds no rows.
	Batch   *wire.Batch
	Invalid error
}

// Errors a Writer returns, wrapped. After any error but ErrConflict's
// caller decides to wait, the Writer is done: Abandon it, and Claim again
// to continue from the checkpoint.
var (
	// ErrConflict: a file exists at a key of a window the checkpoint does
	// not know (the checkpoint was deleted or reset, or another sink writes
	// the same prefix). The file is not replaced; someone must look.
	ErrConflict = errors.New("parquetlog: conflict")
	// ErrBroken: an earlier error left the window in an unknown state.
	ErrBroken = errors.New("parquetlog: writer is broken by an earlier error")
)

// Writer writes one Kafka partition's records into Parquet windows on S3.
// It is used by one goroutine.
type Writer struct {
	cfg      Config
	store    *objstore.Store
	log      *slog.Logger
	m        *Metrics
	step     func(string) error
	writerID string

	ckpt   *checkpoint
	etag   string
	seen   *seenSet // as of ckpt.NextOffset
	win    *window
	pinned *pendingWindow // the claimed checkpoint's window, until reproduced
	expect int64          // next offset expected; -1 until the first record
	split  parquetout.Splitter
	err    error // set once the Writer is done
	fresh  bool  // no window opened since the claim
	// readings and fixes of the batch in hand, for late-row accounting
	recordNs int64
}

// Claim takes ownership of the partition: it reads the checkpoint, writes
// it back with the next generation and this writer's name (a
// compare-and-swap: from then on every older writer's swaps fail), and
// loads the duplicate filter. The caller then feeds records from Next().
func Claim(ctx context.Context, cfg Config, deps Deps) (*Writer, error) {
	token := make([]byte, 6)
	rand.Read(token)
	w := &Writer{
		cfg: cfg, store: deps.Store, log: deps.Logger, m: deps.Metrics, step: deps.Step,
		writerID: cfg.Writer + "/" + hex.EncodeToString(token),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.m == nil {
		w.m = NewMetrics(nil, "parquetlog")
	}
	w.log = w.log.With("topic", cfg.Topic, "partition", cfg.Partition)
	key := cfg.checkpointKey()
	var lastErr error
	for attempt := range 6 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt*attempt) * 100 * time.Millisecond):
			}
		}
		err := w.claim(ctx, key)
		if err == nil {
			w.m.claims.Inc()
			return w, nil
		}
		if !errors.Is(err, ErrFenced) {
			return nil, err
		}
		lastErr = err // another claimant got in between our read and write
	}
	return nil, fmt.Errorf("parquetlog: claim partition %d: %w", cfg.Partition, lastErr)
}

func (w *Writer) claim(ctx context.Context, key string) error {
	data, etag, err := w.store.Read(ctx, key)
	var c *checkpoint
	switch {
	case errors.Is(err, objstore.ErrNotFound):
		c = &checkpoint{Topic: w.cfg.Topic, Partition: w.cfg.Partition, NextOffset: w.cfg.Start}
		etag = ""
	case err != nil:
		return fmt.Errorf("parquetlog: read checkpoint: %w", err)
	default:
		if c, err = parseCheckpoint(data); err != nil {
			return fmt.Errorf("parquetlog: %s: %w", w.store.URI(key), err)
		}
		if c.Topic != w.cfg.Topic || c.Partition != w.cfg.Partition {
			return fmt.Errorf("parquetlog: %s is for %s partition %d", w.store.URI(key), c.Topic, c.Partition)
		}
	}
	var seen *seenSet
	if c.Format < checkpointFormat && c.Format != 0 || (c.Format == 0 && etag != "") {
		// A checkpoint of the sink before fencing: its filter is inline,
		// and files of an interrupted write may be at its next offset.
		if seen, err = migrateV1(c, time.Now().UnixMilli()); err != nil {
			return err
		}
		for _, k := range c.Pending {
			if err := w.store.Delete(ctx, k); err != nil {
				return fmt.Errorf("parquetlog: migrate checkpoint: delete interrupted file: %w", err)
			}
		}
		w.log.Info("migrated a checkpoint of the sink before fencing", "next_offset", c.NextOffset, "vehicles", seen.len(), "interrupted_files_deleted", len(c.Pending))
		c.Pending, c.Seen = nil, nil
	}
	c.Format = checkpointFormat
	c.Generation++
	c.Writer = w.writerID
	c.ClaimedAt = time.Now().UTC()
	newTag, err := cas(ctx, w.store, key, c, etag)
	if err != nil {
		return err
	}
	// From here on this writer holds the partition: load the filter.
	if seen == nil {
		if seen, err = w.loadSeen(ctx, c.Dedup); err != nil {
			return err
		}
	}
	w.ckpt, w.etag, w.seen, w.pinned, w.expect, w.fresh = c, newTag, seen, c.Window, c.NextOffset, true
	w.m.dedupSize.Add(float64(seen.len()))
	w.collectGarbage(ctx)
	w.log.Info("partition claimed", "generation", c.Generation, "next_offset", c.NextOffset,
		"pinned_window", c.Window != nil, "dedup_vehicles", seen.len())
	return nil
}

func (w *Writer) loadSeen(ctx context.Context, refs dedupRefs) (*seenSet, error) {
	seen := newSeenSet()
	if refs.Base != "" {
		data, err := w.store.Get(ctx, refs.Base)
		if err != nil {
			return nil, fmt.Errorf("parquetlog: the checkpoint's duplicate filter: %w", err)
		}
		if seen, _, err = unmarshalSeen(data); err != nil {
			return nil, fmt.Errorf("parquetlog: %s: %w", w.store.URI(refs.Base), err)
		}
	}
	for _, k := range refs.Deltas {
		data, err := w.store.Get(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("parquetlog: the checkpoint's duplicate filter: %w", err)
		}
		d, end, err := unmarshalSeen(data)
		if err != nil {
			return nil, fmt.Errorf("parquetlog: %s: %w", w.store.URI(k), err)
		}
		seen.merge(d)
		seen.evict(w.cfg.Dedup, end)
	}
	return seen, nil
}

// collectGarbage deletes state objects the checkpoint does not refer to:
// left by a writer that crashed or was fenced between writing them and
// its checkpoint. Every other writer is fenced now, so none is in use.
func (w *Writer) collectGarbage(ctx context.Context) {
	objs, err := w.store.List(ctx, w.cfg.stateDir())
	if err != nil {
		w.log.Warn("could not list the partition's state objects", "err", err)
		return
	}
	for _, o := range objs {
		if o.Key == w.ckpt.Dedup.Base || slices.Contains(w.ckpt.Dedup.Deltas, o.Key) {
			continue
		}
		if err := w.store.Delete(ctx, o.Key); err != nil {
			w.log.Warn("could not delete an unused state object", "key", o.Key, "err", err)
		}
	}
}

// Next is the offset to feed records from: the checkpoint's next offset,
// or -1 when there is no checkpoint and Config.Start was -1.
func (w *Writer) Next() int64 { return w.ckpt.NextOffset }

// Committed is the offset up to which rows are in committed files: what a
// consumer group may commit.
func (w *Writer) Committed() int64 { return w.ckpt.NextOffset }

// Generation is the claim's generation.
func (w *Writer) Generation() uint64 { return w.ckpt.Generation }

// Open reports the offset range of the open window, if any.
func (w *Writer) Open() (first, end int64, ok bool) {
	if w.win == nil {
		return 0, 0, false
	}
	return w.win.first, w.win.end, true
}

// Add writes one record into the open window, closing and committing
// windows where the rules (or the claimed checkpoint's window) say. Records
// before the expected offset are skipped (already written).
func (w *Writer) Add(ctx context.Context, r Record) error {
	if w.err != nil {
		return w.err
	}
	if w.expect >= 0 && r.Offset < w.expect {
		return nil
	}
	ts := r.Timestamp.UnixMilli()
	if w.win != nil && w.win.pinned == nil && time.Duration(ts-w.win.firstTs)*time.Millisecond >= w.cfg.Rules.MaxAge {
		if err := w.commit(ctx, "age"); err != nil {
			return err
		}
	}
	if w.win == nil {
		if err := w.open(ctx, r.Offset, ts); err != nil {
			return err
		}
	}
	if err := w.addRecord(ctx, r, ts); err != nil {
		return w.fail(err)
	}
	switch {
	case w.win.pinned != nil:
		if w.win.end >= w.win.pinned.End {
			return w.commit(ctx, "recovered")
		}
	case w.win.rows >= w.cfg.Rules.MaxRows:
		return w.commit(ctx, "rows")
	case w.win.bytes() >= w.cfg.Rules.MaxBytes:
		return w.commit(ctx, "bytes")
	}
	return nil
}

// open starts a window at the record at offset.
func (w *Writer) open(ctx context.Context, offset, ts int64) error {
	if w.expect >= 0 && offset > w.expect && w.fresh {
		// Records between are gone (retention, compaction) or were
		// transaction markers.
		w.log.Warn("offsets skipped: the records are no longer in Kafka (retention?) or were transaction markers",
			"from", w.expect, "to", offset)
		if p := w.pinned; p != nil {
			if offset < p.End {
				w.log.Error("the interrupted window's records are partly gone from Kafka; keeping its files as they are",
					"window_first", p.First, "window_end", p.End, "first_offset_left", offset)
			}
			// The files of the pinned window are the only copy: keep them,
			// as committed.
			if err := w.commitPinnedAsIs(ctx, max(p.End, offset)); err != nil {
				return err
			}
		}
		w.ckpt.NextOffset = offset
	}
	if w.expect >= 0 && offset > w.expect && !w.fresh {
		// Offsets this writer was not given lie between the last window
		// and this one (transaction markers, records its caller filters
		// out): they hold no rows. The checkpoint's window must start at
		// its next offset, or no claim could read it back.
		w.ckpt.NextOffset = offset
	}
	if w.ckpt.NextOffset < 0 {
		w.ckpt.NextOffset = offset
	}
	w.win = newWindow(offset, ts, w.pinned)
	w.pinned = nil
	w.fresh = false
	return nil
}

func (w *Writer) addRecord(ctx context.Context, r Record, ts int64) error {
	win := w.win
	win.end = r.Offset + 1
	w.expect = win.end
	win.lastTs = max(win.lastTs, ts)
	if r.Batch == nil {
		w.m.records.WithLabelValues("invalid").Inc()
		w.log.Warn("skipping a record that is not a valid batch", "offset", r.Offset, "err", r.Invalid)
		return nil
	}
	b := r.Batch
	if w.seen.has(b.Identity) || win.delta.has(b.Identity) {
		w.m.records.WithLabelValues("duplicate").Inc()
		return nil
	}
	win.delta.add(b.Identity, ts)
	w.m.records.WithLabelValues("ok").Inc()
	w.recordNs = r.Timestamp.UnixNano()
	return w.split.Split(b, parquetout.Emit{
		Readings: func(h parquetout.Hour, rows []parquetout.ReadingRow) error {
			f, err := openFileFor(ctx, win.readings, h, w)
			if err != nil {
				return err
			}
			w.countRows(h, len(rows))
			return f.fw.Write(rows)
		},
		Locations: func(h parquetout.Hour, rows []parquetout.LocationRow) error {
			f, err := openFileFor(ctx, win.locations, h, w)
			if err != nil {
				return err
			}
			w.countRows(h, len(rows))
			return f.fw.Write(rows)
		},
	})
}

func (w *Writer) countRows(h parquetout.Hour, n int) {
	w.win.rows += int64(n)
	w.m.openRows.Add(float64(n))
	if (h.Start+3600)*1e9 <= w.recordNs-3600e9 {
		w.m.late.WithLabelValues(h.Table).Add(float64(n))
	}
}

// Tick closes the open window of a quiet partition: when the caller has
// read the partition to its end (caughtUp: every offset below the high
// watermark fetched, transaction markers included, so a transactional
// topic's trailing commit marker does not hold the window open) and the
// wall clock now is past the window's first record by MaxAge + QuietMargin.
// It returns whether it committed a window.
func (w *Writer) Tick(ctx context.Context, now time.Time, caughtUp bool) (bool, error) {
	if w.err != nil {
		return false, w.err
	}
	win := w.win
	if win == nil || win.pinned != nil || !caughtUp {
		return false, nil
	}
	if now.UnixMilli()-win.firstTs < (w.cfg.Rules.MaxAge + w.cfg.Rules.QuietMargin).Milliseconds() {
		return false, nil
	}
	return true, w.commit(ctx, "quiet")
}

// Cut commits the open window where it stands (replay at the end of its
// range, a sink told to flush on stop). reason labels the metrics. A window
// that must reproduce the claimed checkpoint's is not cut short.
func (w *Writer) Cut(ctx context.Context, reason string) error {
	if w.err != nil {
		return w.err
	}
	if w.win == nil || w.win.pinned != nil {
		return nil
	}
	return w.commit(ctx, reason)
}

// Abandon drops the open window without committing it (its uploads are
// aborted: nothing of it is visible) and ends the Writer. The next owner
// re-reads its records from the checkpoint. Safe to call more than once.
func (w *Writer) Abandon(ctx context.Context) {
	if w.win != nil {
		w.win.abort(ctx)
		w.m.openRows.Sub(float64(w.win.rows))
		w.win = nil
	}
	if w.seen != nil {
		w.m.dedupSize.Sub(float64(w.seen.len()))
		w.seen = nil
	}
	if w.err == nil {
		w.err = fmt.Errorf("parquetlog: writer of partition %d was abandoned", w.cfg.Partition)
	}
}

func (w *Writer) fail(err error) error {
	if w.win != nil {
		w.win.abort(context.Background())
		w.m.openRows.Sub(float64(w.win.rows))
		w.win = nil
	}
	if w.err == nil {
		if errors.Is(err, ErrFenced) {
			w.m.fenced.Inc()
			w.log.Warn("fenced: another writer claimed this partition; dropping the open window", "generation", w.ckpt.Generation)
		}
		w.err = fmt.Errorf("%w: %w", ErrBroken, err)
	}
	return err
}

// commit closes the open window and makes it durable:
//
//  1. finish encoding every file (the uploads get their last parts);
//  2. record the window in the checkpoint (compare-and-swap): from now on
//     whoever continues writes exactly this window;
//  3. complete the uploads, create-only (If-None-Match);
//  4. store the window's duplicate-filter delta (and, now and then, a new
//     base), content-addressed;
//  5. move the checkpoint past the window (compare-and-swap);
//  6. delete state objects the new checkpoint no longer refers to.
func (w *Writer) commit(ctx context.Context, reason string) error {
	win := w.win
	start := time.Now()
	files, err := win.close()
	if err != nil {
		return w.fail(err)
	}
	keys := make([]string, len(files))
	for i, f := range files {
		keys[i] = f.key
	}
	key := w.cfg.checkpointKey()
	pinned := win.pinned
	if pinned != nil {
		reason = "recovered"
		if !slices.Equal(pinned.Keys, keys) {
			w.log.Error("the interrupted window gave other files this time (has the code changed its rules?); files only it wrote will be deleted",
				"window_first", pinned.First, "before", pinned.Keys, "now", keys)
		}
	} else if len(files) > 0 {
		w.ckpt.Window = &pendingWindow{First: win.first, End: win.end, Keys: keys, Rows: win.rows, Reason: reason}
		if w.etag, err = cas(ctx, w.store, key, w.ckpt, w.etag); err != nil {
			return w.fail(err)
		}
	}

	if err := w.at("intent"); err != nil {
		return err
	}
	uploadStart := time.Now()
	for _, f := range files {
		_, err := f.up.Complete(ctx)
		if errors.Is(err, objstore.ErrPreconditionFailed) {
			if pinned == nil {
				if errors.Is(w.stillOwner(ctx), ErrFenced) {
					return w.fail(fmt.Errorf("%w (a file of this window exists already)", ErrFenced))
				}
				w.m.conflicts.Inc()
				return w.fail(fmt.Errorf("%w: %s exists but the checkpoint knows no window that wrote it (was the checkpoint deleted, or does another sink write this prefix?); not replacing it",
					ErrConflict, w.store.URI(f.key)))
			}
			// An earlier attempt at this same window wrote it: the same
			// records from the same state, so the same rows.
			w.log.Info("file already written by an earlier attempt at this window", "key", f.key)
			err = nil
		}
		if err != nil {
			return w.fail(err)
		}
		if err := w.at("complete"); err != nil {
			return err
		}
	}
	w.m.upload.Observe(time.Since(uploadStart).Seconds())

	// The duplicate filter as of win.end.
	refs := w.ckpt.Dedup
	refs.Deltas = slices.Clone(refs.Deltas)
	var superseded []string
	merged := w.seen
	if win.delta.len() > 0 {
		data, hash, err := win.delta.marshal(win.lastTs)
		if err != nil {
			return w.fail(err)
		}
		dk := fmt.Sprintf("%s%020d-%s.delta.json.zst", w.cfg.stateDir(), win.first, hash)
		if err := w.putState(ctx, dk, data); err != nil {
			return w.fail(err)
		}
		refs.Deltas = append(refs.Deltas, dk)
		refs.DeltaBytes += int64(len(data))
		before := merged.len()
		merged.merge(win.delta)
		grown := merged.len() - before
		forgot := merged.evict(w.cfg.Dedup, win.lastTs)
		w.m.dedupForgot.Add(float64(forgot))
		w.m.dedupSize.Add(float64(grown - forgot))
		if refs.DeltaBytes > max(refs.BaseBytes, 256<<10) || len(refs.Deltas) >= 64 {
			data, hash, err := merged.marshal(0)
			if err != nil {
				return w.fail(err)
			}
			bk := fmt.Sprintf("%s%020d-%s.base.json.zst", w.cfg.stateDir(), win.end, hash)
			if err := w.putState(ctx, bk, data); err != nil {
				return w.fail(err)
			}
			if refs.Base != "" {
				superseded = append(superseded, refs.Base)
			}
			superseded = append(superseded, refs.Deltas...)
			refs = dedupRefs{Base: bk, BaseBytes: int64(len(data))}
		}
	}

	if err := w.at("state"); err != nil {
		return err
	}
	w.ckpt.NextOffset = win.end
	w.ckpt.Window = nil
	w.ckpt.Dedup = refs
	w.ckpt.Committed++
	if w.etag, err = cas(ctx, w.store, key, w.ckpt, w.etag); err != nil {
		return w.fail(err)
	}
	w.win = nil
	w.m.openRows.Sub(float64(win.rows))
	if err := w.at("committed"); err != nil {
		return err
	}

	if pinned != nil {
		for _, k := range pinned.Keys {
			if !slices.Contains(keys, k) {
				if err := w.store.Delete(ctx, k); err != nil {
					w.log.Warn("could not delete a file of an interrupted window that this one did not write", "key", k, "err", err)
				}
			}
		}
	}
	for _, k := range superseded {
		if err := w.store.Delete(ctx, k); err != nil {
			w.log.Warn("could not delete a superseded state object", "key", k, "err", err)
		}
	}

	var bytes int64
	for _, f := range files {
		n := f.up.Size()
		bytes += n
		w.m.rows.WithLabelValues(f.table, reason).Add(float64(f.rows))
		w.m.files.WithLabelValues(f.table, reason).Inc()
		w.m.bytes.WithLabelValues(f.table, reason).Add(float64(n))
	}
	w.m.windows.WithLabelValues(reason).Inc()
	w.m.commit.Observe(time.Since(start).Seconds())
	w.log.Debug("window committed", "first_offset", win.first, "end_offset", win.end, "reason", reason,
		"files", len(files), "rows", win.rows, "bytes", bytes, "took", time.Since(start))
	return nil
}

// stillOwner returns ErrFenced (wrapped) if the checkpoint is no longer
// the version this writer wrote last, nil if it is.
func (w *Writer) stillOwner(ctx context.Context) error {
	_, etag, err := w.store.Read(ctx, w.cfg.checkpointKey())
	if err == nil && etag != w.etag {
		return ErrFenced
	}
	return nil
}

// at runs the test hook for step; an error from it stops the writer as a
// crash would.
func (w *Writer) at(step string) error {
	if w.step == nil {
		return nil
	}
	if err := w.step(step); err != nil {
		w.err = fmt.Errorf("%w: crashed at %s: %w", ErrBroken, step, err)
		w.win = nil
		return w.err
	}
	return nil
}

// commitPinnedAsIs records the claimed checkpoint's window as committed
// without rewriting it (its records are gone from Kafka).
func (w *Writer) commitPinnedAsIs(ctx context.Context, next int64) error {
	w.ckpt.NextOffset = next
	w.ckpt.Window = nil
	w.ckpt.Committed++
	var err error
	if w.etag, err = cas(ctx, w.store, w.cfg.checkpointKey(), w.ckpt, w.etag); err != nil {
		return w.fail(err)
	}
	w.pinned = nil
	return nil
}

// putState stores a content-addressed state object: if it exists, it
// holds these bytes already.
func (w *Writer) putState(ctx context.Context, key string, data []byte) error {
	_, err := w.store.PutBytes(ctx, key, data, objstore.PutOptions{ContentType: "application/zstd", IfNoneMatch: true})
	if err != nil && !errors.Is(err, objstore.ErrPreconditionFailed) {
		return fmt.Errorf("parquetlog: write state: %w", err)
	}
	return nil
}

// String describes the writer for logs.
func (w *Writer) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s[%d] gen %d next %d", w.cfg.Topic, w.cfg.Partition, w.ckpt.Generation, w.ckpt.NextOffset)
	if w.win != nil {
		fmt.Fprintf(&b, " window [%d,%d) %d rows", w.win.first, w.win.end, w.win.rows)
	}
	return b.String()
}
