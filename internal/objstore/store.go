//lint:file-ignore SA1019 ARCHITECTURE.md names the s3 upload manager; its successor (transfermanager) is pre-1.0.

// Package objstore is the S3 client the cloud services use to write, read,
// list and delete objects under one bucket and key prefix. It works with AWS
// S3, MinIO and the embedded endpoint (internal/s3local) alike, through
// aws-sdk-go-v2 and its upload manager.
//
// Keys given to a Store are relative to Config.Prefix, and keys it returns
// are too, so callers never handle the prefix. Every request is retried by
// the SDK's standard retryer (3 attempts with backoff on throttling, 5xx and
// connection errors); a Store adds no retries of its own. A Store is safe for
// concurrent use.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// ErrNotFound is wrapped by Get's error when the key does not exist.
var ErrNotFound = errors.New("object not found")

// Deps are a Store's dependencies.
type Deps struct {
	// Logger receives the AWS SDK's warnings and, at debug level, its
	// other messages. Nil discards.
	Logger *slog.Logger
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key          string // relative to Config.Prefix
	Size         int64
	LastModified time.Time
}

// Store reads and writes objects under one bucket and prefix.
type Store struct {
	client    *s3.Client
	uploader  *manager.Uploader
	bucket    string
	keyPrefix string // Config.Prefix + "/", or "" for the bucket root
	region    string
	log       *slog.Logger
}

// New validates cfg and builds the S3 client. It does not contact S3: a wrong
// endpoint or credentials show up on the first request (call EnsureBucket at
// start-up to fail fast). ctx bounds loading the default AWS configuration.
func New(ctx context.Context, cfg Config, deps Deps) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	region := cfg.Region
	if region == "" {
		region = DefaultRegion
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(region),
		config.WithLogger(sdkLogger{log}),
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("objstore: load AWS config: %w", err)
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	})
	s := &Store{
		client:   client,
		uploader: manager.NewUploader(client),
		bucket:   cfg.Bucket,
		region:   region,
		log:      log,
	}
	if p := strings.TrimSuffix(cfg.Prefix, "/"); p != "" {
		s.keyPrefix = p + "/"
	}
	return s, nil
}

func (s *Store) fullKey(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") {
		return "", fmt.Errorf("objstore: invalid key %q: must be non-empty and not start with \"/\"", key)
	}
	return s.keyPrefix + key, nil
}

// URI returns the object's address, s3://{bucket}/{prefix}/{key}, for logs
// and for query engines. URI("") is the address of the prefix itself.
func (s *Store) URI(key string) string {
	return "s3://" + s.bucket + "/" + s.keyPrefix + key
}

// Put stores body at key, replacing any object there; the object appears
// whole or not at all. size is body's exact length, or -1 if unknown; a body
// that turns out shorter or longer fails the Put. Bodies of 5 MiB and more go
// up as a multipart upload (parts buffered in memory unless body is an
// io.ReaderAt and io.Seeker, like *bytes.Reader or *os.File), which is
// aborted if the Put fails or ctx is cancelled. An empty contentType leaves
// the store's default. Put returns once S3 has acknowledged the object.
func (s *Store) Put(ctx context.Context, key string, body io.Reader, size int64, contentType string) error {
	full, err := s.fullKey(key)
	if err != nil {
		return err
	}
	if seeker, ok := body.(io.Seeker); ok && size >= 0 {
		n, err := remaining(seeker)
		if err != nil {
			return fmt.Errorf("objstore: put %s: %w", s.URI(key), err)
		}
		if n != size {
			return fmt.Errorf("objstore: put %s: body has %d bytes, size says %d", s.URI(key), n, size)
		}
	} else if size >= 0 {
		body = &exactReader{r: body, left: size}
	}
	in := &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(full), Body: body}
	if contentType != "" {
		in.ContentType = aws.String(contentType)
	}
	_, err = s.uploader.Upload(ctx, in, func(u *manager.Uploader) {
		// Keep big streams within S3's part count.
		if size > u.PartSize*int64(manager.MaxUploadParts) {
			u.PartSize = size/int64(manager.MaxUploadParts) + 1
		}
	})
	if err != nil {
		return fmt.Errorf("objstore: put %s: %w", s.URI(key), err)
	}
	return nil
}

// remaining returns the bytes between s's position and its end, leaving the
// position where it was.
func remaining(s io.Seeker) (int64, error) {
	cur, err := s.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	end, err := s.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	if _, err := s.Seek(cur, io.SeekStart); err != nil {
		return 0, err
	}
	return end - cur, nil
}

// exactReader fails a read stream that is not exactly left bytes long.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.left -= int64(n)
	switch {
	case e.left < 0:
		return n, errors.New("body is longer than the size given")
	case errors.Is(err, io.EOF) && e.left > 0:
		return n, fmt.Errorf("body ended %d bytes short of the size given: %w", e.left, io.ErrUnexpectedEOF)
	}
	return n, err
}

// Get returns the object at key. A missing key gives an error wrapping
// ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(full)})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("objstore: get %s: %w", s.URI(key), ErrNotFound)
		}
		return nil, fmt.Errorf("objstore: get %s: %w", s.URI(key), err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, fmt.Errorf("objstore: get %s: read body: %w", s.URI(key), err)
	}
	return b, nil
}

// isNotFound reports whether err says the key does not exist. A missing
// bucket is not "not found": it is a configuration error.
func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "NoSuchKey" || ae.ErrorCode() == "NotFound")
}

// List returns every object whose key (relative to Config.Prefix) starts with
// prefix, in key order, reading all pages. Keys containing "/" are listed
// too: there is no delimiter.
func (s *Store) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	return s.list(ctx, prefix, 0)
}

// list is List with a page size (0 = the server's default, 1000 on S3).
func (s *Store) list(ctx context.Context, prefix string, pageSize int32) ([]ObjectInfo, error) {
	in := &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(s.keyPrefix + prefix)}
	if pageSize > 0 {
		in.MaxKeys = aws.Int32(pageSize)
	}
	var out []ObjectInfo
	pages := s3.NewListObjectsV2Paginator(s.client, in)
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("objstore: list %s: %w", s.URI(prefix), err)
		}
		for _, o := range page.Contents {
			out = append(out, ObjectInfo{
				Key:          strings.TrimPrefix(aws.ToString(o.Key), s.keyPrefix),
				Size:         aws.ToInt64(o.Size),
				LastModified: aws.ToTime(o.LastModified),
			})
		}
	}
	return out, nil
}

// Delete removes the object at key. Deleting a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	full, err := s.fullKey(key)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(full)})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("objstore: delete %s: %w", s.URI(key), err)
	}
	return nil
}

// EnsureBucket creates the bucket, in Config.Region, if it does not exist.
// A bucket that exists and that these credentials can use is fine, whoever
// created it (including a replica racing this one); one they cannot use is
// an error.
func (s *Store) EnsureBucket(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	if err == nil {
		return nil
	}
	if !isNotFound(err) && !isCode(err, "NoSuchBucket") {
		return fmt.Errorf("objstore: check bucket %s: %w", s.bucket, err)
	}
	in := &s3.CreateBucketInput{Bucket: aws.String(s.bucket)}
	if s.region != "us-east-1" { // us-east-1 rejects an explicit constraint
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(s.region),
		}
	}
	_, err = s.client.CreateBucket(ctx, in)
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	switch {
	case err == nil:
		s.log.Info("objstore: created bucket", "bucket", s.bucket, "region", s.region)
		return nil
	case errors.As(err, &owned):
		return nil
	case errors.As(err, &exists):
		// Created since our check, possibly by us: fine if we can use it.
		if _, herr := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)}); herr == nil {
			return nil
		}
	}
	return fmt.Errorf("objstore: create bucket %s: %w", s.bucket, err)
}

func isCode(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
}

// sdkLogger adapts the AWS SDK's logger to slog.
type sdkLogger struct{ log *slog.Logger }

func (l sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	lvl := slog.LevelDebug
	if c == logging.Warn {
		lvl = slog.LevelWarn
	}
	if l.log.Enabled(context.Background(), lvl) {
		l.log.Log(context.Background(), lvl, "aws-sdk: "+fmt.Sprintf(format, v...))
	}
}
