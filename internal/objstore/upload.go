package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Upload streams one object to S3. Bytes written are cut into parts of
// PartSize, each uploaded in the background as soon as it is full (the
// multipart upload is created with the first part), so memory stays at
// about one part per Upload plus the Store's part slots, whatever the
// object's size. Complete makes the object appear, whole; an object smaller
// than a part goes up as one PutObject instead. Nothing is visible at the
// key before Complete succeeds.
//
// An Upload is used by one goroutine at a time (Write, then Complete or
// Abort). After an error or Abort every method fails.
type Upload struct {
	s    *Store
	key  string
	full string
	opts PutOptions

	buf  []byte // the part being filled
	size int64
	sent int // parts handed to run

	queue    chan part // to run, in part order; closed by Complete or Abort
	abort    chan struct{}
	finished chan struct{} // closed when run has returned
	closed   bool

	mu    sync.Mutex // guards what run and its part goroutines set
	id    string     // multipart upload ID, once created
	etags []string   // by part number - 1
	err   error      // first failure
}

type part struct {
	number int32
	data   []byte
}

// NewUpload starts streaming an object to key. ctx bounds the background
// part uploads until Complete or Abort; cancelling it fails the Upload.
// opts.IfMatch is not supported for uploads.
func (s *Store) NewUpload(ctx context.Context, key string, opts PutOptions) (*Upload, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return nil, err
	}
	if opts.IfMatch != "" {
		return nil, fmt.Errorf("objstore: upload %s: IfMatch is not supported for streamed uploads", s.URI(key))
	}
	u := &Upload{
		s: s, key: key, full: full, opts: opts,
		queue: make(chan part), abort: make(chan struct{}), finished: make(chan struct{}),
	}
	go u.run(ctx)
	return u, nil
}

// Size is the number of bytes written so far.
func (u *Upload) Size() int64 { return u.size }

// Write buffers p, handing full parts to the background uploads. It blocks
// while the Store's part slots are all taken (backpressure) and fails once
// the Upload has failed.
func (u *Upload) Write(p []byte) (int, error) {
	if u.closed {
		return 0, fmt.Errorf("objstore: upload %s: write after Complete or Abort", u.s.URI(u.key))
	}
	if err := u.failure(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		// A part is sent only once more bytes follow it, so that Complete
		// always has a non-empty last part.
		if len(u.buf) == PartSize {
			if err := u.send(); err != nil {
				return n - len(p), err
			}
			u.buf = getPart() // a big object: a whole part buffer at once
		}
		if len(u.buf) == cap(u.buf) {
			// Small objects keep small buffers: grow by doubling up to a part.
			grown := make([]byte, len(u.buf), min(max(2*cap(u.buf), 64<<10), PartSize))
			copy(grown, u.buf)
			u.buf = grown
		}
		c := copy(u.buf[len(u.buf):cap(u.buf)], p)
		u.buf = u.buf[:len(u.buf)+c]
		p = p[c:]
		u.size += int64(c)
	}
	return n, nil
}

// send hands the full buffer to run, once a part slot is free.
func (u *Upload) send() error {
	select {
	case u.s.parts <- struct{}{}:
	case <-u.abort:
		return u.failureOr(errors.New("aborted"))
	case <-u.finished:
		return u.failureOr(errors.New("background upload stopped"))
	}
	u.sent++
	select {
	case u.queue <- part{number: int32(u.sent), data: u.buf}:
		u.buf = nil
		return nil
	case <-u.finished:
		<-u.s.parts
		return u.failureOr(errors.New("background upload stopped"))
	}
}

// run creates the multipart upload with the first part and uploads parts
// concurrently (the part slots bound how many) until the queue is closed.
func (u *Upload) run(ctx context.Context) {
	defer close(u.finished)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-u.abort:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var p part
		select {
		case q, ok := <-u.queue:
			if !ok {
				return
			}
			p = q
		case <-ctx.Done():
			u.fail(fmt.Errorf("objstore: upload %s: %w", u.s.URI(u.key), ctx.Err()))
			return
		}
		if u.failure() == nil && u.id == "" {
			if err := u.create(ctx); err != nil {
				u.fail(err)
			}
		}
		if u.failure() != nil {
			putPart(p.data)
			<-u.s.parts
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-u.s.parts }()
			defer putPart(p.data)
			out, err := u.s.client.UploadPart(ctx, &s3.UploadPartInput{
				Bucket: aws.String(u.s.bucket), Key: aws.String(u.full), UploadId: aws.String(u.id),
				PartNumber: aws.Int32(p.number), Body: bytes.NewReader(p.data), ContentLength: aws.Int64(int64(len(p.data))),
			})
			if err != nil {
				u.fail(u.s.wrap(fmt.Sprintf("upload part %d of", p.number), u.key, err))
				return
			}
			u.mu.Lock()
			for len(u.etags) < int(p.number) {
				u.etags = append(u.etags, "")
			}
			u.etags[p.number-1] = aws.ToString(out.ETag)
			u.mu.Unlock()
		}()
	}
}

func (u *Upload) create(ctx context.Context) error {
	in := &s3.CreateMultipartUploadInput{Bucket: aws.String(u.s.bucket), Key: aws.String(u.full), Metadata: u.opts.Metadata}
	if u.opts.ContentType != "" {
		in.ContentType = aws.String(u.opts.ContentType)
	}
	if u.s.sse != "" {
		in.ServerSideEncryption = u.s.sse
		if u.s.kmsKey != "" {
			in.SSEKMSKeyId = aws.String(u.s.kmsKey)
		}
	}
	out, err := u.s.client.CreateMultipartUpload(ctx, in)
	if err != nil {
		return u.s.wrap("create multipart upload", u.key, err)
	}
	u.mu.Lock()
	u.id = aws.ToString(out.UploadId)
	u.mu.Unlock()
	return nil
}

func (u *Upload) fail(err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err == nil {
		u.err = err
	}
}

func (u *Upload) failure() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

func (u *Upload) failureOr(err error) error {
	if e := u.failure(); e != nil {
		return e
	}
	return fmt.Errorf("objstore: upload %s: %w", u.s.URI(u.key), err)
}

// Complete uploads what remains and makes the object appear at its key,
// returning its ETag. With opts.IfNoneMatch, an object already at the key
// fails it with an error wrapping ErrPreconditionFailed. On any error the
// multipart upload is aborted and nothing new is at the key.
func (u *Upload) Complete(ctx context.Context) (etag string, err error) {
	if u.closed {
		return "", fmt.Errorf("objstore: upload %s: Complete after Complete or Abort", u.s.URI(u.key))
	}
	if u.sent == 0 {
		// Small: one PutObject, no multipart upload was created.
		u.closed = true
		close(u.queue)
		<-u.finished
		data := u.buf
		if data == nil {
			data = []byte{}
		}
		etag, err = u.s.PutBytes(ctx, u.key, data, u.opts)
		putPart(u.buf)
		u.buf = nil
		return etag, err
	}
	if err := u.send(); err != nil { // the last part, never empty
		u.Abort(context.WithoutCancel(ctx))
		return "", err
	}
	u.closed = true
	close(u.queue)
	<-u.finished
	if err := u.failure(); err != nil {
		u.abortUpload(context.WithoutCancel(ctx))
		return "", err
	}
	parts := make([]types.CompletedPart, len(u.etags))
	for i, e := range u.etags {
		parts[i] = types.CompletedPart{PartNumber: aws.Int32(int32(i + 1)), ETag: aws.String(e)}
	}
	in := &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(u.s.bucket), Key: aws.String(u.full), UploadId: aws.String(u.id),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if u.opts.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := u.s.client.CompleteMultipartUpload(ctx, in)
	if err != nil {
		u.abortUpload(context.WithoutCancel(ctx))
		return "", u.s.wrap("complete multipart upload of", u.key, err)
	}
	u.mu.Lock()
	u.id = "" // done: nothing left to abort
	u.mu.Unlock()
	return aws.ToString(out.ETag), nil
}

// Abort stops the background uploads and discards the parts S3 holds. It is
// safe to call more than once and after a failed Complete.
func (u *Upload) Abort(ctx context.Context) {
	if !u.closed {
		u.closed = true
		close(u.abort)
		close(u.queue)
	}
	<-u.finished
	if u.buf != nil {
		putPart(u.buf)
		u.buf = nil
	}
	u.fail(errors.New("objstore: upload aborted"))
	u.abortUpload(ctx)
}

func (u *Upload) abortUpload(ctx context.Context) {
	u.mu.Lock()
	id := u.id
	u.id = ""
	u.mu.Unlock()
	if id == "" {
		return
	}
	_, err := u.s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: aws.String(u.s.bucket), Key: aws.String(u.full), UploadId: aws.String(id),
	})
	if err != nil {
		// The parts stay billed until a lifecycle rule (AbortIncompleteMultipartUpload) removes them.
		u.s.log.Warn("objstore: could not abort a multipart upload; a bucket lifecycle rule will have to remove its parts",
			"key", u.s.URI(u.key), "upload_id", id, "err", err)
	}
}

// Part buffers are recycled: an Upload takes one per PartSize bytes.
var partPool = sync.Pool{New: func() any { b := make([]byte, 0, PartSize); return &b }}

func getPart() []byte { return (*partPool.Get().(*[]byte))[:0] }

func putPart(b []byte) {
	if cap(b) == PartSize {
		b = b[:0]
		partPool.Put(&b)
	}
}
