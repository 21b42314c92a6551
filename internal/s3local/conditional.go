package s3local

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/johannesboyne/gofakes3"
)

// conditional makes S3's conditional writes hold for multipart uploads too.
// gofakes3 checks If-None-Match and If-Match on PutObject but ignores them on
// CompleteMultipartUpload, which callers that fence writers rely on (AWS S3
// and MinIO honour both). conditional checks the condition of a
// CompleteMultipartUpload against the stored object and answers 412
// PreconditionFailed as S3 does. Every conditional request, PutObject
// included, runs under one lock, so a check and the write it guards are
// atomic with respect to each other's conditional writes (writers that
// fence each other only ever write conditionally).
type conditional struct {
	next    http.Handler
	backend *fsBackend
	mu      sync.Mutex
}

func (c *conditional) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ifNone, ifMatch := r.Header.Get("If-None-Match"), r.Header.Get("If-Match")
	write := r.Method == http.MethodPut || (r.Method == http.MethodPost && r.URL.Query().Has("uploadId"))
	if !write || (ifNone == "" && ifMatch == "") {
		c.next.ServeHTTP(w, r)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Method == http.MethodPost {
		bucket, key, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if !ok {
			c.next.ServeHTTP(w, r)
			return
		}
		info := &gofakes3.ConditionalObjectInfo{}
		if obj, err := c.backend.HeadObject(bucket, key); err == nil {
			info.Exists = true
			info.Hash = obj.Hash
		}
		cond := &gofakes3.PutConditions{}
		if ifNone != "" {
			cond.IfNoneMatch = &ifNone
		}
		if ifMatch != "" {
			cond.IfMatch = &ifMatch
		}
		if err := gofakes3.CheckPutConditions(cond, info); err != nil {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusPreconditionFailed)
			fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold (object %s, ETag "%s")</Message><Resource>%s</Resource></Error>`,
				key, hex.EncodeToString(info.Hash), r.URL.Path)
			return
		}
	}
	c.next.ServeHTTP(w, r)
}
