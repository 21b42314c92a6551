// Package s3local is an in-process S3 endpoint that stores every object as a
// plain file at {Dir}/{bucket}/{key}. The embedded stack and unit tests use it
// in place of S3 or MinIO, through the same aws-sdk-go-v2 code paths, and
// users can read what it stores directly, e.g. with DuckDB:
//
//	SELECT * FROM read_parquet('./data/s3/fleet/**/*.parquet');
//
// The S3 REST protocol is served by github.com/johannesboyne/gofakes3 over a
// small file-system backend of this package (gofakes3's own afero backend
// keeps objects under {Dir}/buckets/ and fails on files it did not write).
// Everything that is not an object lives under {Dir}/.s3local/: JSON metadata
// sidecars named by a hash of the key, and in-flight uploads. No file there
// ends in ".parquet", so even a {Dir}/**/*.parquet glob matches objects only.
//
// Clients must use path-style addressing (http://host:port/bucket/key). Any
// access key and secret are accepted; signatures are not checked.
// Conditional writes (If-None-Match: *, If-Match: ETag) hold on PutObject and
// CompleteMultipartUpload, as on AWS S3 and MinIO. Multipart
// uploads are assembled in memory by gofakes3 and written on completion;
// uploads that are never completed or aborted hold their parts in memory
// until the Server stops. One Server at a time may use a Dir.
package s3local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/johannesboyne/gofakes3"
)

// Config configures a Server.
type Config struct {
	// Dir is the root folder; objects are stored at Dir/{bucket}/{key}.
	// It is created if missing.
	Dir string `yaml:"dir"`
	// Addr is the TCP listen address, e.g. "127.0.0.1:9000". A port of 0
	// picks a free port; empty means "127.0.0.1:0".
	Addr string `yaml:"addr"`
	// Buckets are created at start when missing.
	Buckets []string `yaml:"buckets"`
}

// Validate reports the first invalid field, naming it.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("s3local.dir: must not be empty")
	}
	if c.Addr != "" {
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			return fmt.Errorf("s3local.addr: %w", err)
		}
	}
	for i, b := range c.Buckets {
		if err := gofakes3.ValidateBucketName(b); err != nil {
			return fmt.Errorf("s3local.buckets[%d]: %q: %w", i, b, err)
		}
	}
	return nil
}

// Deps are the Server's dependencies.
type Deps struct {
	// Logger receives server errors, and every request at debug level.
	// Nil discards.
	Logger *slog.Logger
}

// shutdownTimeout bounds how long Run waits for in-flight requests after its
// context is cancelled before closing their connections.
const shutdownTimeout = 5 * time.Second

// Server is an S3 endpoint serving the files under Config.Dir.
type Server struct {
	log *slog.Logger
	ln  net.Listener
	srv *http.Server
	url string

	mu      sync.Mutex
	started bool // Run called, or Close before Run
	// fresh holds connections accepted that have not begun a request. An
	// HTTP client may dial a spare connection it then never uses (Go's
	// transport does, under concurrent requests); http.Server.Shutdown
	// waits 5 seconds before treating such a connection as idle. Run closes
	// them at once on shutdown: no request is in flight on them.
	fresh map[net.Conn]struct{}
}

// New creates Dir and the configured buckets, and binds the listener, so
// URL is valid as soon as New returns. Requests are served only once Run is
// called (connections made before that wait in the listen backlog). A
// Server that is never Run must be Closed to release its port.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("s3local.dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("s3local: create dir: %w", err)
	}
	backend, err := newFSBackend(dir, log)
	if err != nil {
		return nil, fmt.Errorf("s3local: prepare %s: %w", dir, err)
	}
	for _, b := range cfg.Buckets {
		if err := backend.CreateBucket(b); err != nil && !gofakes3.HasErrorCode(err, gofakes3.ErrBucketAlreadyExists) {
			return nil, fmt.Errorf("s3local: create bucket %q: %w", b, err)
		}
	}

	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("s3local: listen on %s: %w", addr, err)
	}

	faker := gofakes3.New(backend,
		gofakes3.WithLogger(fakesLogger{log}),
		gofakes3.WithHostBucket(false),
		gofakes3.WithAutoBucket(false),
	)
	s := &Server{
		log: log,
		ln:  ln,
		url: "http://" + dialable(ln.Addr().(*net.TCPAddr)),
		srv: &http.Server{
			Handler:           &conditional{next: faker.Server(), backend: backend},
			ReadHeaderTimeout: 30 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		fresh: make(map[net.Conn]struct{}),
	}
	s.srv.ConnState = s.connState
	log.Info("s3local: listening", "url", s.url, "dir", dir)
	return s, nil
}

// dialable turns a bound address into one clients can dial: an unspecified
// IP (0.0.0.0, ::) becomes 127.0.0.1.
func dialable(a *net.TCPAddr) string {
	ip := a.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(a.Port))
}

func (s *Server) connState(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == http.StateNew {
		s.fresh[c] = struct{}{}
	} else {
		delete(s.fresh, c)
	}
}

// closeFresh closes the connections that never began a request.
func (s *Server) closeFresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.fresh {
		c.Close()
		delete(s.fresh, c)
	}
}

// URL returns the endpoint, e.g. "http://127.0.0.1:9000", for clients'
// BaseEndpoint (with path-style addressing). It is safe for concurrent use.
func (s *Server) URL() string { return s.url }

// Run serves requests until ctx is cancelled, then stops accepting, lets
// in-flight requests finish for up to 5 seconds, closes what remains, and
// returns. It returns nil after a graceful stop and an error if serving
// failed or connections had to be cut. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("s3local: Run called twice or after Close")
	}
	s.started = true
	s.mu.Unlock()

	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(s.ln) }()

	select {
	case err := <-served:
		return fmt.Errorf("s3local: serve: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.srv.Shutdown(shutCtx) }()
	// Shutdown has closed the listener by the time it polls; closing the
	// fresh connections now (and once more in case one raced the close)
	// lets it finish as soon as the real requests have.
	s.closeFresh()
	var err error
	select {
	case err = <-shut:
	case <-time.After(100 * time.Millisecond):
		s.closeFresh()
		err = <-shut
	}
	if err != nil {
		s.srv.Close()
	}
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("s3local: shutdown: %w", err)
	}
	s.log.Info("s3local: stopped", "url", s.url)
	return nil
}

// Close releases the listener of a Server whose Run was never called, and
// makes a later Run fail. Once Run has started, Close does nothing: cancel
// Run's context instead.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return nil
	}
	s.started = true
	return s.ln.Close()
}

// fakesLogger adapts gofakes3's logger to slog. gofakes3 logs internal
// errors at LogErr and a line per request at LogInfo.
type fakesLogger struct{ log *slog.Logger }

func (l fakesLogger) Print(level gofakes3.LogLevel, v ...any) {
	lvl := slog.LevelDebug
	switch level {
	case gofakes3.LogErr:
		lvl = slog.LevelError
	case gofakes3.LogWarn:
		lvl = slog.LevelWarn
	}
	ctx := context.Background()
	if !l.log.Enabled(ctx, lvl) {
		return
	}
	l.log.Log(ctx, lvl, "s3local: "+strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}
