package sink_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/s3local"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	bucket   = "fleet"
	prefix   = "lake/v1" // the sink's S3 key prefix; files are under s3://fleet/lake/v1/
	topic    = topics.KafkaTelemetry
	waitFor  = 20 * time.Second
	pollStep = 50 * time.Millisecond
)

// eventually polls cond until it returns nil, failing the test with cond's
// last error when the deadline passes.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, waitFor, err)
		}
		time.Sleep(pollStep)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// s3Server is an in-process S3 endpoint (s3local) behind a TCP proxy that
// a test can use to make S3 unreachable for a while.
//
// The proxy also makes stopping fast: it cuts every connection first.
// Without that, stopping s3local now and then takes 5s and fails: the AWS
// SDK's HTTP transport sometimes dials a connection that it then parks
// unused (a request got an idle one first), and net/http's graceful
// Shutdown waits for such a never-used connection until it is 5s old,
// which is all of s3local's shutdown budget.
type s3Server struct {
	t      *testing.T
	dir    string
	proxy  *tcpProxy
	cancel context.CancelFunc
	done   chan error
}

func startS3(t *testing.T) *s3Server {
	t.Helper()
	s := &s3Server{t: t, dir: t.TempDir()}
	srv, err := s3local.New(s3local.Config{Dir: s.dir, Addr: "127.0.0.1:0", Buckets: []string{bucket}}, s3local.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- srv.Run(ctx) }()
	if s.proxy, err = startProxy(strings.TrimPrefix(srv.URL(), "http://")); err != nil {
		s.stop()
		t.Fatal(err)
	}
	return s
}

func (s *s3Server) url() string { return "http://" + s.proxy.ln.Addr().String() }

// onRequest has f see every chunk of bytes a client sends to S3 before it
// is forwarded; a new HTTP request starts a chunk. f may block to hold the
// request back.
func (s *s3Server) onRequest(f func(chunk []byte)) { s.proxy.hook.Store(&f) }

// unreachable cuts every connection to S3 and resets new ones until
// reachable is called.
func (s *s3Server) unreachable() { s.proxy.setDown(true) }
func (s *s3Server) reachable()   { s.proxy.setDown(false) }

// stop shuts the endpoint down; it is a no-op the second time.
func (s *s3Server) stop() {
	if s.proxy != nil {
		s.proxy.close()
		s.proxy = nil
	}
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	if err := <-s.done; err != nil {
		s.t.Errorf("s3local Run: %v", err)
	}
}

// tcpProxy forwards the TCP connections it accepts to target, unless it is
// down: then it closes them at once.
type tcpProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{} // nil once closed
	hook   atomic.Pointer[func([]byte)]
}

func startProxy(target string) (*tcpProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go p.forward(c)
		}
	}()
	return p, nil
}

// track remembers c so that close and setDown can cut it; it closes c and
// returns false if the proxy is closed or down.
func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil || p.down {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c) // a no-op on a nil map
}

func (p *tcpProxy) forward(c net.Conn) {
	defer p.wg.Done()
	if !p.track(c) {
		return
	}
	defer func() { c.Close(); p.untrack(c) }()
	up, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(up) {
		return
	}
	defer func() { up.Close(); p.untrack(up) }()
	done := make(chan struct{}, 2)
	go func() { p.copyRequests(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

// copyRequests copies what the client sends, showing it to the hook first.
func (p *tcpProxy) copyRequests(up, c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if f := p.hook.Load(); f != nil {
				(*f)(buf[:n])
			}
			if _, werr := up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *tcpProxy) cutLocked() {
	for c := range p.conns {
		c.Close()
	}
}

func (p *tcpProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		p.cutLocked()
	}
}

// close stops accepting, cuts every connection and waits for the
// forwarding goroutines to end.
func (p *tcpProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.cutLocked()
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// env is an in-process Kafka cluster and S3 endpoint, a producer, and an S3
// client of the test's own, as a user would have.
type env struct {
	t       *testing.T
	cluster *kfake.Cluster
	brokers []string
	s3      *s3Server
	prod    *kgo.Client
	store   *objstore.Store
	closed  bool
	parsed  map[[sha256.Size]byte]*tables // files read before, by content
}

func newEnv(t *testing.T, partitions int32) *env {
	t.Helper()
	e := &env{t: t, s3: startS3(t)}
	t.Cleanup(e.close)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	e.cluster, e.brokers = cluster, cluster.ListenAddrs()
	// The kgo default partitioner hashes keys with murmur2, as the bridge's does.
	if e.prod, err = kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(topic)); err != nil {
		t.Fatal(err)
	}
	if e.store, err = objstore.New(context.Background(), e.s3Config(), objstore.Deps{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// close stops the producer, Kafka and S3 (sinks must be stopped first).
func (e *env) close() {
	if e.closed {
		return
	}
	e.closed = true
	if e.prod != nil {
		e.prod.Close()
	}
	if e.cluster != nil {
		e.cluster.Close()
	}
	e.s3.stop()
}

func (e *env) s3Config() objstore.Config {
	return objstore.Config{Endpoint: e.s3.url(), Bucket: bucket, Prefix: prefix,
		AccessKey: "test", SecretKey: "test", PathStyle: true}
}

// config is a sink configuration for this environment whose windows end
// 100ms (the least allowed) of record time after their first record, and
// whose quiet partitions are written on the next tick (within a second).
func (e *env) config() sink.Config {
	cfg := sink.DefaultConfig()
	cfg.Kafka.Brokers = e.brokers
	cfg.S3 = e.s3Config()
	cfg.Listen = "127.0.0.1:0"
	cfg.MaxFileAge = 100 * time.Millisecond
	cfg.QuietMargin = 0
	cfg.RowGroupRows = 1000
	return cfg
}

// produce sends the batches, keyed by vehicle ID, and returns their records
// (with partition and offset set).
func (e *env) produce(batches ...*wire.Batch) []*kgo.Record {
	e.t.Helper()
	recs := e.records(batches...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
	return recs
}

// records encodes batches as the bridge would put them in Kafka.
func (e *env) records(batches ...*wire.Batch) []*kgo.Record {
	e.t.Helper()
	recs := make([]*kgo.Record, len(batches))
	for i, b := range batches {
		data, err := wire.Encode(b, wire.EncodeOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		recs[i] = &kgo.Record{Key: []byte(b.VehicleID), Value: data}
	}
	return recs
}

// waitCommitted waits until the group has committed every partition up to
// the end of the topic, which the sink does only once the files are on S3.
func (e *env) waitCommitted(group string) {
	e.t.Helper()
	adm := kadm.NewClient(e.prod)
	eventually(e.t, "group "+group+" committed the whole topic", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			return err
		}
		committed, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			return err
		}
		var lag []string
		ends.Each(func(o kadm.ListedOffset) {
			c, ok := committed.Lookup(o.Topic, o.Partition)
			if o.Offset > 0 && (!ok || c.At != o.Offset) {
				lag = append(lag, fmt.Sprintf("partition %d: committed %d of %d", o.Partition, c.At, o.Offset))
			}
		})
		if len(lag) > 0 {
			return errors.New(strings.Join(lag, "; "))
		}
		return nil
	})
}

// checkStoppedCleanly checks what a graceful stop leaves: every partition's
// checkpoint has no window pending and is where the group's commit is.
func (e *env) checkStoppedCleanly(group string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	committed, err := kadm.NewClient(e.prod).FetchOffsets(ctx, group)
	if err != nil {
		e.t.Fatal(err)
	}
	committed.Each(func(o kadm.OffsetResponse) {
		cp, err := e.checkpoint(o.Partition)
		if err != nil || cp.Window != nil || cp.NextOffset != o.At {
			e.t.Errorf("partition %d after a graceful stop: committed %d, checkpoint %+v %v", o.Partition, o.At, cp, err)
		}
	})
}

// running is a Sink whose Run is going.
type running struct {
	t      *testing.T
	s      *sink.Sink
	reg    *prometheus.Registry
	cancel context.CancelFunc
	errc   chan error
	err    error
	done   bool
}

func (e *env) startSink(cfg sink.Config, opts ...func(*sink.Deps)) *running {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	deps := sink.Deps{Logger: testLogger(e.t), Registerer: reg, Gatherer: reg}
	for _, o := range opts {
		o(&deps)
	}
	s, err := sink.New(context.Background(), cfg, deps)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: e.t, s: s, reg: reg, cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- s.Run(ctx) }()
	e.t.Cleanup(func() { r.stop() })
	return r
}

// returned reports whether Run returns within d.
func (r *running) returned(d time.Duration) bool {
	if r.done {
		return true
	}
	select {
	case r.err = <-r.errc:
		r.done = true
		return true
	case <-time.After(d):
		return false
	}
}

// stop cancels Run and returns what it returned.
func (r *running) stop() error {
	if r.done {
		return r.err
	}
	r.done = true
	r.cancel()
	select {
	case r.err = <-r.errc:
	case <-time.After(45 * time.Second):
		r.t.Fatal("Run did not return within 45s of cancel")
	}
	return r.err
}

// metric returns the sum of the counter or gauge series with the given
// labels (others may differ) as the registry gathers them, 0 when none
// exists yet.
func (r *running) metric(name string, labels ...string) float64 {
	r.t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// parquetFiles returns every Parquet object under the sink's prefix, by key
// relative to the prefix, read as plain files from the S3 endpoint's folder
// (as `duckdb read_parquet('data/s3/fleet/**/*.parquet')` would).
func (e *env) parquetFiles() (map[string][]byte, error) {
	root := filepath.Join(e.s3.dir, bucket, filepath.FromSlash(prefix))
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".parquet") {
			return err
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) { // deleted while walking
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		out[filepath.ToSlash(rel)] = data
		return err
	})
	return out, err
}

func keysOf[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func readRows[T any](data []byte) ([]T, error) {
	return parquet.Read[T](bytes.NewReader(data), int64(len(data)))
}

// tables is every row of both tables across all files.
type tables struct {
	readings  []parquetout.ReadingRow
	locations []parquetout.LocationRow
	files     map[string][]byte
}

func (e *env) readTables() (*tables, error) {
	files, err := e.parquetFiles()
	if err != nil {
		return nil, err
	}
	if e.parsed == nil {
		e.parsed = map[[sha256.Size]byte]*tables{}
	}
	tb := &tables{files: files}
	for _, k := range keysOf(files) {
		table, _, _ := strings.Cut(k, "/")
		sum := sha256.Sum256(append([]byte(table+"\x00"), files[k]...))
		one := e.parsed[sum]
		if one == nil {
			one = &tables{}
			switch table {
			case "readings":
				one.readings, err = readRows[parquetout.ReadingRow](files[k])
			case "locations":
				one.locations, err = readRows[parquetout.LocationRow](files[k])
			default:
				err = errors.New("not under readings/ or locations/")
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			e.parsed[sum] = one
		}
		tb.readings = append(tb.readings, one.readings...)
		tb.locations = append(tb.locations, one.locations...)
	}
	return tb, nil
}

// rowID names one row: the batch it came from, its signal ("@" for a fix)
// and its time.
type rowID struct {
	vehicle    string
	epoch, seq uint64
	signal     string
	tsMicros   int64
}

func (id rowID) String() string {
	return fmt.Sprintf("%s/%x/%d/%s@%d", id.vehicle, id.epoch, id.seq, id.signal, id.tsMicros)
}

// rowIDs counts the rows of each identity in the files.
func (tb *tables) rowIDs() map[rowID]int {
	n := map[rowID]int{}
	for _, r := range tb.readings {
		n[rowID{r.VehicleID, r.Epoch, r.Seq, r.Signal, r.TS}]++
	}
	for _, r := range tb.locations {
		n[rowID{r.VehicleID, r.Epoch, r.Seq, "@", r.TS}]++
	}
	return n
}

// wantRows is the rows the batches must produce, each once.
func wantRows(batches ...*wire.Batch) map[rowID]int {
	n := map[rowID]int{}
	for _, b := range batches {
		for _, r := range b.Readings {
			n[rowID{b.VehicleID, b.Epoch, b.Seq, r.Signal, r.Time / 1000}]++
		}
		for _, f := range b.Fixes {
			n[rowID{b.VehicleID, b.Epoch, b.Seq, "@", f.Time / 1000}]++
		}
	}
	return n
}

// diffRows describes how got differs from want (missing rows, duplicates,
// extra rows), or returns nil.
func diffRows(got, want map[rowID]int) error {
	var missing, dup, extra []string
	for id, n := range want {
		switch g := got[id]; {
		case g < n:
			missing = append(missing, id.String())
		case g > n:
			dup = append(dup, fmt.Sprintf("%s x%d", id, g))
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			extra = append(extra, fmt.Sprintf("%s x%d", id, g))
		}
	}
	if len(missing)+len(dup)+len(extra) == 0 {
		return nil
	}
	short := func(s []string) string {
		slices.Sort(s)
		if len(s) > 5 {
			return strings.Join(s[:5], ", ") + fmt.Sprintf(" and %d more", len(s)-5)
		}
		return strings.Join(s, ", ")
	}
	return fmt.Errorf("%d rows missing [%s], %d duplicated [%s], %d unexpected [%s]",
		len(missing), short(missing), len(dup), short(dup), len(extra), short(extra))
}

// waitRows waits until the files hold at least every wanted row.
func (e *env) waitRows(want map[rowID]int) {
	e.t.Helper()
	eventually(e.t, "files hold every row", func() error {
		tb, err := e.readTables()
		if err != nil {
			return err
		}
		got := tb.rowIDs()
		for id := range want {
			if got[id] == 0 {
				return fmt.Errorf("row %s (and maybe more) not written yet; %d of %d distinct rows are", id, len(got), len(want))
			}
		}
		return nil
	})
}

// checkExactlyOnce fails unless the files hold every wanted row exactly once
// and nothing else.
func (e *env) checkExactlyOnce(want map[rowID]int) {
	e.t.Helper()
	tb, err := e.readTables()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := diffRows(tb.rowIDs(), want); err != nil {
		e.t.Fatalf("files %v: %v", keysOf(tb.files), err)
	}
}

// fleetStart is when the simulated drives begin.
var fleetStart = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

// drive is batch seq of a vehicle, seq*7 minutes after fleetStart (so a
// few batches span several hours).
func drive(vehicle string, epoch, seq uint64) *wire.Batch {
	return driveAt(vehicle, epoch, seq, fleetStart.Add(time.Duration(seq)*7*time.Minute))
}

// driveAt is a batch of five readings of every value type and one fix,
// within a second of at.
func driveAt(vehicle string, epoch, seq uint64, at time.Time) *wire.Batch {
	t0 := at.UnixNano()
	ms := int64(time.Millisecond)
	return &wire.Batch{
		Identity: wire.Identity{VehicleID: vehicle, Epoch: epoch, Seq: seq},
		BaseTime: t0,
		Readings: []wire.Reading{
			{Signal: "speed", Unit: "km/h", Time: t0, Value: wire.Float(float64(seq) + 0.5)},
			{Signal: "speed", Unit: "km/h", Time: t0 + 500*ms, Value: wire.Float(float64(seq) + 1)},
			{Signal: "odometer", Unit: "m", Time: t0, Value: wire.Int(int64(seq) * 1000)},
			{Signal: "door_open", Time: t0 + 100*ms, Value: wire.Bool(seq%2 == 0)},
			{Signal: "gear", Time: t0 + 200*ms, Value: wire.String("D")},
		},
		Fixes: []wire.Fix{{Time: t0 + 300*ms, Lat: 52.52 + float64(seq)*1e-4, Lon: 13.405, Alt: 35,
			Speed: math.NaN(), Heading: 90, Accuracy: 4}},
	}
}

// bigDrive is a batch of n speed readings 10 ms apart and one fix.
func bigDrive(vehicle string, epoch, seq uint64, n int) *wire.Batch {
	b := drive(vehicle, epoch, seq)
	b.Readings = b.Readings[:0]
	for i := range n {
		b.Readings = append(b.Readings, wire.Reading{Signal: "speed", Unit: "km/h", Time: b.BaseTime + int64(i)*10e6, Value: wire.Float(float64(i%97) / 4)})
	}
	return b
}

// checkpointDoc is the sink's per-partition checkpoint object on S3, as the
// package doc describes it (_sink/checkpoints/{topic}+{partition}.json).
type checkpointDoc struct {
	Topic      string          `json:"topic"`
	Partition  int32           `json:"partition"`
	Generation uint64          `json:"generation"`
	Writer     string          `json:"writer"`
	NextOffset int64           `json:"next_offset"`
	Window     json.RawMessage `json:"window,omitempty"`
	// Format 1, before fencing:
	Pending []string                          `json:"pending,omitempty"`
	Seen    map[string]map[string][][2]uint64 `json:"seen,omitempty"`
}

func checkpointKey(partition int32) string {
	return fmt.Sprintf("_sink/checkpoints/%s+%d.json", topic, partition)
}

func (e *env) checkpoint(partition int32) (*checkpointDoc, error) {
	data, err := e.store.Get(context.Background(), checkpointKey(partition))
	if err != nil {
		return nil, err
	}
	var c checkpointDoc
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (e *env) putObject(key string, data []byte) {
	e.t.Helper()
	if err := e.store.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), ""); err != nil {
		e.t.Fatal(err)
	}
}

// fileName is the documented name of a file of (topic, partition) whose
// records start at firstOffset.
func fileName(partition int32, firstOffset int64) string {
	return fmt.Sprintf("%s+%d+%020d.parquet", topic, partition, firstOffset)
}

// mismatch describes how got differs from want (compared deeply, so
// pointers by what they point to), or returns "".
func mismatch(want, got any) string {
	if reflect.DeepEqual(want, got) {
		return ""
	}
	w, _ := json.MarshalIndent(want, "", "  ")
	g, _ := json.MarshalIndent(got, "", "  ")
	return fmt.Sprintf("got:\n%s\nwant:\n%s", g, w)
}
