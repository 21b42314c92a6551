package parquetlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
)

// checkpoint is the durable state of one partition, kept on S3 beside the
// data it describes. Every version is written with a compare-and-swap
// (If-Match the version its writer read or wrote last; If-None-Match for
// the first), and every version differs from every other (generation,
// writer and offsets change), so an ETag names one version for good.
type checkpoint struct {
	Format    int    `json:"format"` // 2
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Generation counts claims; Writer names the claimant (instance and a
	// random token) and ClaimedAt says when.
	Generation uint64    `json:"generation"`
	Writer     string    `json:"writer"`
	ClaimedAt  time.Time `json:"claimed_at"`
	// NextOffset is the first offset whose rows are not in committed
	// files; -1 before the first window (the writer starts where its
	// caller says).
	NextOffset int64 `json:"next_offset"`
	// Window, when set, is a window being written: its files may exist,
	// and whoever continues must write exactly this window.
	Window *pendingWindow `json:"window,omitempty"`
	// Dedup names the duplicate filter as of NextOffset: a base snapshot
	// plus deltas, applied in order.
	Dedup dedupRefs `json:"dedup"`
	// Committed counts the windows committed so far (for humans).
	Committed uint64 `json:"committed_windows"`

	// Format 1 (before fencing) fields, read once to migrate.
	Pending []string                     `json:"pending,omitempty"`
	Seen    map[string]map[string]seqsV1 `json:"seen,omitempty"`
}

type seqsV1 [][2]uint64

type pendingWindow struct {
	First  int64    `json:"first_offset"`
	End    int64    `json:"end_offset"` // exclusive
	Keys   []string `json:"keys"`
	Rows   int64    `json:"rows"`
	Reason string   `json:"reason"`
}

type dedupRefs struct {
	Base   string   `json:"base,omitempty"`
	Deltas []string `json:"deltas,omitempty"`
	// DeltaBytes is the deltas' total size, to decide when to write a
	// new base.
	DeltaBytes int64 `json:"delta_bytes,omitempty"`
	BaseBytes  int64 `json:"base_bytes,omitempty"`
}

const checkpointFormat = 2

func (c Config) statePrefix() string {
	if c.StatePrefix == "" {
		return "_sink"
	}
	return strings.TrimSuffix(c.StatePrefix, "/")
}

// checkpointKey is {state prefix}/checkpoints/{topic}+{partition}.json.
func (c Config) checkpointKey() string {
	return fmt.Sprintf("%s/checkpoints/%s+%d.json", c.statePrefix(), c.Topic, c.Partition)
}

// stateDir holds the filter objects: {state prefix}/state/{topic}+{partition}/.
func (c Config) stateDir() string {
	return fmt.Sprintf("%s/state/%s+%d/", c.statePrefix(), c.Topic, c.Partition)
}

func (c *checkpoint) marshal() []byte {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		panic(err) // plain data: cannot fail
	}
	return data
}

func parseCheckpoint(data []byte) (*checkpoint, error) {
	var c checkpoint
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if c.NextOffset < -1 {
		return nil, fmt.Errorf("checkpoint: negative next_offset %d", c.NextOffset)
	}
	if c.Format > checkpointFormat {
		return nil, fmt.Errorf("checkpoint: format %d is newer than this build reads (%d)", c.Format, checkpointFormat)
	}
	if w := c.Window; w != nil && (w.First != c.NextOffset || w.End <= w.First) {
		return nil, fmt.Errorf("checkpoint: window [%d, %d) does not start at next_offset %d", w.First, w.End, c.NextOffset)
	}
	return &c, nil
}

// ErrFenced is returned when a compare-and-swap of the checkpoint fails:
// another writer has claimed the partition since this one did. The writer
// must stop writing the partition at once.
var ErrFenced = errors.New("parquetlog: fenced: another writer claimed the partition")

// cas writes c over the version etag names (or creates it when etag is
// "") and returns the new version's ETag. A lost condition is ErrFenced,
// unless the object now holds exactly c (a retried request whose first
// attempt succeeded).
func cas(ctx context.Context, store *objstore.Store, key string, c *checkpoint, etag string) (string, error) {
	data := c.marshal()
	opts := objstore.PutOptions{ContentType: "application/json", IfMatch: etag, IfNoneMatch: etag == ""}
	newTag, err := store.PutBytes(ctx, key, data, opts)
	if err == nil {
		return newTag, nil
	}
	if !errors.Is(err, objstore.ErrPreconditionFailed) {
		return "", fmt.Errorf("parquetlog: write checkpoint: %w", err)
	}
	got, gotTag, rerr := store.Read(ctx, key)
	if rerr == nil && bytes.Equal(got, data) {
		return gotTag, nil
	}
	return "", fmt.Errorf("%w (checkpoint %s)", ErrFenced, key)
}

// migrateV1 turns a format 1 checkpoint's duplicate filter into a seenSet
// whose vehicles count as heard from at now (ms).
func migrateV1(c *checkpoint, now int64) (*seenSet, error) {
	s := newSeenSet()
	for vid, epochs := range c.Seen {
		for hex, seqs := range epochs {
			epoch, err := strconv.ParseUint(hex, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("checkpoint: epoch %q of %s: %w", hex, vid, err)
			}
			for _, r := range seqs {
				if r[1] < r[0] {
					return nil, fmt.Errorf("checkpoint: bad range %v of %s", r, vid)
				}
				s.addRange(vid, epoch, seqRange(r), now)
			}
		}
	}
	return s, nil
}
