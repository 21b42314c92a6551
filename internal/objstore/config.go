package objstore

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// DefaultRegion is the region used when Config.Region is empty.
const DefaultRegion = "us-east-1"

// Config says which bucket (and key prefix in it) a Store uses and how to
// reach it. The zero value plus a Bucket reaches AWS S3 in us-east-1 with the
// default AWS credential chain.
type Config struct {
	// Endpoint is the S3 API base URL, e.g. "http://127.0.0.1:9000" for
	// MinIO or the embedded endpoint. Empty means AWS's own resolution
	// (including AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL).
	Endpoint string `yaml:"endpoint"`
	// Region is the signing region and the region new buckets are created
	// in. Empty means DefaultRegion.
	Region string `yaml:"region"`
	// Bucket holds everything the Store writes. Required.
	Bucket string `yaml:"bucket"`
	// Prefix is prepended, with a "/", to every key the Store is given;
	// empty stores keys at the bucket's root. A trailing "/" is ignored.
	Prefix string `yaml:"prefix"`
	// AccessKey and SecretKey are static credentials. When both are empty
	// the default AWS credential chain (environment, shared files, IAM
	// role) is used.
	AccessKey string `yaml:"access_key"`
	SecretKey string `yaml:"secret_key"`
	// PathStyle addresses buckets as {endpoint}/{bucket}/{key} rather than
	// {bucket}.{endpoint}/{key}. Needed for MinIO and the embedded endpoint.
	PathStyle bool `yaml:"path_style"`
	// SSE asks S3 to encrypt every object the Store writes: "" (the
	// bucket's default), "AES256" (SSE-S3) or "aws:kms" (SSE-KMS, with
	// SSEKMSKeyID or the account's default key).
	SSE         string `yaml:"sse"`
	SSEKMSKeyID string `yaml:"sse_kms_key_id"`
	// MaxAttempts is how many times one request is tried (with exponential
	// backoff and jitter) before its error is returned; 0 means 6.
	MaxAttempts int `yaml:"max_attempts"`
}

// DefaultMaxAttempts is the attempts per request when Config.MaxAttempts is 0.
const DefaultMaxAttempts = 6

// bucketName is S3's rule for new bucket names (3-63 characters of a-z,
// 0-9, '.' and '-', starting and ending with a letter or digit).
var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// Validate reports the first invalid field, naming it by its YAML path under
// "s3", e.g. "--s3-bucket: must not be empty".
func (c Config) Validate() error {
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		switch {
		case !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://"):
			return fmt.Errorf("--s3-endpoint: %q must start with http:// or https://", c.Endpoint)
		case err != nil:
			return fmt.Errorf("--s3-endpoint: %w", err)
		case u.Host == "":
			return fmt.Errorf("--s3-endpoint: %q has no host", c.Endpoint)
		}
	}
	if strings.ContainsAny(c.Region, " \t\n/") {
		return fmt.Errorf("--s3-region: %q is not a region name", c.Region)
	}
	switch {
	case c.Bucket == "":
		return errors.New("--s3-bucket: must not be empty")
	case !bucketName.MatchString(c.Bucket) || strings.Contains(c.Bucket, ".."):
		return fmt.Errorf("--s3-bucket: %q is not a valid bucket name (3-63 characters of a-z, 0-9, '.', '-', starting and ending with a letter or digit)", c.Bucket)
	}
	if p := strings.TrimSuffix(c.Prefix, "/"); p != "" {
		if strings.HasPrefix(p, "/") || strings.Contains(p, "//") {
			return fmt.Errorf("--s3-prefix: %q must not start with \"/\" or contain \"//\"", c.Prefix)
		}
	}
	switch c.SSE {
	case "", "AES256", "aws:kms":
	default:
		return fmt.Errorf("--s3-sse: %q: want AES256 (SSE-S3), aws:kms (SSE-KMS) or empty (the bucket's default)", c.SSE)
	}
	if c.SSEKMSKeyID != "" && c.SSE != "aws:kms" {
		return errors.New("--s3-sse-kms-key-id: set only with --s3-sse aws:kms")
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > 100 {
		return fmt.Errorf("--s3-max-attempts: %d is not between 0 (the default, %d) and 100", c.MaxAttempts, DefaultMaxAttempts)
	}
	switch {
	case c.AccessKey != "" && c.SecretKey == "":
		return errors.New("--s3-secret-key: must be set when --s3-access-key is")
	case c.SecretKey != "" && c.AccessKey == "":
		return errors.New("--s3-access-key: must be set when --s3-secret-key is")
	}
	return nil
}

// RegisterFlags binds c's fields to flags named {prefix}s3-endpoint,
// {prefix}s3-region, {prefix}s3-bucket, {prefix}s3-prefix,
// {prefix}s3-access-key, {prefix}s3-secret-key, {prefix}s3-path-style,
// {prefix}s3-sse, {prefix}s3-sse-kms-key-id and {prefix}s3-max-attempts,
// with c's current values as defaults (DefaultRegion when Region is empty).
// Pass prefix "" for the usual names, or e.g. "backfill-" for a second store.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	n := func(name string) string { return prefix + "s3-" + name }
	fs.StringVar(&c.Endpoint, n("endpoint"), c.Endpoint, "S3 API base URL, e.g. http://127.0.0.1:9000 for MinIO; empty uses AWS's endpoint for the region")
	fs.StringVar(&c.Region, n("region"), c.Region, "S3 region (signing, and where a missing bucket is created)")
	fs.StringVar(&c.Bucket, n("bucket"), c.Bucket, "S3 bucket (required)")
	fs.StringVar(&c.Prefix, n("prefix"), c.Prefix, "key prefix inside the bucket, e.g. fleet/prod; empty uses the bucket root")
	fs.StringVar(&c.AccessKey, n("access-key"), c.AccessKey, "S3 access key; empty (with an empty secret key) uses the default AWS credential chain")
	fs.StringVar(&c.SecretKey, n("secret-key"), c.SecretKey, "S3 secret key; prefer setting it through the environment over the command line")
	fs.BoolVar(&c.PathStyle, n("path-style"), c.PathStyle, "address buckets as ENDPOINT/BUCKET/KEY (MinIO, the embedded endpoint) instead of BUCKET.ENDPOINT/KEY")
	fs.StringVar(&c.SSE, n("sse"), c.SSE, "server-side encryption of written objects: AES256 (SSE-S3), aws:kms (SSE-KMS) or empty (the bucket's default)")
	fs.StringVar(&c.SSEKMSKeyID, n("sse-kms-key-id"), c.SSEKMSKeyID, "KMS key ID or ARN for --s3-sse aws:kms; empty uses the account's default S3 key")
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	fs.IntVar(&c.MaxAttempts, n("max-attempts"), c.MaxAttempts, "tries per S3 request, with exponential backoff and jitter, before giving up")
}
