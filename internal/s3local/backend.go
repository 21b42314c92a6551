package s3local

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/johannesboyne/gofakes3"
)

// internalDir is the folder under Config.Dir that holds everything that is
// not an object. Its name is not a valid bucket name, so it can never clash
// with a bucket and is never listed as one.
const internalDir = ".s3local"

// fsBackend is a gofakes3.Backend that keeps each object as a plain file at
// {root}/{bucket}/{key}. Per-object metadata (MD5, Content-Type, user
// metadata) lives in JSON sidecars under {root}/.s3local/meta, named by a
// hash of the key, so object folders hold nothing but objects and no sidecar
// name ends in ".parquet".
//
// Writes stream into {root}/.s3local/tmp, are fsynced, then renamed into
// place: a reader never sees a partial object. Multipart uploads are handled
// by gofakes3's in-memory uploader, which calls PutObject once on completion.
//
// A sidecar is trusted only while the object file's size and modification
// time match it; otherwise (the file was written or changed by something else)
// the MD5 is recomputed from the file, metadata is dropped, and the sidecar is
// rewritten.
//
// Plain files cannot represent every S3 key: keys with empty, "." or ".."
// segments, a trailing "/", backslashes or NUL bytes are rejected with
// InvalidArgument, and a key cannot be stored where another key is a folder
// ("a" and "a/b" cannot both exist).
type fsBackend struct {
	root    string
	metaDir string
	tmpDir  string
	log     *slog.Logger

	// mu serialises namespace changes (create/rename/remove); readers take
	// it shared while they resolve a key to an open file and its sidecar,
	// not while the body is streamed.
	mu sync.RWMutex
}

var _ gofakes3.Backend = (*fsBackend)(nil)

// sidecar is the JSON stored for each object under .s3local/meta.
type sidecar struct {
	Key     string            `json:"key"`
	Size    int64             `json:"size"`
	ModTime int64             `json:"mtime_unix_nano"`
	MD5     string            `json:"md5"`
	Meta    map[string]string `json:"meta,omitempty"`
}

func newFSBackend(root string, log *slog.Logger) (*fsBackend, error) {
	b := &fsBackend{
		root:    root,
		metaDir: filepath.Join(root, internalDir, "meta"),
		tmpDir:  filepath.Join(root, internalDir, "tmp"),
		log:     log,
	}
	for _, d := range []string{b.metaDir, b.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// Leftovers of uploads interrupted by a crash: nothing refers to them.
	leftovers, err := os.ReadDir(b.tmpDir)
	if err != nil {
		return nil, err
	}
	for _, e := range leftovers {
		_ = os.RemoveAll(filepath.Join(b.tmpDir, e.Name()))
	}
	return b, nil
}

func (b *fsBackend) bucketDir(bucket string) string { return filepath.Join(b.root, bucket) }

func (b *fsBackend) objectPath(bucket, key string) string {
	return filepath.Join(b.root, bucket, filepath.FromSlash(key))
}

func (b *fsBackend) sidecarPath(bucket, key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])
	return filepath.Join(b.metaDir, bucket, h[:2], h+".json")
}

// checkKey reports why key cannot be stored as a plain file, or nil.
func checkKey(key string) error {
	if key == "" {
		return gofakes3.ErrorMessage(gofakes3.ErrInvalidArgument, "empty key")
	}
	if len(key) > 1024 {
		return gofakes3.ErrKeyTooLong
	}
	if strings.HasSuffix(key, "/") {
		return gofakes3.ErrorMessagef(gofakes3.ErrInvalidArgument, "s3local: key %q ends in \"/\": folder markers cannot be stored as plain files", key)
	}
	for _, seg := range strings.Split(key, "/") {
		switch {
		case seg == "", seg == ".", seg == "..":
			return gofakes3.ErrorMessagef(gofakes3.ErrInvalidArgument, "s3local: key %q has an empty, \".\" or \"..\" path segment", key)
		case len(seg) > 255:
			return gofakes3.ErrorMessagef(gofakes3.ErrInvalidArgument, "s3local: key %q has a path segment longer than 255 bytes", key)
		case strings.ContainsAny(seg, "\x00\\"):
			return gofakes3.ErrorMessagef(gofakes3.ErrInvalidArgument, "s3local: key %q contains a NUL byte or backslash", key)
		}
	}
	return nil
}

// bucketExists reports whether bucket is a valid name with a folder.
func (b *fsBackend) bucketExists(bucket string) bool {
	if gofakes3.ValidateBucketName(bucket) != nil {
		return false
	}
	fi, err := os.Stat(b.bucketDir(bucket))
	return err == nil && fi.IsDir()
}

func (b *fsBackend) ListBuckets() ([]gofakes3.BucketInfo, error) {
	entries, err := os.ReadDir(b.root)
	if err != nil {
		return nil, err
	}
	var out []gofakes3.BucketInfo
	for _, e := range entries {
		if !e.IsDir() || gofakes3.ValidateBucketName(e.Name()) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, gofakes3.BucketInfo{Name: e.Name(), CreationDate: gofakes3.NewContentTime(fi.ModTime())})
	}
	return out, nil
}

func (b *fsBackend) BucketExists(name string) (bool, error) { return b.bucketExists(name), nil }

func (b *fsBackend) CreateBucket(name string) error {
	if err := gofakes3.ValidateBucketName(name); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	err := os.Mkdir(b.bucketDir(name), 0o755)
	if errors.Is(err, fs.ErrExist) {
		return gofakes3.ResourceError(gofakes3.ErrBucketAlreadyExists, name)
	}
	return err
}

func (b *fsBackend) DeleteBucket(name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.bucketExists(name) {
		return gofakes3.BucketNotFound(name)
	}
	errFound := errors.New("found")
	err := filepath.WalkDir(b.bucketDir(name), func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return gofakes3.ResourceError(gofakes3.ErrBucketNotEmpty, name)
	} else if err != nil {
		return err
	}
	return b.removeBucketLocked(name)
}

func (b *fsBackend) ForceDeleteBucket(name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.bucketExists(name) {
		return gofakes3.BucketNotFound(name)
	}
	return b.removeBucketLocked(name)
}

func (b *fsBackend) removeBucketLocked(name string) error {
	if err := os.RemoveAll(b.bucketDir(name)); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(b.metaDir, name))
}

// describe returns the MD5 and metadata of the object whose open file is f.
// The caller holds b.mu (shared or exclusive).
func (b *fsBackend) describe(bucket, key string, f *os.File, fi fs.FileInfo) (sum []byte, meta map[string]string, err error) {
	sc, err := b.readSidecar(bucket, key)
	if err == nil && sc.Key == key && sc.Size == fi.Size() && sc.ModTime == fi.ModTime().UnixNano() {
		if sum, err := hex.DecodeString(sc.MD5); err == nil && len(sum) == md5.Size {
			return sum, sc.Meta, nil
		}
	}
	// Missing or stale: the file was not written by us, or changed since.
	h := md5.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size())); err != nil {
		return nil, nil, err
	}
	sum = h.Sum(nil)
	fresh := &sidecar{Key: key, Size: fi.Size(), ModTime: fi.ModTime().UnixNano(), MD5: hex.EncodeToString(sum)}
	if err := b.writeSidecar(bucket, key, fresh); err != nil {
		b.log.Warn("s3local: cannot cache object metadata", "bucket", bucket, "key", key, "err", err)
	}
	return sum, nil, nil
}

func (b *fsBackend) readSidecar(bucket, key string) (*sidecar, error) {
	raw, err := os.ReadFile(b.sidecarPath(bucket, key))
	if err != nil {
		return nil, err
	}
	var sc sidecar
	if err := json.Unmarshal(raw, &sc); err != nil {
		return nil, err
	}
	return &sc, nil
}

// writeSidecar replaces the sidecar of key atomically.
func (b *fsBackend) writeSidecar(bucket, key string, sc *sidecar) error {
	raw, err := json.Marshal(sc)
	if err != nil {
		return err
	}
	p := b.sidecarPath(bucket, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(b.tmpDir, "meta-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(raw)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// openObject opens key's file and describes it, holding b.mu shared.
func (b *fsBackend) openObject(bucket, key string) (*os.File, fs.FileInfo, []byte, map[string]string, error) {
	if !b.bucketExists(bucket) {
		return nil, nil, nil, nil, gofakes3.BucketNotFound(bucket)
	}
	if checkKey(key) != nil {
		return nil, nil, nil, nil, gofakes3.KeyNotFound(key)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	f, err := os.Open(b.objectPath(bucket, key))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil, nil, nil, gofakes3.KeyNotFound(key)
	} else if err != nil {
		return nil, nil, nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = gofakes3.KeyNotFound(key)
	}
	var sum []byte
	var meta map[string]string
	if err == nil {
		sum, meta, err = b.describe(bucket, key, f, fi)
	}
	if err != nil {
		f.Close()
		return nil, nil, nil, nil, err
	}
	return f, fi, sum, withLastModified(meta, fi), nil
}

// withLastModified returns a copy of meta with Last-Modified set from the
// file, which is what listings report too.
func withLastModified(meta map[string]string, fi fs.FileInfo) map[string]string {
	out := make(map[string]string, len(meta)+1)
	for k, v := range meta {
		out[k] = v
	}
	out["Last-Modified"] = fi.ModTime().UTC().Format(http.TimeFormat)
	return out
}

func (b *fsBackend) HeadObject(bucket, key string) (*gofakes3.Object, error) {
	f, fi, sum, meta, err := b.openObject(bucket, key)
	if err != nil {
		return nil, err
	}
	f.Close()
	return &gofakes3.Object{Name: key, Metadata: meta, Size: fi.Size(), Hash: sum, Contents: io.NopCloser(strings.NewReader(""))}, nil
}

func (b *fsBackend) GetObject(bucket, key string, rangeRequest *gofakes3.ObjectRangeRequest) (*gofakes3.Object, error) {
	f, fi, sum, meta, err := b.openObject(bucket, key)
	if err != nil {
		return nil, err
	}
	rng, err := rangeRequest.Range(fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	var body io.ReadCloser = f
	if rng != nil {
		body = struct {
			io.Reader
			io.Closer
		}{io.NewSectionReader(f, rng.Start, rng.Length), f}
	}
	return &gofakes3.Object{Name: key, Metadata: meta, Size: fi.Size(), Hash: sum, Range: rng, Contents: body}, nil
}

// keptMeta filters the request headers gofakes3 hands to PutObject down to
// what S3 stores with an object. Signing and checksum headers are dropped:
// echoing a part's or a chunk's checksum on GET would make clients fail
// their response checksum validation.
func keptMeta(meta map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range meta {
		switch {
		case k == "Content-Type", k == "Content-Disposition":
			out[k] = v
		case k == "Content-Encoding":
			// "aws-chunked" describes the upload, not the object.
			var keep []string
			for _, tok := range strings.Split(v, ",") {
				if tok = strings.TrimSpace(tok); tok != "" && !strings.EqualFold(tok, "aws-chunked") {
					keep = append(keep, tok)
				}
			}
			if len(keep) > 0 {
				out[k] = strings.Join(keep, ",")
			}
		case strings.HasPrefix(http.CanonicalHeaderKey(k), "X-Amz-Meta-"):
			out[http.CanonicalHeaderKey(k)] = v
		}
	}
	return out
}

func (b *fsBackend) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64, conditions *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	var res gofakes3.PutObjectResult
	if !b.bucketExists(bucket) {
		return res, gofakes3.BucketNotFound(bucket)
	}
	if err := checkKey(key); err != nil {
		return res, err
	}

	// Stream the body to a temporary file without holding the lock.
	tmp, err := os.CreateTemp(b.tmpDir, "put-*")
	if err != nil {
		return res, err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	h := md5.New()
	n, err := io.Copy(tmp, io.TeeReader(input, h))
	if err == nil && size >= 0 && n != size {
		err = gofakes3.ErrIncompleteBody
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, err
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.bucketExists(bucket) { // deleted meanwhile
		return res, gofakes3.BucketNotFound(bucket)
	}
	target := b.objectPath(bucket, key)
	if conditions != nil {
		info := &gofakes3.ConditionalObjectInfo{}
		if f, err := os.Open(target); err == nil {
			fi, err := f.Stat()
			if err == nil && fi.Mode().IsRegular() {
				info.Exists = true
				info.Hash, _, err = b.describe(bucket, key, f, fi)
			}
			f.Close()
			if err != nil {
				return res, err
			}
		}
		if err := gofakes3.CheckPutConditions(conditions, info); err != nil {
			return res, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, fs.ErrExist) {
			return res, gofakes3.ErrorMessagef(gofakes3.ErrInvalidArgument, "s3local: key %q: a parent path is already an object, and plain files cannot be both", key)
		}
		return res, err
	}
	if fi, err := os.Lstat(target); err == nil && fi.IsDir() {
		return res, gofakes3.ErrorMessagef(gofakes3.ErrInvalidArgument, "s3local: key %q: objects exist under %q/, and plain files cannot be both", key, key)
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return res, err
	}
	fi, err := os.Stat(target)
	if err != nil {
		return res, err
	}
	sc := &sidecar{Key: key, Size: fi.Size(), ModTime: fi.ModTime().UnixNano(), MD5: hex.EncodeToString(h.Sum(nil)), Meta: keptMeta(meta)}
	if err := b.writeSidecar(bucket, key, sc); err != nil {
		return res, fmt.Errorf("s3local: write metadata of %s/%s: %w", bucket, key, err)
	}
	return res, nil
}

func (b *fsBackend) CopyObject(srcBucket, srcKey, dstBucket, dstKey string, meta map[string]string) (gofakes3.CopyObjectResult, error) {
	return gofakes3.CopyObject(b, srcBucket, srcKey, dstBucket, dstKey, meta)
}

func (b *fsBackend) DeleteObject(bucket, key string) (gofakes3.ObjectDeleteResult, error) {
	var res gofakes3.ObjectDeleteResult
	if !b.bucketExists(bucket) {
		return res, gofakes3.BucketNotFound(bucket)
	}
	if checkKey(key) != nil {
		return res, nil // cannot exist; deleting a missing key is not an error
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return res, b.deleteLocked(bucket, key)
}

func (b *fsBackend) deleteLocked(bucket, key string) error {
	p := b.objectPath(bucket, key)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || (err == nil && fi.IsDir()) {
		return nil
	} else if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Remove(b.sidecarPath(bucket, key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// Prune folders the delete emptied, so they do not show up as common
	// prefixes. os.Remove refuses non-empty folders, which ends the climb.
	stop := b.bucketDir(bucket)
	for dir := filepath.Dir(p); dir != stop && strings.HasPrefix(dir, stop); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

func (b *fsBackend) DeleteMulti(bucket string, keys ...string) (gofakes3.MultiDeleteResult, error) {
	var res gofakes3.MultiDeleteResult
	if !b.bucketExists(bucket) {
		return res, gofakes3.BucketNotFound(bucket)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, key := range keys {
		var err error
		if checkKey(key) == nil {
			err = b.deleteLocked(bucket, key)
		}
		if err != nil {
			b.log.Warn("s3local: delete failed", "bucket", bucket, "key", key, "err", err)
			res.Error = append(res.Error, gofakes3.ErrorResult{Key: key, Code: gofakes3.ErrInternal, Message: err.Error()})
			continue
		}
		res.Deleted = append(res.Deleted, gofakes3.ObjectID{Key: key})
	}
	return res, nil
}

func (b *fsBackend) ListBucket(bucket string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	if prefix == nil {
		prefix = &gofakes3.Prefix{}
	}
	if !b.bucketExists(bucket) {
		return nil, gofakes3.BucketNotFound(bucket)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()

	keys, err := b.keysLocked(bucket, prefix.Prefix)
	if err != nil {
		return nil, err
	}

	out := gofakes3.NewObjectList()
	var (
		match      gofakes3.PrefixMatch
		lastPrefix string
		count      int64
		last       string // last key or common prefix emitted
	)
	for _, key := range keys {
		if page.HasMarker && key <= page.Marker {
			continue
		}
		if !prefix.Match(key, &match) {
			continue
		}
		if match.CommonPrefix {
			if match.MatchedPart == lastPrefix || (page.HasMarker && match.MatchedPart <= page.Marker) {
				continue
			}
		}
		if page.MaxKeys > 0 && count >= page.MaxKeys {
			out.IsTruncated = true
			out.NextMarker = last
			break
		}
		count++
		if match.CommonPrefix {
			out.AddPrefix(match.MatchedPart)
			lastPrefix, last = match.MatchedPart, match.MatchedPart
			continue
		}
		content, err := b.contentLocked(bucket, key)
		if errors.Is(err, fs.ErrNotExist) {
			count-- // removed behind our back
			continue
		} else if err != nil {
			return nil, err
		}
		out.Add(content)
		last = key
	}
	return out, nil
}

func (b *fsBackend) contentLocked(bucket, key string) (*gofakes3.Content, error) {
	f, err := os.Open(b.objectPath(bucket, key))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sum, _, err := b.describe(bucket, key, f, fi)
	if err != nil {
		return nil, err
	}
	return &gofakes3.Content{
		Key:          key,
		LastModified: gofakes3.NewContentTime(fi.ModTime()),
		ETag:         gofakes3.FormatETag(sum),
		Size:         fi.Size(),
	}, nil
}

// keysLocked returns, sorted, the keys of the regular files in bucket that
// start with prefix. Only the folders that can hold such keys are walked.
func (b *fsBackend) keysLocked(bucket, prefix string) ([]string, error) {
	bucketDir := b.bucketDir(bucket)
	start := bucketDir
	if i := strings.LastIndexByte(prefix, '/'); i > 0 {
		dir := prefix[:i]
		if checkKey(dir) != nil {
			return nil, nil // no stored key can live under it
		}
		start = filepath.Join(bucketDir, filepath.FromSlash(dir))
	}
	var keys []string
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
				return fs.SkipAll
			}
			return err
		}
		rel, err := filepath.Rel(bucketDir, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != start && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			// Follow symlinks to files, which users may drop in by hand.
			if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
				return nil
			}
		}
		if strings.HasPrefix(key, prefix) && checkKey(key) == nil {
			keys = append(keys, key)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Walk order is per folder; S3 order is by the whole key ("a.c" < "a/b").
	sort.Strings(keys)
	return keys, nil
}
