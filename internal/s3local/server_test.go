//lint:file-ignore SA1019 ARCHITECTURE.md names the s3 upload manager; its successor (transfermanager) is pre-1.0.

package s3local_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/internal/s3local"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const bucket = "fleet"

// env is a running Server and an aws-sdk-go-v2 client for it.
type env struct {
	dir    string
	srv    *s3local.Server
	client *s3.Client
}

// start runs a Server on dir until the test ends, and checks that Run
// returns nil and leaves no goroutine behind.
func start(t *testing.T, dir string) *env {
	t.Helper()
	srv, err := s3local.New(s3local.Config{Dir: dir, Addr: "127.0.0.1:0", Buckets: []string{bucket}}, s3local.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	tr := &http.Transport{}
	client := s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(srv.URL()),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider("any-key", "any-secret", ""),
		HTTPClient:   &http.Client{Transport: tr},
	})
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		tr.CloseIdleConnections()
	})
	return &env{dir: dir, srv: srv, client: client}
}

func (e *env) put(t *testing.T, key, body, contentType string) {
	t.Helper()
	in := &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: strings.NewReader(body)}
	if contentType != "" {
		in.ContentType = aws.String(contentType)
	}
	if _, err := e.client.PutObject(context.Background(), in); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func (e *env) get(t *testing.T, key string) string {
	t.Helper()
	out, err := e.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (e *env) list(t *testing.T, in *s3.ListObjectsV2Input) (keys, prefixes []string) {
	t.Helper()
	in.Bucket = aws.String(bucket)
	p := s3.NewListObjectsV2Paginator(e.client, in)
	for p.HasMorePages() {
		out, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		for _, o := range out.Contents {
			keys = append(keys, fmt.Sprintf("%s:%d", aws.ToString(o.Key), aws.ToInt64(o.Size)))
		}
		for _, cp := range out.CommonPrefixes {
			prefixes = append(prefixes, aws.ToString(cp.Prefix))
		}
	}
	return keys, prefixes
}

// onDisk returns the plain file's contents at Dir/bucket/key.
func (e *env) onDisk(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, bucket, filepath.FromSlash(key)))
	if err != nil {
		t.Fatalf("object %s is not a plain file: %v", key, err)
	}
	return string(b)
}

// filesUnder returns the slash paths of the regular files under dir.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

func errCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func TestPutGetHeadOverwriteDelete(t *testing.T) {
	e := start(t, t.TempDir())
	ctx := context.Background()
	key := "readings/date=2024-05-01/hour=13/fleet.telemetry.v1+0+00000000000000000042.parquet"

	e.put(t, key, "PAR1 version one", "application/vnd.apache.parquet")
	if got := e.onDisk(t, key); got != "PAR1 version one" {
		t.Fatalf("file on disk = %q", got)
	}
	head, err := e.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToInt64(head.ContentLength) != 16 || aws.ToString(head.ContentType) != "application/vnd.apache.parquet" || aws.ToString(head.ETag) != md5hex("PAR1 version one") {
		t.Errorf("head: length %d, type %q, etag %s", aws.ToInt64(head.ContentLength), aws.ToString(head.ContentType), aws.ToString(head.ETag))
	}

	// Overwrite: new bytes on disk and over the API, old metadata gone.
	e.put(t, key, "PAR1 v2", "")
	if got := e.onDisk(t, key); got != "PAR1 v2" {
		t.Fatalf("file on disk after overwrite = %q", got)
	}
	if got := e.get(t, key); got != "PAR1 v2" {
		t.Fatalf("get after overwrite = %q", got)
	}
	head, err = e.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(head.ContentType) == "application/vnd.apache.parquet" {
		t.Errorf("overwrite kept the old Content-Type")
	}

	// Range read.
	rng, err := e.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Range: aws.String("bytes=5-6")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rng.Body)
	rng.Body.Close()
	if string(b) != "v2" {
		t.Errorf("range read = %q", b)
	}

	// Delete: the file and the folders it emptied go; gets say NoSuchKey.
	if _, err := e.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, bucket, "readings")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("emptied folders left behind: %v", err)
	}
	_, err = e.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	var nsk *types.NoSuchKey
	if !errors.As(err, &nsk) {
		t.Errorf("get after delete: %v, want NoSuchKey", err)
	}
	_, err = e.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	var nf *types.NotFound
	if !errors.As(err, &nf) {
		t.Errorf("head after delete: %v, want NotFound", err)
	}
	if _, err := e.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
	_, err = e.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("no-such-bucket"), Key: aws.String("k")})
	if errCode(err) != "NoSuchBucket" {
		t.Errorf("get from missing bucket: %v", err)
	}
}

func TestMultipartUpload(t *testing.T) {
	e := start(t, t.TempDir())
	data := make([]byte, 12<<20+12345) // three parts at the 5 MiB minimum
	rand.NewChaCha8([32]byte{1}).Read(data)
	key := "locations/date=2024-05-01/hour=00/big.parquet"

	up := manager.NewUploader(e.client, func(u *manager.Uploader) { u.PartSize = manager.MinUploadPartSize })
	// A plain io.Reader (not a ReaderAt) makes the manager buffer parts, as
	// it does for streamed Parquet output.
	out, err := up.Upload(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: io.MultiReader(bytes.NewReader(data)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if out.UploadID == "" {
		t.Fatal("upload did not go through the multipart path")
	}
	if got := e.onDisk(t, key); got != string(data) {
		t.Fatalf("file on disk has %d bytes, want the %d uploaded", len(got), len(data))
	}
	if got := e.get(t, key); got != string(data) {
		t.Fatalf("get returned %d bytes, want %d", len(got), len(data))
	}
	if files := filesUnder(t, filepath.Join(e.dir, bucket)); len(files) != 1 || files[0] != key {
		t.Errorf("bucket folder holds %v, want only %s", files, key)
	}
}

func TestList(t *testing.T) {
	e := start(t, t.TempDir())
	keys := []string{
		"a.c",
		"a/b",
		"readings/date=2024-05-01/hour=00/f1.parquet",
		"readings/date=2024-05-01/hour=01/f2.parquet",
		"readings/date=2024-05-02/hour=00/f3.parquet",
		"readings/x",
		"locations/date=2024-05-01/hour=00/f1.parquet",
	}
	for i, k := range keys {
		e.put(t, k, strings.Repeat("x", i+1), "")
	}

	tests := []struct {
		name             string
		in               s3.ListObjectsV2Input
		wantKeys, wantCP []string
	}{
		{"all, in S3 key order, across pages", s3.ListObjectsV2Input{MaxKeys: aws.Int32(2)},
			[]string{"a.c:1", "a/b:2", "locations/date=2024-05-01/hour=00/f1.parquet:7", "readings/date=2024-05-01/hour=00/f1.parquet:3", "readings/date=2024-05-01/hour=01/f2.parquet:4", "readings/date=2024-05-02/hour=00/f3.parquet:5", "readings/x:6"}, nil},
		{"prefix", s3.ListObjectsV2Input{Prefix: aws.String("readings/date=2024-05-01/")},
			[]string{"readings/date=2024-05-01/hour=00/f1.parquet:3", "readings/date=2024-05-01/hour=01/f2.parquet:4"}, nil},
		{"partial segment prefix", s3.ListObjectsV2Input{Prefix: aws.String("readings/date=2024-05-0")},
			[]string{"readings/date=2024-05-01/hour=00/f1.parquet:3", "readings/date=2024-05-01/hour=01/f2.parquet:4", "readings/date=2024-05-02/hour=00/f3.parquet:5"}, nil},
		{"delimiter, one per page", s3.ListObjectsV2Input{Prefix: aws.String("readings/"), Delimiter: aws.String("/"), MaxKeys: aws.Int32(1)},
			[]string{"readings/x:6"}, []string{"readings/date=2024-05-01/", "readings/date=2024-05-02/"}},
		{"missing prefix is empty, not an error", s3.ListObjectsV2Input{Prefix: aws.String("nothing/here/"), Delimiter: aws.String("/")}, nil, nil},
		{"prefix below a file", s3.ListObjectsV2Input{Prefix: aws.String("a.c/")}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotKeys, gotCP := e.list(t, &tt.in)
			if fmt.Sprint(gotKeys) != fmt.Sprint(tt.wantKeys) || fmt.Sprint(gotCP) != fmt.Sprint(tt.wantCP) {
				t.Errorf("got keys %v prefixes %v\nwant keys %v prefixes %v", gotKeys, gotCP, tt.wantKeys, tt.wantCP)
			}
		})
	}
}

// TestPlainFiles checks what users see on disk: objects only in the bucket
// folder, nothing a *.parquet glob could pick up elsewhere, and files put
// there by hand served like any object.
func TestPlainFiles(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.put(t, "readings/date=2024-05-01/hour=00/a.parquet", "one", "application/vnd.apache.parquet")
	e.put(t, "readings/date=2024-05-01/hour=00/b.parquet", "two", "")
	e.put(t, "readings/date=2024-05-01/hour=00/b.parquet", "two again", "")

	var parquet []string
	for _, f := range filesUnder(t, dir) {
		if strings.HasSuffix(f, ".parquet") {
			parquet = append(parquet, f)
		}
	}
	want := []string{"fleet/readings/date=2024-05-01/hour=00/a.parquet", "fleet/readings/date=2024-05-01/hour=00/b.parquet"}
	if fmt.Sprint(parquet) != fmt.Sprint(want) {
		t.Errorf("*.parquet files under Dir: %v, want %v", parquet, want)
	}

	// A file dropped in by hand, then changed by hand.
	hand := filepath.Join(dir, bucket, "readings", "manual.parquet")
	if err := os.WriteFile(hand, []byte("by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	head, err := e.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("readings/manual.parquet")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(head.ETag) != md5hex("by hand") {
		t.Errorf("etag of a hand-made file = %s", aws.ToString(head.ETag))
	}
	if err := os.WriteFile(hand, []byte("changed by hand"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := e.get(t, "readings/manual.parquet"); got != "changed by hand" {
		t.Errorf("get = %q", got)
	}
	keys, _ := e.list(t, &s3.ListObjectsV2Input{Prefix: aws.String("readings/m")})
	if fmt.Sprint(keys) != "[readings/manual.parquet:15]" {
		t.Errorf("list = %v", keys)
	}
}

func TestKeysPlainFilesCannotHold(t *testing.T) {
	e := start(t, t.TempDir())
	ctx := context.Background()
	e.put(t, "a", "file", "")
	for _, key := range []string{"a/b", "dir/", "x//y"} {
		_, err := e.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: strings.NewReader("v")})
		if errCode(err) != "InvalidArgument" {
			t.Errorf("put %q: %v, want InvalidArgument", key, err)
		}
	}
	e.put(t, "p/q", "file", "")
	_, err := e.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("p"), Body: strings.NewReader("v")})
	if errCode(err) != "InvalidArgument" {
		t.Errorf("put over a folder: %v, want InvalidArgument", err)
	}
	if got := e.get(t, "a"); got != "file" {
		t.Errorf("rejected puts changed a: %q", got)
	}
}

func TestConcurrentPuts(t *testing.T) {
	e := start(t, t.TempDir())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 5 {
				body := fmt.Sprintf("writer %d round %d", i, j)
				if _, err := e.client.PutObject(context.Background(), &s3.PutObjectInput{
					Bucket: aws.String(bucket), Key: aws.String(fmt.Sprintf("k/%d", j)), Body: strings.NewReader(body),
				}); err != nil {
					t.Error(err)
				}
				e.get(t, fmt.Sprintf("k/%d", j))
			}
		})
	}
	wg.Wait()
	for j := range 5 {
		got := e.get(t, fmt.Sprintf("k/%d", j))
		head, err := e.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(fmt.Sprintf("k/%d", j))})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(head.ETag) != md5hex(got) {
			t.Errorf("k/%d: etag %s does not match content %q", j, aws.ToString(head.ETag), got)
		}
	}
}

func TestRestartKeepsObjectsAndMetadata(t *testing.T) {
	dir := t.TempDir()
	// Sub-tests: each server's cleanup (stop) runs before the next starts.
	t.Run("first server", func(t *testing.T) {
		e := start(t, dir)
		e.put(t, "k.parquet", "kept", "application/vnd.apache.parquet")
	})
	t.Run("second server", func(t *testing.T) {
		e := start(t, dir)
		out, err := e.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("k.parquet")})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(out.Body)
		out.Body.Close()
		if string(b) != "kept" || aws.ToString(out.ContentType) != "application/vnd.apache.parquet" {
			t.Errorf("after restart: %q, %q", b, aws.ToString(out.ContentType))
		}
	})
}

func TestLifecycle(t *testing.T) {
	dir := t.TempDir()
	srv, err := s3local.New(s3local.Config{Dir: dir, Buckets: []string{"one", "two"}}, s3local.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(srv.URL(), "http://127.0.0.1:") {
		t.Errorf("URL before Run = %q", srv.URL())
	}
	for _, b := range []string{"one", "two"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || !fi.IsDir() {
			t.Errorf("bucket %s not created: %v", b, err)
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Error("Run after Close succeeded")
	}

	// Run returns nil on cancel and leaves nothing running.
	srv, err = s3local.New(s3local.Config{Dir: dir, Buckets: []string{"one"}}, s3local.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	tr := &http.Transport{}
	resp, err := (&http.Client{Transport: tr}).Get(srv.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("list buckets: %s", resp.Status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
	tr.CloseIdleConnections()
	goleak.VerifyNone(t)
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  s3local.Config
		want string // error prefix; empty for valid
	}{
		{s3local.Config{Dir: "d"}, ""},
		{s3local.Config{Dir: "d", Addr: "127.0.0.1:9000", Buckets: []string{"fleet"}}, ""},
		{s3local.Config{}, "s3local.dir: "},
		{s3local.Config{Dir: "d", Addr: "9000"}, "s3local.addr: "},
		{s3local.Config{Dir: "d", Buckets: []string{"fleet", "Bad_Name"}}, "s3local.buckets[1]: "},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), tt.want)) {
			t.Errorf("Validate(%+v) = %v, want prefix %q", tt.cfg, err, tt.want)
		}
	}
}
