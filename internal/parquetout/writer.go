package parquetout

import (
	"fmt"
	"io"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
)

// Options shape the files. The zero value is not usable; DefaultOptions is.
type Options struct {
	// Compression of pages: zstd, snappy, gzip or none.
	Compression string
	// RowGroupRows is the rows per row group; a row group is encoded,
	// compressed and handed to the output when it fills.
	RowGroupRows int
	// Version goes into the files' created_by ("fleetpipe VERSION").
	Version string
}

// DefaultOptions are what the services use unless told otherwise.
var DefaultOptions = Options{Compression: "zstd", RowGroupRows: 500_000, Version: "0.2.0"}

// Codec returns the Parquet codec named name, or an error listing the
// names it knows.
func Codec(name string) (compress.Codec, error) {
	switch name {
	case "zstd":
		return lowMemZstd, nil
	case "snappy":
		return &parquet.Snappy, nil
	case "gzip":
		return &parquet.Gzip, nil
	case "none":
		return &parquet.Uncompressed, nil
	}
	return nil, fmt.Errorf("%q: want zstd, snappy, gzip or none", name)
}

// Row is a row type of one of the tables.
type Row interface{ ReadingRow | LocationRow }

// FileWriter streams rows of one table into one Parquet file. Rows are
// buffered (encoded and compressed page by page) until a row group is full,
// then the row group is written to the output; Close writes the last row
// group and the footer. Memory is about one compressed row group plus one
// page per column, whatever the file's size. A FileWriter is used by one
// goroutine.
type FileWriter[T Row] struct {
	w    *parquet.GenericWriter[T]
	rows int64
}

// NewFileWriter starts a file on out.
func NewFileWriter[T Row](out io.Writer, opts Options) (*FileWriter[T], error) {
	codec, err := Codec(opts.Compression)
	if err != nil {
		return nil, err
	}
	if opts.RowGroupRows < 1 {
		return nil, fmt.Errorf("parquetout: %d rows per row group", opts.RowGroupRows)
	}
	w := parquet.NewGenericWriter[T](out,
		parquet.Compression(codec),
		parquet.MaxRowsPerRowGroup(int64(opts.RowGroupRows)),
		parquet.CreatedBy("fleetpipe", opts.Version, ""),
		// The output buffers already (an upload's part): hand it each row
		// group as it is done, so that what a file has written is known.
		parquet.WriteBufferSize(0),
		// Min/max live in the column index and the row group's statistics,
		// which is where readers look; the copy in each page's header costs
		// a second pass over every page's values.
		parquet.DataPageStatistics(false),
		parquet.BloomFilters(parquet.SplitBlockFilter(10, "vehicle_id")),
		// Min/max of these say nothing a query skips row groups by, and
		// computing them is a string comparison a row each.
		parquet.SkipPageBounds("unit"), parquet.SkipPageBounds("value_type"), parquet.SkipPageBounds("batch_index"),
		parquet.SkipPageBounds("capture_id"), parquet.SkipPageBounds("capture_rule"),
	)
	return &FileWriter[T]{w: w}, nil
}

// Write adds rows to the file. It copies what it needs: rows may be reused
// once it returns.
func (f *FileWriter[T]) Write(rows []T) error {
	n, err := f.w.Write(rows)
	f.rows += int64(n)
	if err != nil {
		return fmt.Errorf("parquetout: write rows: %w", err)
	}
	return nil
}

// Rows is the number of rows written so far.
func (f *FileWriter[T]) Rows() int64 { return f.rows }

// Close writes the last row group and the footer to the output. It does not
// close the output.
func (f *FileWriter[T]) Close() error {
	if err := f.w.Close(); err != nil {
		return fmt.Errorf("parquetout: finish file: %w", err)
	}
	return nil
}
