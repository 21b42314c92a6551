package objstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/fleetpipe/fleetpipe/internal/s3local"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// startLocal runs an in-process S3 endpoint on a temporary folder until the
// test ends and returns its URL and folder.
func startLocal(t *testing.T) (url, dir string) {
	t.Helper()
	dir = t.TempDir()
	srv, err := s3local.New(s3local.Config{Dir: dir}, s3local.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("s3local Run: %v", err)
		}
	})
	return srv.URL(), dir
}

func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := New(context.Background(), cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreS3Local(t *testing.T) {
	url, dir := startLocal(t)
	cfg := Config{Endpoint: url, Bucket: "fleet", Prefix: "it/run1/", AccessKey: "any", SecretKey: "any", PathStyle: true}
	s := newStore(t, cfg)
	exercise(t, s)

	// Objects are plain files at Dir/bucket/prefix/key.
	if err := s.Put(context.Background(), "readings/x.parquet", strings.NewReader("PAR1"), 4, "application/vnd.apache.parquet"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "fleet", "it", "run1", "readings", "x.parquet"))
	if err != nil || string(got) != "PAR1" {
		t.Errorf("plain file: %q, %v", got, err)
	}

	// A store whose prefix is a string prefix of another's sees none of it.
	other := newStore(t, Config{Endpoint: url, Bucket: "fleet", Prefix: "it/run", AccessKey: "any", SecretKey: "any", PathStyle: true})
	if objs, err := other.List(context.Background(), ""); err != nil || len(objs) != 0 {
		t.Errorf("store with prefix it/run lists %v, %v", objs, err)
	}
}

// TestStoreMinIO runs the same checks against the real MinIO that compose/
// starts, in a bucket of its own.
func TestStoreMinIO(t *testing.T) {
	m := testenv.MinIO(t)
	bucket := "fleetpipe-objstore-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	s := newStore(t, Config{Endpoint: m.Endpoint, Bucket: bucket, Prefix: "it", AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true})
	t.Cleanup(func() {
		ctx := context.Background()
		objs, err := s.List(ctx, "")
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		for _, o := range objs {
			if err := s.Delete(ctx, o.Key); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
		if _, err := s.client.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)}); err != nil {
			t.Logf("cleanup: delete bucket %s: %v", bucket, err)
		}
	})
	exercise(t, s)
}

// exercise checks the Store contract against whatever server s talks to. The
// bucket may or may not exist yet.
func exercise(t *testing.T, s *Store) {
	ctx := context.Background()
	for range 2 { // creating, then finding it there
		if err := s.EnsureBucket(ctx); err != nil {
			t.Fatal(err)
		}
	}

	key := "readings/date=2024-05-01/hour=13/fleet.telemetry.v1+0+00000000000000000042.parquet"
	if err := s.Put(ctx, key, strings.NewReader("first"), 5, "application/vnd.apache.parquet"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, key); err != nil || string(got) != "first" {
		t.Fatalf("get: %q, %v", got, err)
	}
	// Overwrite, with an unknown size and a non-seekable body.
	if err := s.Put(ctx, key, io.MultiReader(strings.NewReader("second")), -1, ""); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, key); err != nil || string(got) != "second" {
		t.Fatalf("get after overwrite: %q, %v", got, err)
	}

	_, err := s.Get(ctx, "readings/missing.parquet")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("get missing: %v, want ErrNotFound", err)
	}
	if err != nil && !strings.Contains(err.Error(), s.URI("readings/missing.parquet")) {
		t.Errorf("error %q does not name the object", err)
	}

	// Multipart: 12 MiB streamed through a non-seekable reader.
	big := make([]byte, 12<<20+7)
	rand.Read(big)
	if err := s.Put(ctx, "locations/big.parquet", io.MultiReader(bytes.NewReader(big)), int64(len(big)), ""); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "locations/big.parquet"); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("get big: %d bytes, %v", len(got), err)
	}

	// Bodies that disagree with size fail, and store nothing.
	for name, body := range map[string]io.Reader{
		"short seekable":     strings.NewReader("abc"),
		"long seekable":      strings.NewReader("abcdefgh"),
		"short non-seekable": io.MultiReader(strings.NewReader("abc")),
		"long non-seekable":  io.MultiReader(strings.NewReader("abcdefgh")),
	} {
		if err := s.Put(ctx, "bad/"+strings.ReplaceAll(name, " ", "-"), body, 5, ""); err == nil {
			t.Errorf("%s body with size 5: put succeeded", name)
		}
	}
	if objs, err := s.List(ctx, "bad/"); err != nil || len(objs) != 0 {
		t.Errorf("failed puts left %v, %v", objs, err)
	}

	// List across pages, keys relative to the prefix, in key order.
	for i := range 5 {
		k := fmt.Sprintf("readings/date=2024-05-02/hour=%02d/f.parquet", i)
		if err := s.Put(ctx, k, strings.NewReader(strings.Repeat("x", i)), int64(i), ""); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := s.list(ctx, "readings/", 2)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, fmt.Sprintf("%s:%d", o.Key, o.Size))
		if time.Since(o.LastModified) > time.Hour || o.LastModified.IsZero() {
			t.Errorf("%s: LastModified %v", o.Key, o.LastModified)
		}
	}
	want := []string{key + ":6"}
	for i := range 5 {
		want = append(want, fmt.Sprintf("readings/date=2024-05-02/hour=%02d/f.parquet:%d", i, i))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("list readings/:\n got %v\nwant %v", got, want)
	}
	if all, err := s.List(ctx, ""); err != nil || len(all) != 7 {
		t.Errorf("list all: %d objects, %v", len(all), err)
	}

	// Delete, twice: the second is of a missing key.
	for range 2 {
		if err := s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Get(ctx, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("get after delete: %v", err)
	}

	for _, bad := range []string{"", "/abs"} {
		if err := s.Put(ctx, bad, strings.NewReader(""), 0, ""); err == nil {
			t.Errorf("put %q succeeded", bad)
		}
	}
	exerciseConditional(t, s)
	exerciseUpload(t, s)
	if err := s.CheckWritable(ctx, "_probe/write-check"); err != nil {
		t.Errorf("CheckWritable: %v", err)
	}
	if _, err := s.Get(ctx, "_probe/write-check"); !errors.Is(err, ErrNotFound) {
		t.Errorf("CheckWritable left its probe object: %v", err)
	}
}

// exerciseConditional checks that conditional writes are compare-and-swaps:
// create-only fails on an existing key, replace-this-version fails once
// another writer replaced it, and neither loser changes the object.
func exerciseConditional(t *testing.T, s *Store) {
	ctx := context.Background()
	key := "_sink/checkpoints/cas.json"
	e1, err := s.PutBytes(ctx, key, []byte(`{"v":1}`), PutOptions{IfNoneMatch: true, ContentType: "application/json"})
	if err != nil || e1 == "" {
		t.Fatalf("create-only put of a new key: etag %q, %v", e1, err)
	}
	if _, err := s.PutBytes(ctx, key, []byte(`{"v":"other"}`), PutOptions{IfNoneMatch: true}); !errors.Is(err, ErrPreconditionFailed) {
		t.Errorf("create-only put of an existing key: %v, want ErrPreconditionFailed", err)
	}
	data, etag, err := s.Read(ctx, key)
	if err != nil || string(data) != `{"v":1}` || etag != e1 {
		t.Fatalf("read: %q etag %q (put said %q), %v", data, etag, e1, err)
	}
	e2, err := s.PutBytes(ctx, key, []byte(`{"v":2}`), PutOptions{IfMatch: e1})
	if err != nil || e2 == e1 {
		t.Fatalf("put if-match the current version: etag %q, %v", e2, err)
	}
	if _, err := s.PutBytes(ctx, key, []byte(`{"v":"stale"}`), PutOptions{IfMatch: e1}); !errors.Is(err, ErrPreconditionFailed) {
		t.Errorf("put if-match a replaced version: %v, want ErrPreconditionFailed", err)
	}
	if _, err := s.PutBytes(ctx, "_sink/checkpoints/missing.json", []byte(`{}`), PutOptions{IfMatch: e2}); !errors.Is(err, ErrPreconditionFailed) && !errors.Is(err, ErrNotFound) {
		t.Errorf("put if-match on a missing key: %v, want ErrPreconditionFailed or ErrNotFound", err)
	}
	if data, _, _ := s.Read(ctx, key); string(data) != `{"v":2}` {
		t.Errorf("after the losing writes the object is %q, want the winner's", data)
	}
	info, err := s.Head(ctx, key)
	if err != nil || info.ETag != e2 || info.Size != 7 {
		t.Errorf("head: %+v, %v", info, err)
	}
}

// exerciseUpload streams objects above and below a part, with metadata and
// create-only completion, and aborts one.
func exerciseUpload(t *testing.T, s *Store) {
	ctx := context.Background()
	big := make([]byte, 2*PartSize+12345)
	rand.Read(big)
	for _, tc := range []struct {
		key  string
		data []byte
	}{{"stream/big.parquet", big}, {"stream/exact.parquet", big[:PartSize]}, {"stream/small.parquet", big[:1000]}, {"stream/empty.parquet", nil}} {
		u, err := s.NewUpload(ctx, tc.key, PutOptions{IfNoneMatch: true, Metadata: map[string]string{"fleet-rows": "42"}})
		if err != nil {
			t.Fatal(err)
		}
		// Odd-sized writes, as an encoder makes them.
		for rest := tc.data; len(rest) > 0; {
			n := min(len(rest), 1<<20+3)
			if _, err := u.Write(rest[:n]); err != nil {
				t.Fatalf("%s: write: %v", tc.key, err)
			}
			rest = rest[n:]
		}
		if u.Size() != int64(len(tc.data)) {
			t.Errorf("%s: Size %d, want %d", tc.key, u.Size(), len(tc.data))
		}
		if _, err := u.Complete(ctx); err != nil {
			t.Fatalf("%s: complete: %v", tc.key, err)
		}
		got, err := s.Get(ctx, tc.key)
		if err != nil || !bytes.Equal(got, tc.data) {
			t.Fatalf("%s: got %d bytes back, want %d: %v", tc.key, len(got), len(tc.data), err)
		}
		if info, err := s.Head(ctx, tc.key); err != nil || info.Metadata["fleet-rows"] != "42" {
			t.Errorf("%s: metadata %v, %v", tc.key, info.Metadata, err)
		}
		// A second create-only upload to the same key loses, and the object stays.
		u2, _ := s.NewUpload(ctx, tc.key, PutOptions{IfNoneMatch: true})
		if _, err := u2.Write(bytes.Repeat([]byte{1}, len(tc.data)+1)); err != nil {
			t.Fatal(err)
		}
		if _, err := u2.Complete(ctx); !errors.Is(err, ErrPreconditionFailed) {
			t.Errorf("%s: second create-only upload: %v, want ErrPreconditionFailed", tc.key, err)
		}
		if got, _ := s.Get(ctx, tc.key); !bytes.Equal(got, tc.data) {
			t.Errorf("%s: the losing upload changed the object", tc.key)
		}
	}
	u, _ := s.NewUpload(ctx, "stream/aborted.parquet", PutOptions{})
	if _, err := u.Write(big); err != nil {
		t.Fatal(err)
	}
	u.Abort(ctx)
	if _, err := u.Write([]byte("x")); err == nil {
		t.Error("write after abort succeeded")
	}
	if _, err := s.Get(ctx, "stream/aborted.parquet"); !errors.Is(err, ErrNotFound) {
		t.Errorf("aborted upload: %v, want nothing at the key", err)
	}
}

func TestCheckWritableNamesAMissingBucket(t *testing.T) {
	url, _ := startLocal(t)
	s := newStore(t, Config{Endpoint: url, Bucket: "no-such-bucket", AccessKey: "any", SecretKey: "any", PathStyle: true})
	err := s.CheckWritable(context.Background(), "_probe/x")
	if err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) || !strings.Contains(err.Error(), url) {
		t.Errorf("CheckWritable on a missing bucket: %v", err)
	}
}

func TestURI(t *testing.T) {
	for _, tt := range []struct{ prefix, key, want string }{
		{"", "a/b.parquet", "s3://fleet/a/b.parquet"},
		{"prod", "a/b.parquet", "s3://fleet/prod/a/b.parquet"},
		{"prod/eu/", "a", "s3://fleet/prod/eu/a"},
		{"prod", "", "s3://fleet/prod/"},
	} {
		s := newStore(t, Config{Bucket: "fleet", Prefix: tt.prefix, AccessKey: "k", SecretKey: "s"})
		if got := s.URI(tt.key); got != tt.want {
			t.Errorf("prefix %q: URI(%q) = %q, want %q", tt.prefix, tt.key, got, tt.want)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(context.Background(), Config{Endpoint: "http://127.0.0.1:9000"}, Deps{})
	if err == nil || err.Error() != "--s3-bucket: must not be empty" {
		t.Errorf("New with no bucket: %v", err)
	}
}
