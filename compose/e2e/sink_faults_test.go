package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// sinkRig is a topic of the real Kafka, a bucket of the real MinIO and the
// parquet-sink binary, for the sink's fault tests.
type sinkRig struct {
	t       *testing.T
	brokers string
	minio   testenv.S3
	python  string
	topic   string
	bucket  string
	bin     string
	kcl     *kgo.Client
	adm     *kadm.Client
}

func newSinkRig(t *testing.T, partitions int32) *sinkRig {
	t.Helper()
	r := &sinkRig{t: t, brokers: testenv.Kafka(t), minio: testenv.MinIO(t), python: testenv.Python(t)}
	run := strconv.FormatUint(rand.Uint64()%1e9, 36)
	r.topic, r.bucket = "sinkfault."+run, "sinkfault-"+run
	r.bin = filepath.Join(buildBinaries(t, "./consumers/parquet-sink"), "parquet-sink")
	var err error
	if r.kcl, err = kgo.NewClient(kgo.SeedBrokers(r.brokers), kgo.DefaultProduceTopic(r.topic), kgo.ProducerLinger(5*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.kcl.Close)
	r.adm = kadm.NewClient(r.kcl)
	ctx := context.Background()
	for _, tp := range []struct {
		name string
		n    int32
	}{{r.topic, partitions}, {r.topic + ".catalog", 1}} {
		if _, err := r.adm.CreateTopic(ctx, tp.n, 1, nil, tp.name); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.store("").EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *sinkRig) store(prefix string) *objstore.Store {
	r.t.Helper()
	s, err := objstore.New(context.Background(), objstore.Config{Endpoint: r.minio.Endpoint, Bucket: r.bucket, Prefix: prefix,
		AccessKey: r.minio.AccessKey, SecretKey: r.minio.SecretKey, PathStyle: true}, objstore.Deps{})
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// sinkArgs are a sink's flags: windows of 2 s of record time, written 10 s
// later when the partition is quiet (the test's producer must hand its
// records to Kafka within that margin of stamping them for the replay
// to cut the same windows, so it is wide for a loaded machine); 6 s
// sessions.
func (r *sinkRig) sinkArgs(group, prefix, admin string, extra ...string) []string {
	return append([]string{"--kafka-brokers", r.brokers, "--topic", r.topic, "--catalog-topic", r.topic + ".catalog",
		"--group", group, "--s3-endpoint", r.minio.Endpoint, "--s3-bucket", r.bucket, "--s3-prefix", prefix,
		"--s3-access-key", r.minio.AccessKey, "--s3-secret-key", r.minio.SecretKey, "--s3-path-style",
		"--max-file-age", "2s", "--quiet-margin", "10s", "--max-file-rows", "60000", "--row-group-rows", "10000",
		"--session-timeout", "6s", "--rebalance-timeout", "10s", "--listen", admin, "--log-level", "debug"}, extra...)
}

// batch is one vehicle's 100 readings (four signals, 25 each, 40 ms apart)
// and a fix, at seq seconds after start.
func testBatch(vehicle string, epoch, seq uint64, start time.Time) *wire.Batch {
	t0 := start.Add(time.Duration(seq) * time.Second)
	b := &wire.Batch{Identity: wire.Identity{VehicleID: vehicle, Epoch: epoch, Seq: seq}, BaseTime: t0.UnixNano()}
	for i := range 25 {
		at := t0.Add(time.Duration(i) * 40 * time.Millisecond).UnixNano()
		b.Readings = append(b.Readings,
			wire.Reading{Signal: "speed", Unit: "m/s", Time: at, Value: wire.Float(float64(seq%40) + float64(i)/8)},
			wire.Reading{Signal: "rpm", Unit: "1/min", Time: at, Value: wire.Int(int64(800 + 40*i))},
			wire.Reading{Signal: "brake", Time: at, Value: wire.Bool(i%5 == 0)},
			wire.Reading{Signal: "gear", Time: at, Value: wire.String([]string{"P", "R", "N", "D"}[i%4])})
	}
	b.Fixes = []wire.Fix{{Time: t0.UnixNano(), Lat: 37.98 + float64(seq)*1e-5, Lon: 23.72, Alt: 70, Speed: 8, Heading: 45, Accuracy: math.NaN()}}
	return b
}

// producer sends batches of vehicles at a steady pace, with copies of a
// few earlier batches (an agent's re-sends), and remembers what it sent.
type producer struct {
	r       *sinkRig
	start   time.Time
	mu      sync.Mutex
	unique  map[wire.Identity]bool
	records int
}

func (p *producer) run(ctx context.Context, vehicles, perVehicle int, every time.Duration) error {
	rng := rand.New(rand.NewPCG(7, 9))
	var sent []*wire.Batch
	tick := time.NewTicker(every)
	defer tick.Stop()
	for seq := range perVehicle {
		var recs []*kgo.Record
		for v := range vehicles {
			b := testBatch(fmt.Sprintf("veh-%03d", v), uint64(1000+v), uint64(seq), p.start)
			sent = append(sent, b)
			batches := []*wire.Batch{b}
			if rng.IntN(100) < 3 { // a re-send of an earlier batch
				batches = append(batches, sent[rng.IntN(len(sent))])
			}
			for _, x := range batches {
				data, err := wire.Encode(x, wire.EncodeOptions{})
				if err != nil {
					return err
				}
				recs = append(recs, &kgo.Record{Key: []byte(x.VehicleID), Value: data})
			}
		}
		if err := p.r.kcl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			return err
		}
		p.mu.Lock()
		for _, b := range sent[len(sent)-vehicles:] {
			p.unique[b.Identity] = true
		}
		p.records += len(recs)
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// checkpoint is the part of a sink checkpoint these tests read.
type checkpoint struct {
	Generation uint64 `json:"generation"`
	NextOffset int64  `json:"next_offset"`
	Writer     string `json:"writer"`
}

// watchCheckpoints reads the checkpoints of every partition every 100 ms
// until stop is called, and fails the test if one ever goes back (its
// generation or its next offset smaller than seen before).
func (r *sinkRig) watchCheckpoints(prefix string, partitions int32) (stop func()) {
	st := r.store(prefix)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := map[int32]checkpoint{}
		for ctx.Err() == nil {
			for p := range partitions {
				data, err := st.Get(ctx, fmt.Sprintf("_sink/checkpoints/%s+%d.json", r.topic, p))
				if err != nil {
					continue
				}
				var c checkpoint
				if json.Unmarshal(data, &c) != nil {
					r.t.Errorf("partition %d: unreadable checkpoint %s", p, data)
					continue
				}
				if l, ok := last[p]; ok && (c.Generation < l.Generation || c.NextOffset < l.NextOffset) {
					r.t.Errorf("partition %d: checkpoint went back from generation %d next %d to generation %d next %d (writer %s)",
						p, l.Generation, l.NextOffset, c.Generation, c.NextOffset, c.Writer)
				}
				last[p] = c
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	r.t.Cleanup(stop) // a test that fails early stops it too
	return stop
}

// waitWritten waits until every partition's checkpoint under prefix covers
// the topic's end.
func (r *sinkRig) waitWritten(prefix string, timeout time.Duration) {
	r.t.Helper()
	waitSinkWritten(r.t, r.adm, r.store(prefix), r.topic, timeout)
}

// waitSinkWritten waits until the sink's checkpoints in store cover every
// partition of topic to its end.
func waitSinkWritten(t *testing.T, adm *kadm.Client, store *objstore.Store, topic string, timeout time.Duration) {
	t.Helper()
	waitFor(t, "the sink to write the whole of "+topic, timeout, func(ctx context.Context) error {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			return err
		}
		var behind []string
		ends.Each(func(o kadm.ListedOffset) {
			var c checkpoint
			data, err := store.Get(ctx, fmt.Sprintf("_sink/checkpoints/%s+%d.json", topic, o.Partition))
			if err == nil {
				err = json.Unmarshal(data, &c)
			}
			if o.Offset > 0 && (err != nil || c.NextOffset < o.Offset) {
				behind = append(behind, fmt.Sprintf("partition %d at %d of %d (%v)", o.Partition, c.NextOffset, o.Offset, err))
			}
		})
		if len(behind) > 0 {
			return errors.New(strings.Join(behind, "; "))
		}
		return nil
	})
}

// objects returns every Parquet object under prefix with its bytes.
func (r *sinkRig) objects(prefix string) map[string][]byte {
	r.t.Helper()
	st := r.store(prefix)
	ctx := context.Background()
	out := map[string][]byte{}
	for _, table := range []string{"readings/", "locations/"} {
		objs, err := st.List(ctx, table)
		if err != nil {
			r.t.Fatal(err)
		}
		for _, o := range objs {
			data, err := st.Get(ctx, o.Key)
			if err != nil {
				r.t.Fatal(err)
			}
			out[o.Key] = data
		}
	}
	return out
}

type sinkCheck struct {
	Tables  map[string]struct{ Rows, Distinct, Files, Misplaced int } `json:"tables"`
	Pyarrow map[string]int                                            `json:"pyarrow"`
	Batches [][]json.RawMessage                                       `json:"batches"`
	Probe   struct {
		Rows    int   `json:"rows"`
		Scanned []int `json:"row_groups_scanned"`
	} `json:"probe"`
	Bloom struct {
		RowGroups int `json:"row_groups"`
		Excluded  int `json:"excluded"`
	} `json:"bloom"`
}

// check reads what the sink wrote under prefix with DuckDB and pyarrow and
// fails unless every batch sent is there exactly once: 100 readings and a
// fix, each row once, in its own hour's folder.
func (r *sinkRig) check(prefix string, unique map[wire.Identity]bool, start time.Time) sinkCheck {
	r.t.Helper()
	dir := download(r.t, r.store(prefix))
	from := start.Add(20 * time.Second).UnixMicro()
	cmd := exec.Command(r.python, filepath.Join(testenv.RepoRoot(), "compose", "e2e", "testdata", "sink_check.py"),
		dir, "veh-007", strconv.FormatInt(from, 10), strconv.FormatInt(from+10_000_000, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		r.t.Fatalf("sink_check.py: %v\n%s", err, stderr.String())
	}
	var c sinkCheck
	if err := json.Unmarshal(out, &c); err != nil {
		r.t.Fatalf("sink_check.py output: %v", err)
	}
	for _, table := range []string{"readings", "locations"} {
		tc := c.Tables[table]
		if tc.Rows != tc.Distinct || tc.Misplaced != 0 || c.Pyarrow[table] != tc.Rows {
			r.t.Errorf("%s: DuckDB reads %d rows, %d distinct, %d outside their hour's folder; pyarrow reads %d",
				table, tc.Rows, tc.Distinct, tc.Misplaced, c.Pyarrow[table])
		}
	}
	seen := map[wire.Identity]bool{}
	bad := 0
	for _, b := range c.Batches {
		var id wire.Identity
		var readings, fixes int
		if json.Unmarshal(b[0], &id.VehicleID) != nil || json.Unmarshal(b[1], &id.Epoch) != nil || json.Unmarshal(b[2], &id.Seq) != nil ||
			json.Unmarshal(b[3], &readings) != nil || json.Unmarshal(b[4], &fixes) != nil {
			r.t.Fatalf("bad batch line %s", b)
		}
		seen[id] = true
		if !unique[id] || readings != 100 || fixes != 1 {
			if bad++; bad <= 5 {
				r.t.Errorf("batch %v: %d readings, %d fixes (sent: %v); want 100 and 1", id, readings, fixes, unique[id])
			}
		}
	}
	missing := 0
	for id := range unique {
		if !seen[id] {
			if missing++; missing <= 5 {
				r.t.Errorf("batch %v was sent and is not in Parquet", id)
			}
		}
	}
	if bad+missing > 0 {
		r.t.Fatalf("%d batches wrong, %d missing, of %d", bad, missing, len(unique))
	}
	r.t.Logf("DuckDB and pyarrow: %d readings and %d fixes in %d+%d files, every one of %d batches exactly once",
		c.Tables["readings"].Rows, c.Tables["locations"].Rows, c.Tables["readings"].Files, c.Tables["locations"].Files, len(unique))
	return c
}

// metricSum is the sum of a metric's series on a service's /metrics at
// admin, name the metric's name, or its name and the start of its labels
// (`fleet_sink_records_total{result="duplicate"`); -1 if it cannot be read.
func metricSum(admin, name string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	var sum float64
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") || (strings.Contains(name, "{") && strings.HasPrefix(line, name)) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// TestSinkExactlyOnceUnderKillsAndRebalances runs three sinks on a
// 1,000,000-reading load (with re-sent batches) while one of them is killed
// with SIGKILL every 2 s, twenty times, and a fourth member joins and leaves
// the group every few seconds. Every reading lands in Parquet exactly once.
// Then a fresh sink writes the same records from scratch into another
// prefix: the same object names, byte for byte.
func TestSinkExactlyOnceUnderKillsAndRebalances(t *testing.T) {
	const partitions = 6
	r := newSinkRig(t, partitions)
	group := "sink-" + r.topic
	start := time.Now().UTC().Truncate(time.Second)
	p := &producer{r: r, start: start, unique: map[wire.Identity]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	produced := make(chan error, 1)
	go func() { produced <- p.run(ctx, 100, 100, 350*time.Millisecond) }() // 10,000 batches in 35 s

	stopWatch := r.watchCheckpoints("live", partitions)
	sinks := make([]*proc, 3)
	startSink := func(i int) {
		sinks[i] = startProc(t, r.bin, fmt.Sprintf("sink-%d", i), r.sinkArgs(group, "live", "127.0.0.1:0", "--instance-id", fmt.Sprintf("sink-%d", i))...)
	}
	for i := range sinks {
		startSink(i)
	}
	// A dynamic member that joins and leaves, moving partitions each time.
	visitorDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-visitorDone }) // before the test ends, however it ends
	go func() {
		defer close(visitorDone)
		for n := 0; ctx.Err() == nil && n < 6; n++ {
			v := startProc(t, r.bin, fmt.Sprintf("visitor-%d", n), r.sinkArgs(group, "live", "127.0.0.1:0")...)
			select {
			case <-ctx.Done():
			case <-time.After(3 * time.Second):
			}
			if err := v.stop(30 * time.Second); err != nil {
				t.Errorf("visitor %d: %v", n, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	for kill := range 20 {
		time.Sleep(2 * time.Second)
		i := kill % len(sinks)
		sinks[i].kill()
		startSink(i)
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	<-visitorDone
	t.Logf("produced %d records for %d batches (%d readings)", p.records, len(p.unique), 100*len(p.unique))
	r.waitWritten("live", 3*time.Minute)
	stopWatch()
	for _, s := range sinks {
		if err := s.stop(30 * time.Second); err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
	c := r.check("live", p.unique, start)

	// A query for one vehicle over 10 s reads only some row groups: the
	// others are skipped by their ts statistics. And a vehicle that is in
	// no file is excluded by every row group's bloom filter.
	if s := c.Probe.Scanned; len(s) != 2 || s[0] == 0 || s[0] >= s[1] || c.Probe.Rows != 1000 {
		t.Errorf("probe query: %d rows (want 1000: 10 batches of 100), row groups scanned %v: want some, not all", c.Probe.Rows, s)
	}
	if c.Bloom.RowGroups == 0 || c.Bloom.Excluded != c.Bloom.RowGroups {
		t.Errorf("bloom filters exclude an absent vehicle from %d of %d row groups", c.Bloom.Excluded, c.Bloom.RowGroups)
	}
	t.Logf("probe query scanned %d of %d row groups; bloom filters exclude an absent vehicle from %d of %d",
		c.Probe.Scanned[0], c.Probe.Scanned[1], c.Bloom.Excluded, c.Bloom.RowGroups)

	// From scratch, in another group and prefix: the same objects.
	replay := startProc(t, r.bin, "replay-sink", r.sinkArgs("replay-"+group, "replay", "127.0.0.1:0")...)
	r.waitWritten("replay", 3*time.Minute)
	if err := replay.stop(30 * time.Second); err != nil {
		t.Error(err)
	}
	live, again := r.objects("live"), r.objects("replay")
	liveKeys, againKeys := slices.Sorted(maps.Keys(live)), slices.Sorted(maps.Keys(again))
	if !slices.Equal(liveKeys, againKeys) {
		t.Fatalf("a replay from scratch wrote other objects:\nlive   %d %v\nreplay %d %v", len(live), liveKeys, len(again), againKeys)
	}
	for k, v := range live {
		if !bytes.Equal(v, again[k]) {
			t.Errorf("%s differs between the live run and the replay", k)
		}
	}
	t.Logf("a replay from scratch wrote the same %d objects, byte for byte", len(live))
}

// TestSinkZombieIsFenced stops a sink with SIGSTOP, with records in open
// windows, until its session has expired and another member has taken its
// partitions and committed; then resumes it. It cannot replace a committed
// object or move a checkpoint back, and every reading is written once.
func TestSinkZombieIsFenced(t *testing.T) {
	const partitions = 2
	r := newSinkRig(t, partitions)
	group := "zombie-" + r.topic
	start := time.Now().UTC().Truncate(time.Second)
	p := &producer{r: r, start: start, unique: map[wire.Identity]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	produced := make(chan error, 1)
	go func() { produced <- p.run(ctx, 20, 150, 100*time.Millisecond) }() // 3,000 batches in 15 s

	stopWatch := r.watchCheckpoints("lake", partitions)
	adminA, adminB := testenv.FreeAddr(t), testenv.FreeAddr(t)
	a := startProc(t, r.bin, "sink-a", r.sinkArgs(group, "lake", adminA)...)
	waitFor(t, "sink A to have committed a window and hold an open one", time.Minute, func(context.Context) error {
		if metricSum(adminA, "fleet_sink_windows_total") < 1 || metricSum(adminA, "fleet_sink_open_rows") < 1 {
			return errors.New("not yet")
		}
		return nil
	})
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	b := startProc(t, r.bin, "sink-b", r.sinkArgs(group, "lake", adminB)...)
	// B gets both partitions once A's 6 s session has expired, and commits.
	waitFor(t, "sink B to own both partitions and commit windows on them", time.Minute, func(context.Context) error {
		if metricSum(adminB, `fleet_sink_partitions{state="writing"}`) != partitions || metricSum(adminB, "fleet_sink_windows_total") < 2*partitions {
			return errors.New("not yet")
		}
		return nil
	})
	committed := r.objects("lake")
	t.Logf("sink A stopped for %v; sink B committed; %d objects", time.Since(stopped).Round(time.Second), len(committed))
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// A wakes up holding open windows of partitions it no longer owns. It
	// must learn so (fenced by the checkpoints, or told by the group)
	// before it writes anything.
	waitFor(t, "sink A to drop the partitions it lost", time.Minute, func(context.Context) error {
		if a.logContains("fenced") || a.logContains("partition lost") {
			return nil
		}
		return errors.New("not yet")
	})
	t.Logf("sink A was fenced: %v; told its partitions were lost: %v", a.logContains("fenced"), a.logContains("partition lost"))
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	r.waitWritten("lake", 2*time.Minute)
	stopWatch()
	for _, s := range []*proc{a, b} {
		if err := s.stop(30 * time.Second); err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
	after := r.objects("lake")
	for k, v := range committed {
		if !bytes.Equal(after[k], v) {
			t.Errorf("%s, committed while A was stopped, was replaced or removed", k)
		}
	}
	r.check("lake", p.unique, start)
}
