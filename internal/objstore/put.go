package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// PutOptions qualify a write.
type PutOptions struct {
	// ContentType of the object; empty leaves the store's default.
	ContentType string
	// Metadata is stored as x-amz-meta-* headers; keys should be lower case.
	Metadata map[string]string
	// IfNoneMatch writes only if no object exists at the key (If-None-Match: *).
	IfNoneMatch bool
	// IfMatch, when set, writes only if the object's current ETag is this one.
	IfMatch string
}

// PutBytes stores data at key in one PutObject and returns the new ETag. A
// lost condition gives an error wrapping ErrPreconditionFailed.
func (s *Store) PutBytes(ctx context.Context, key string, data []byte, opts PutOptions) (etag string, err error) {
	full, err := s.fullKey(key)
	if err != nil {
		return "", err
	}
	in := &s3.PutObjectInput{
		Bucket: aws.String(s.bucket), Key: aws.String(full), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), Metadata: opts.Metadata,
	}
	if opts.ContentType != "" {
		in.ContentType = aws.String(opts.ContentType)
	}
	if opts.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	if opts.IfMatch != "" {
		in.IfMatch = aws.String(opts.IfMatch)
	}
	if s.sse != "" {
		in.ServerSideEncryption = s.sse
		if s.kmsKey != "" {
			in.SSEKMSKeyId = aws.String(s.kmsKey)
		}
	}
	out, err := s.client.PutObject(ctx, in)
	if err != nil {
		return "", s.wrap("put", key, err)
	}
	return aws.ToString(out.ETag), nil
}

// Put stores body at key, replacing any object there; the object appears
// whole or not at all. size is body's exact length, or -1 if unknown; a body
// that turns out shorter or longer fails the Put and stores nothing. Bodies
// above PartSize are streamed as a multipart upload, aborted if the Put
// fails. An empty contentType leaves the store's default. Put returns once
// S3 has acknowledged the object.
func (s *Store) Put(ctx context.Context, key string, body io.Reader, size int64, contentType string) error {
	if size >= 0 {
		body = &exactReader{r: body, left: size}
	}
	u, err := s.NewUpload(ctx, key, PutOptions{ContentType: contentType})
	if err != nil {
		return err
	}
	if _, err := io.Copy(u, body); err != nil {
		u.Abort(context.WithoutCancel(ctx))
		return fmt.Errorf("objstore: put %s: %w", s.URI(key), err)
	}
	_, err = u.Complete(ctx)
	return err
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
