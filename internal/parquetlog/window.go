package parquetlog

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
)

// window is the open window of a partition: records [first, end), their
// rows streaming into one file per (table, hour) they fall in, and the
// batch identities they added to the duplicate filter.
type window struct {
	first, end      int64
	firstTs, lastTs int64          // record time, ms
	pinned          *pendingWindow // from the claimed checkpoint: must be reproduced exactly
	readings        map[parquetout.Hour]*openFile[parquetout.ReadingRow]
	locations       map[parquetout.Hour]*openFile[parquetout.LocationRow]
	rows            int64
	delta           *seenSet
}

type openFile[T parquetout.Row] struct {
	key string
	up  *objstore.Upload
	fw  *parquetout.FileWriter[T]
}

func newWindow(first int64, ts int64, pinned *pendingWindow) *window {
	return &window{
		first: first, end: first, firstTs: ts, lastTs: ts, pinned: pinned,
		readings:  map[parquetout.Hour]*openFile[parquetout.ReadingRow]{},
		locations: map[parquetout.Hour]*openFile[parquetout.LocationRow]{},
		delta:     newSeenSet(),
	}
}

// bytes is what the window's files have handed to S3 so far: whole row
// groups, so it is a function of the rows alone.
func (w *window) bytes() int64 {
	var n int64
	for _, f := range w.readings {
		n += f.up.Size()
	}
	for _, f := range w.locations {
		n += f.up.Size()
	}
	return n
}

// openFileFor returns the window's file for hour h, starting its upload
// the first time.
func openFileFor[T parquetout.Row](ctx context.Context, files map[parquetout.Hour]*openFile[T], h parquetout.Hour, wr *Writer) (*openFile[T], error) {
	if f := files[h]; f != nil {
		return f, nil
	}
	key := parquetout.ObjectKey(h, wr.cfg.Topic, wr.cfg.Partition, wr.win.first)
	up, err := wr.store.NewUpload(ctx, key, objstore.PutOptions{
		ContentType: "application/vnd.apache.parquet",
		IfNoneMatch: true, // a committed file is never replaced
		Metadata: map[string]string{
			"fleet-topic": wr.cfg.Topic, "fleet-partition": strconv.Itoa(int(wr.cfg.Partition)),
			"fleet-first-offset": strconv.FormatInt(wr.win.first, 10), "fleet-writer": wr.writerID,
		},
	})
	if err != nil {
		return nil, err
	}
	fw, err := parquetout.NewFileWriter[T](up, wr.cfg.Files)
	if err != nil {
		up.Abort(ctx)
		return nil, err
	}
	f := &openFile[T]{key: key, up: up, fw: fw}
	files[h] = f
	return f, nil
}

// fileResult is one closed file, ready to complete.
type fileResult struct {
	key   string
	table string
	rows  int64
	up    *objstore.Upload
}

// close finishes every file's encoding (the last row groups and footers go
// to the uploads) and returns them in key order.
func (w *window) close() ([]fileResult, error) {
	var out []fileResult
	for _, h := range slices.SortedFunc(maps.Keys(w.readings), parquetout.Hour.Compare) {
		f := w.readings[h]
		if err := f.fw.Close(); err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
		out = append(out, fileResult{key: f.key, table: parquetout.Readings, rows: f.fw.Rows(), up: f.up})
	}
	for _, h := range slices.SortedFunc(maps.Keys(w.locations), parquetout.Hour.Compare) {
		f := w.locations[h]
		if err := f.fw.Close(); err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
		out = append(out, fileResult{key: f.key, table: parquetout.Locations, rows: f.fw.Rows(), up: f.up})
	}
	slices.SortFunc(out, func(a, b fileResult) int {
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return 0
	})
	return out, nil
}

// abort discards the window's uploads.
func (w *window) abort(ctx context.Context) {
	for _, f := range w.readings {
		f.up.Abort(ctx)
	}
	for _, f := range w.locations {
		f.up.Abort(ctx)
	}
}
