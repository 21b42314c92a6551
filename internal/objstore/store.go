// Package objstore is the S3 client the cloud services use to write, read,
// list and delete objects under one bucket and key prefix. It works with AWS
// S3, MinIO and the embedded endpoint (internal/s3local) alike, through
// aws-sdk-go-v2.
//
// Keys given to a Store are relative to Config.Prefix, and keys it returns
// are too, so callers never handle the prefix.
//
// Writes can be conditional (S3's If-None-Match: * and If-Match: ETag, which
// AWS S3 and MinIO honour on PutObject and CompleteMultipartUpload): a lost
// condition returns an error wrapping ErrPreconditionFailed. Large objects
// are streamed with multipart uploads (Upload), whose memory is bounded by
// the part size and the Store's part slots, never by the object's size.
//
// Every request is retried by the SDK's standard retryer, up to
// Config.MaxAttempts tries with exponential backoff and jitter, on
// throttling, 5xx, connection errors and S3's ConditionalRequestConflict
// (409); a Store adds no retries of its own. There is no retry quota: a sink
// waits out an outage rather than failing fast. A Store is safe for
// concurrent use.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// ErrNotFound is wrapped by Get's error when the key does not exist.
var ErrNotFound = errors.New("object not found")

// ErrPreconditionFailed is wrapped when a conditional write loses: the
// object exists (IfNoneMatch) or is not the version named (IfMatch). A
// request whose first attempt succeeded but whose answer was lost is retried
// and then fails this way too; callers that must tell the two apart read
// the object back.
var ErrPreconditionFailed = errors.New("precondition failed")

// Deps are a Store's dependencies.
type Deps struct {
	// Logger receives the AWS SDK's warnings and, at debug level, its
	// other messages. Nil discards.
	Logger *slog.Logger
	// HTTPClient overrides the SDK's HTTP client (tests inject faults).
	HTTPClient *http.Client
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key          string // relative to Config.Prefix
	Size         int64
	LastModified time.Time
	ETag         string            // as S3 returns it, quotes included
	Metadata     map[string]string // user metadata (x-amz-meta-*), keys lower case; Head only
}

// Store reads and writes objects under one bucket and prefix.
type Store struct {
	client    *s3.Client
	bucket    string
	keyPrefix string // Config.Prefix + "/", or "" for the bucket root
	region    string
	sse       types.ServerSideEncryption
	kmsKey    string
	log       *slog.Logger
	// parts bounds the upload parts held in memory across all Uploads
	// (PartSlots of them): a part takes a slot from when it is full until
	// S3 has it.
	parts chan struct{}
}

// Upload tuning, the same for every Store.
const (
	// PartSize is the size of a multipart upload's parts, S3's minimum for
	// every part but the last (it allows objects of up to 50 GB). Objects
	// below it are one PutObject.
	PartSize = 5 << 20
	// PartSlots is how many full parts, over all Uploads of a Store, may
	// wait for or be in an UploadPart call at once. Writers block beyond it.
	PartSlots = 6
)

// New validates cfg and builds the S3 client. It does not contact S3: a wrong
// endpoint or credentials show up on the first request (call CheckWritable at
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
	attempts := cfg.MaxAttempts
	if attempts == 0 {
		attempts = DefaultMaxAttempts
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(region),
		config.WithLogger(sdkLogger{log}),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = attempts
				o.MaxBackoff = 10 * time.Second
				o.RateLimiter = ratelimit.None
				o.Retryables = append(append([]retry.IsErrorRetryable(nil), o.Retryables...),
					retry.RetryableErrorCode{Codes: map[string]struct{}{"ConditionalRequestConflict": {}}})
			})
		}),
	}
	if deps.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(deps.HTTPClient))
	} else {
		opts = append(opts, config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConnsPerHost = 64 // parts upload concurrently to one host
			t.ResponseHeaderTimeout = 2 * time.Minute
		})))
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
		client: client,
		bucket: cfg.Bucket,
		region: region,
		sse:    types.ServerSideEncryption(cfg.SSE),
		kmsKey: cfg.SSEKMSKeyID,
		log:    log,
		parts:  make(chan struct{}, PartSlots),
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

// Get returns the object at key. A missing key gives an error wrapping
// ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	data, _, err := s.Read(ctx, key)
	return data, err
}

// Read returns the object at key and its ETag, which IfMatch takes to
// replace exactly this version. A missing key gives an error wrapping
// ErrNotFound.
func (s *Store) Read(ctx context.Context, key string) (data []byte, etag string, err error) {
	full, err := s.fullKey(key)
	if err != nil {
		return nil, "", err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(full)})
	if err != nil {
		return nil, "", s.wrap("get", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, "", fmt.Errorf("objstore: get %s: read body: %w", s.URI(key), err)
	}
	return b, aws.ToString(out.ETag), nil
}

// Head describes the object at key, its user metadata included. A missing
// key gives an error wrapping ErrNotFound.
func (s *Store) Head(ctx context.Context, key string) (ObjectInfo, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(full)})
	if err != nil {
		return ObjectInfo{}, s.wrap("head", key, err)
	}
	meta := make(map[string]string, len(out.Metadata))
	for k, v := range out.Metadata {
		meta[strings.ToLower(k)] = v
	}
	return ObjectInfo{
		Key: key, Size: aws.ToInt64(out.ContentLength), LastModified: aws.ToTime(out.LastModified),
		ETag: aws.ToString(out.ETag), Metadata: meta,
	}, nil
}

// wrap names the operation and object in err, and wraps ErrNotFound or
// ErrPreconditionFailed where S3 said so.
func (s *Store) wrap(op, key string, err error) error {
	switch {
	case isNotFound(err):
		return fmt.Errorf("objstore: %s %s: %w", op, s.URI(key), ErrNotFound)
	case isPreconditionFailed(err):
		return fmt.Errorf("objstore: %s %s: %w (%v)", op, s.URI(key), ErrPreconditionFailed, err)
	case isCode(err, "NoSuchBucket"):
		return fmt.Errorf("objstore: %s %s: bucket %q does not exist: %w", op, s.URI(key), s.bucket, err)
	}
	return fmt.Errorf("objstore: %s %s: %w", op, s.URI(key), err)
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

func isPreconditionFailed(err error) bool {
	if isCode(err, "PreconditionFailed") {
		return true
	}
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusPreconditionFailed
}

func isCode(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
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
			return nil, s.wrap("list", prefix, err)
		}
		for _, o := range page.Contents {
			out = append(out, ObjectInfo{
				Key:          strings.TrimPrefix(aws.ToString(o.Key), s.keyPrefix),
				Size:         aws.ToInt64(o.Size),
				LastModified: aws.ToTime(o.LastModified),
				ETag:         aws.ToString(o.ETag),
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
		return s.wrap("delete", key, err)
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

// CheckWritable fails, with an error a person can act on, unless the bucket
// exists and these credentials can write, read and delete an object under
// the prefix. It writes and deletes one small object, probeKey. Services
// call it at start-up so that a wrong bucket, endpoint or credentials stop
// them at once instead of failing every write later.
func (s *Store) CheckWritable(ctx context.Context, probeKey string) error {
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)}); err != nil {
		if isNotFound(err) || isCode(err, "NoSuchBucket") {
			return fmt.Errorf("objstore: bucket %q does not exist at %s: create it, or fix --s3-bucket / --s3-endpoint", s.bucket, s.endpoint())
		}
		return fmt.Errorf("objstore: cannot reach bucket %q at %s (check --s3-endpoint, --s3-region and the credentials): %w", s.bucket, s.endpoint(), err)
	}
	data := []byte("fleetpipe write check " + time.Now().UTC().Format(time.RFC3339Nano))
	if _, err := s.PutBytes(ctx, probeKey, data, PutOptions{ContentType: "text/plain"}); err != nil {
		return fmt.Errorf("objstore: cannot write under %s (check the credentials' permissions and --s3-sse): %w", s.URI(""), err)
	}
	if got, err := s.Get(ctx, probeKey); err != nil || string(got) != string(data) {
		return fmt.Errorf("objstore: cannot read back %s: %v", s.URI(probeKey), err)
	}
	if err := s.Delete(ctx, probeKey); err != nil {
		return fmt.Errorf("objstore: cannot delete %s: %w", s.URI(probeKey), err)
	}
	return nil
}

func (s *Store) endpoint() string {
	if ep := s.client.Options().BaseEndpoint; ep != nil {
		return *ep
	}
	return "AWS S3 in " + s.region
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
