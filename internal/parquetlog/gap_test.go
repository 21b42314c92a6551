package parquetlog_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
)

// TestCrashAfterGap: offsets the writer is never given (transaction
// markers, records a replay filters out) may fall between two windows, so
// a window can start past the previous one's end. A writer dies at each
// step of such a window's commit; the next claim must read its checkpoint
// and end with every row exactly once.
func TestCrashAfterGap(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		all, _ := makeRecords(150)
		// Every 7th offset is never fed; a batch counts once if any of
		// its copies is.
		var recs []parquetlog.Record
		want := map[rowID]int{}
		for _, r := range all {
			if r.Offset%7 == 6 {
				continue
			}
			recs = append(recs, r)
			if b := r.Batch; b != nil {
				for k := range b.Readings {
					want[rowID{parquetout.Readings, b.VehicleID, b.Epoch, b.Seq, int32(k)}] = 1
				}
				want[rowID{parquetout.Locations, b.VehicleID, b.Epoch, b.Seq, 0}] = 1
			}
		}
		for _, step := range steps {
			t.Run(step, func(t *testing.T) {
				s := newStore()
				ctx := context.Background()
				commits := 0
				crashing := parquetlog.Deps{Store: s, Logger: logger(t), Step: func(st string) error {
					if st == "committed" {
						commits++
					}
					if st == step && commits >= 3 { // the window [91, 121) after the gap at 90
						return errCrash
					}
					return nil
				}}
				crashCtx, crash := context.WithCancel(ctx)
				err := feedFrom(crashCtx, testConfig(2), crashing, recs)
				crash()
				if !errors.Is(err, errCrash) {
					t.Fatalf("first writer: %v, want the simulated crash", err)
				}
				if err := feedFrom(ctx, testConfig(2), parquetlog.Deps{Store: s, Logger: logger(t)}, recs); err != nil {
					t.Fatalf("second writer: %v", err)
				}
				if d := diffRows(readRows(t, s), want); d != "" {
					t.Fatal(d)
				}
				checkOnlyReferencedState(t, s, 2)
			})
		}
	})
}

// feedFrom is feed for records whose offsets need not be contiguous.
func feedFrom(ctx context.Context, cfg parquetlog.Config, deps parquetlog.Deps, recs []parquetlog.Record) error {
	w, err := parquetlog.Claim(ctx, cfg, deps)
	if err != nil {
		return err
	}
	defer w.Abandon(context.Background())
	for _, r := range recs {
		if r.Offset < w.Next() {
			continue
		}
		if err := w.Add(ctx, r); err != nil {
			return err
		}
	}
	return w.Cut(ctx, "end")
}
