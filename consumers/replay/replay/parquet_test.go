package replay

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// minioBucket creates a fresh bucket on the real MinIO and returns its
// name and the flags that reach it.
func minioBucket(t *testing.T) (string, []string) {
	t.Helper()
	m := testenv.MinIO(t)
	bucket := fmt.Sprintf("replay-%d", time.Now().UnixNano())
	st, err := objstore.New(context.Background(), objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true}, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	return bucket, []string{"--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-path-style"}
}

func TestParquetPrefixChecks(t *testing.T) {
	f := newFixture(t)
	bucket, s3 := minioBucket(t)
	m := testenv.MinIO(t)
	live, err := objstore.New(context.Background(), objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, Prefix: "prod", AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true}, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Put(context.Background(), sinkCheckpoints+f.topic+"+0.json", bytes.NewReader([]byte("{}")), 2, "application/json"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		want string // in the error
	}{
		{"live prefix", []string{"--to-parquet", "s3://" + bucket + "/prod"}, "a live parquet-sink writes under s3://" + bucket + "/prod/"},
		{"missing bucket", []string{"--to-parquet", "s3://no-such-bucket-" + bucket + "/x"}, "cannot list"},
		{"bad credentials", []string{"--to-parquet", "s3://" + bucket + "/backfill", "--s3-secret-key", "wrong"}, "cannot list"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := run(t, f.config(t, append(append([]string{"--from", rfc(t0)}, s3...), c.args...)...), nil)
			if res.err == nil || !strings.Contains(res.err.Error(), "--to-parquet") || !strings.Contains(res.err.Error(), c.want) {
				t.Fatalf("err %v, want one naming --to-parquet and saying %q", res.err, c.want)
			}
			if res.stats.Records != 0 {
				t.Errorf("read %d records before finding the target unusable", res.stats.Records)
			}
		})
	}
	// --allow-live-prefix and another prefix get past the checks.
	for _, args := range [][]string{{"--to-parquet", "s3://" + bucket + "/prod", "--allow-live-prefix"}, {"--to-parquet", "s3://" + bucket + "/backfill"}} {
		res := run(t, f.config(t, append(append([]string{"--from", rfc(t0)}, s3...), args...)...), nil)
		if res.err != nil && (strings.Contains(res.err.Error(), "live parquet-sink") || strings.Contains(res.err.Error(), "cannot")) {
			t.Fatalf("%q: %v", args, res.err)
		}
	}
}

// TestParquetDefaultsAreTheSinks: --to-parquet's window, file and filter
// defaults are parquet-sink's, so that a backfill with no flags makes the
// sink's windows (the README promises it); this fails when one side's
// default changes without the other's.
func TestParquetDefaultsAreTheSinks(t *testing.T) {
	s, o := sink.DefaultConfig(), DefaultConfig().Parquet
	want := ParquetOptions{MaxFileRows: s.MaxFileRows, MaxFileBytes: s.MaxFileBytes, MaxFileAge: s.MaxFileAge, RowGroupRows: s.RowGroupRows,
		Compression: s.Compression, DedupEpochs: s.DedupEpochs, DedupTTL: s.DedupTTL, DedupMaxVehicles: s.DedupMaxVehicles}
	if flag, was, is := want.diff(o); flag != "" {
		t.Errorf("--%s defaults to %v in replay, %v in parquet-sink", flag, is, was)
	}
}
