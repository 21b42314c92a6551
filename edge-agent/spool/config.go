package spool

import (
	"flag"
	"fmt"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// FsyncPolicy says when appended records reach stable storage.
type FsyncPolicy string

const (
	// FsyncAlways fsyncs every Append before it returns (the default).
	FsyncAlways FsyncPolicy = "always"
	// FsyncInterval groups appends: Append returns after the next fsync
	// that covers its record, at most one every FsyncInterval.
	FsyncInterval FsyncPolicy = "interval"
	// FsyncNever leaves write-back to the OS: a power cut can lose the
	// last seconds of appends (a process crash loses nothing).
	FsyncNever FsyncPolicy = "never"
)

// FullPolicy says what Append does when the spool is at MaxBytes.
type FullPolicy string

const (
	// DropOldest deletes the oldest segment of bulk records (of high
	// records when no bulk remain) until the new record fits (the default).
	DropOldest FullPolicy = "drop-oldest"
	// Stop rejects the append with ErrSpoolFull.
	Stop FullPolicy = "stop"
)

// Config configures a spool. Zero values take the defaults noted.
type Config struct {
	// Dir holds the spool's files; it is created if missing. One spool
	// per directory: Open locks it.
	Dir string
	// Fsync is the durability policy (default always).
	Fsync FsyncPolicy
	// FsyncInterval is the group-commit period of FsyncInterval (default 50ms).
	FsyncInterval time.Duration
	// SegmentBytes is the size at which a segment file is closed and a new
	// one started (default 4 MiB, or MaxBytes/8 if smaller). Space is
	// freed, and dropped when full, a whole segment at a time.
	SegmentBytes int64
	// MaxBytes bounds the segment files' total size (default 256 MiB).
	MaxBytes int64
	// MaxAge drops a segment once its newest record was appended longer ago
	// than this (default 7 days; negative: no age bound). Records stamped
	// before 2020 (a board that booted without a real-time clock) are
	// never aged out; MaxBytes still bounds them.
	MaxAge time.Duration
	// Full is the policy at MaxBytes (default drop-oldest).
	Full FullPolicy
	// AckSyncInterval bounds how long an Ack stays only in the page cache
	// (default 5s): a power cut forgets at most this long's acks, whose
	// batches are then sent again. A process crash forgets none. Every
	// sync is an fsync per segment with new acks (about 0.1 ms of CPU
	// each on a typical board's flash), so a short interval costs a
	// steady trickle of CPU to save a few re-sent batches per power cut.
	AckSyncInterval time.Duration
	// SeqLease is, under FsyncNever only, how many seqs one durable write
	// of the state file reserves ahead (default 1024): after a power cut
	// the seq jumps by up to this much rather than reuse a seq that may
	// have been sent.
	SeqLease uint64
	// MaxRecordBytes bounds a payload (default 8 MiB, or MaxBytes/4 if smaller).
	MaxRecordBytes int
}

// RegisterFlags declares the spool's flags, named spool-*.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, "spool-dir", "/var/lib/fleetpipe/spool", "directory of the durable spool")
	fs.StringVar((*string)(&c.Fsync), "spool-fsync", string(FsyncAlways), "when appends reach the disk: always, interval or never")
	fs.DurationVar(&c.FsyncInterval, "spool-fsync-interval", 50*time.Millisecond, "with --spool-fsync=interval: group fsync period")
	fs.Int64Var(&c.SegmentBytes, "spool-segment-bytes", 0, "segment file size (0: 4 MiB, or max-bytes/8 if smaller)")
	fs.Int64Var(&c.MaxBytes, "spool-max-bytes", 256<<20, "bound on the spool's size on disk")
	fs.DurationVar(&c.MaxAge, "spool-max-age", 7*24*time.Hour, "drop spooled batches older than this (negative: never)")
	fs.StringVar((*string)(&c.Full), "spool-full", string(DropOldest), "when the spool is full: drop-oldest (bulk signals first) or stop")
	fs.DurationVar(&c.AckSyncInterval, "spool-ack-sync-interval", 5*time.Second, "how long acks may stay unsynced (a power cut re-sends at most this long's acked batches)")
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.Fsync == "" {
		c.Fsync = FsyncAlways
	}
	if c.FsyncInterval == 0 {
		c.FsyncInterval = 50 * time.Millisecond
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 256 << 20
	}
	if c.SegmentBytes == 0 {
		c.SegmentBytes = max(min(4<<20, c.MaxBytes/8), 4<<10)
	}
	if c.MaxAge == 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.Full == "" {
		c.Full = DropOldest
	}
	if c.AckSyncInterval == 0 {
		c.AckSyncInterval = 5 * time.Second
	}
	if c.SeqLease == 0 {
		c.SeqLease = 1024
	}
	if c.MaxRecordBytes == 0 {
		c.MaxRecordBytes = int(min(8<<20, c.MaxBytes/4))
	}
	return c
}

// Validate names the first bad field (by its flag) after defaults apply.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Dir == "":
		return cli.FieldError("spool-dir", "is empty")
	case c.Fsync != FsyncAlways && c.Fsync != FsyncInterval && c.Fsync != FsyncNever:
		return cli.FieldError("spool-fsync", "%q: want always, interval or never", c.Fsync)
	case c.FsyncInterval < 0 || c.FsyncInterval > 10*time.Second:
		return cli.FieldError("spool-fsync-interval", "%v: want up to 10s", c.FsyncInterval)
	case c.SegmentBytes < 1<<10 || c.SegmentBytes > 1<<30:
		return cli.FieldError("spool-segment-bytes", "%d: want 1 KiB to 1 GiB", c.SegmentBytes)
	case c.MaxBytes < 2*c.SegmentBytes:
		return cli.FieldError("spool-max-bytes", "%d: want at least twice the segment size (%d)", c.MaxBytes, c.SegmentBytes)
	case c.Full != DropOldest && c.Full != Stop:
		return cli.FieldError("spool-full", "%q: want drop-oldest or stop", c.Full)
	case c.AckSyncInterval < 0:
		return cli.FieldError("spool-ack-sync-interval", "%v is negative", c.AckSyncInterval)
	case c.MaxRecordBytes < 0 || c.MaxRecordBytes > maxPayload || int64(c.MaxRecordBytes) > c.MaxBytes/2:
		return fmt.Errorf("spool: MaxRecordBytes %d: want at most %d and half of max-bytes", c.MaxRecordBytes, maxPayload)
	}
	return nil
}
