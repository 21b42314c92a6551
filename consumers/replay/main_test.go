package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/consumers/replay/replay"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// asMain makes the test binary run as the replay command, so that tests
// can start (and kill -9) the real program.
const asMain = "FLEET_REPLAY_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// command is the replay program with args, ready to start.
func command(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asMain+"=1")
	return cmd
}

// keepForever is retention.ms=-1: the test data is dated in the past, and a
// real broker deletes old records by time once their segment rolls.
var keepForever = map[string]*string{"retention.ms": new("-1")}

var t0 = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

const (
	killPartitions = 4
	killRecords    = 2000
	killVehicles   = 40
)

// produceHistory writes killRecords batches of 20 readings and a fix each
// to a new topic, one 100 ms apart, keyed by vehicle.
func produceHistory(t *testing.T, brokers, topic string) {
	t.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := kafkaio.EnsureTopics(ctx, cl, kafkaio.TopicSpec{Name: topic, Partitions: killPartitions, Replication: -1, Configs: keepForever}); err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for i := range killRecords {
		vehicle := fmt.Sprintf("car-%02d", i%killVehicles)
		ts := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		b := &wire.Batch{Identity: wire.Identity{VehicleID: vehicle, Epoch: 7, Seq: uint64(i)}, BaseTime: ts.UnixNano()}
		for j := range 20 {
			b.Readings = append(b.Readings, wire.Reading{Signal: fmt.Sprintf("sig_%d", j%5), Time: ts.UnixNano() + int64(j)*1e6, Value: wire.Float(float64(i*j) / 8)})
		}
		b.Fixes = []wire.Fix{{Time: ts.UnixNano(), Lat: 37.9 + float64(i)/1e5, Lon: 23.7, Alt: math.NaN(), Speed: 3, Heading: math.NaN(), Accuracy: 4}}
		data, err := wire.Encode(b, wire.EncodeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Key: []byte(vehicle), Value: data, Timestamp: ts})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// throttle limits what a client ID may fetch and produce per second, so
// that a replay is certainly still running when the test kills it; undo
// lifts the limits. Kafka measures rates over its quota window (11 s by
// default), so a client gets about ten seconds' worth at once before it is
// slowed down; and a fetch response bigger than the window's worth is
// never served (the broker answers empty), so the limit must exceed a
// tenth of the biggest partition of the test data (about 150 KB).
func throttle(t *testing.T, brokers, topic, clientID string, bytesPerSecond float64) (undo func()) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(cl)
	alter := func(remove bool) {
		name := clientID
		entry := kadm.AlterClientQuotaEntry{
			Entity: kadm.ClientQuotaEntity{{Type: "client-id", Name: &name}},
			Ops: []kadm.AlterClientQuotaOp{
				{Key: "consumer_byte_rate", Value: bytesPerSecond, Remove: remove},
				{Key: "producer_byte_rate", Value: bytesPerSecond, Remove: remove},
			},
		}
		res, err := adm.AlterClientQuotas(context.Background(), []kadm.AlterClientQuotaEntry{entry})
		if err == nil {
			for _, r := range res {
				if r.Err != nil {
					err = r.Err
				}
			}
		}
		if err != nil {
			t.Fatalf("client quota: %v", err)
		}
	}
	alter(false)
	// Wait until the brokers apply it: a client with the ID reads the
	// topic until a broker throttles it.
	hook := &throttled{}
	probe, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ClientID(clientID), kgo.WithHooks(hook),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !hook.seen.Load() {
		if probe.PollFetches(ctx); ctx.Err() != nil {
			t.Fatalf("the brokers never throttled client %s", clientID)
		}
		probe.SetOffsets(map[string]map[int32]kgo.EpochOffset{topic: {0: {Epoch: -1, Offset: 0}, 1: {Epoch: -1, Offset: 0}}})
	}
	var once sync.Once
	return func() { once.Do(func() { alter(true); cl.Close() }) }
}

// throttled notes that a broker throttled the client.
type throttled struct{ seen atomic.Bool }

func (h *throttled) OnBrokerThrottle(kgo.BrokerMetadata, time.Duration, bool) { h.seen.Store(true) }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// TestKillResume kill -9s a replay in the middle of its slice, resumes it
// with --resume, and checks that the target holds every record once.
func TestKillResume(t *testing.T) {
	brokers := testenv.Kafka(t)
	src := fmt.Sprintf("test.replay.kill.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	dir := t.TempDir()
	common := []string{"--kafka-brokers", brokers, "--topic", src, "--state-topic", src + ".state",
		"--from", t0.Format(time.RFC3339), "--progress", "none", "--commit-interval", "100ms"}

	// What an uninterrupted replay writes.
	ref := filepath.Join(dir, "ref.jsonl")
	if out, err := command(append(common, "--to-jsonl", ref)...).CombinedOutput(); err != nil {
		t.Fatalf("reference replay: %v\n%s", err, out)
	}
	refBytes, _ := os.ReadFile(ref)
	if n := bytes.Count(refBytes, []byte("\n")); n != killRecords*21 {
		t.Fatalf("reference replay wrote %d lines, want %d", n, killRecords*21)
	}

	for _, c := range []struct {
		name     string
		target   []string
		progress func(t *testing.T) bool // some output is committed
		check    func(t *testing.T)
	}{
		{"jsonl", []string{"--to-jsonl", filepath.Join(dir, "out.jsonl")},
			func(t *testing.T) bool {
				fi, err := os.Stat(filepath.Join(dir, "out.jsonl"))
				return err == nil && fi.Size() > 0
			},
			func(t *testing.T) {
				got, _ := os.ReadFile(filepath.Join(dir, "out.jsonl"))
				if !bytes.Equal(got, refBytes) {
					t.Fatalf("after kill -9 and --resume the file differs from an uninterrupted replay's (%d and %d bytes)", len(got), len(refBytes))
				}
			}},
		{"topic", []string{"--to-topic", src + ".copy"},
			func(t *testing.T) bool { return committedRecords(t, brokers, src+".copy") > 0 },
			func(t *testing.T) { checkCopy(t, brokers, src, src+".copy") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			clientID := fmt.Sprintf("replay-kill-%s-%d", c.name, time.Now().UnixNano())
			args := append(append(cloneArgs(common), c.target...), "--resume", "kill-"+c.name, "--kafka-client-id", clientID)
			undo := throttle(t, brokers, src, clientID, 16<<10)
			var stderr bytes.Buffer
			cmd := command(args...)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the replay's first committed output", 60*time.Second, func() bool { return c.progress(t) })
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
				t.Fatalf("the replay ended before it was killed (%v): throttle it harder\n%s", err, stderr.String())
			}
			undo()
			out, err := command(args...).CombinedOutput()
			if err != nil {
				t.Fatalf("resumed replay: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "resuming replay") {
				t.Errorf("the second run did not resume:\n%s", out)
			}
			c.check(t)
		})
	}
}

func cloneArgs(s []string) []string { return append([]string(nil), s...) }

// committedRecords counts the records of topic below its last stable
// offsets.
func committedRecords(t *testing.T, brokers, topic string) int64 {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	lso, err := kadm.NewClient(cl).ListCommittedOffsets(context.Background(), topic)
	if err != nil {
		return 0
	}
	var n int64
	lso.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n += o.Offset
		}
	})
	return n
}

// checkCopy checks that dst, read committed, holds each record of src
// exactly once.
func checkCopy(t *testing.T, brokers, src, dst string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(dst), kgo.KeepControlRecords(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	seen := map[string]int{}
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v", dst, ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				for _, h := range r.Headers {
					if h.Key == replay.HeaderReplayedFrom {
						seen[string(h.Value)]++
					}
				}
			}
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	if len(seen) != killRecords {
		t.Errorf("%s holds %d distinct source records, want %d", dst, len(seen), killRecords)
	}
	for from, n := range seen {
		if n != 1 || !strings.HasPrefix(from, src+"/") {
			t.Fatalf("source record %s is in %s %d times", from, dst, n)
		}
	}
}

// TestInterruptPrintsResume stops a replay with SIGINT and runs the
// command it prints; the two outputs together are the whole slice, once.
func TestInterruptPrintsResume(t *testing.T) {
	brokers := testenv.Kafka(t)
	src := fmt.Sprintf("test.replay.int.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	clientID := fmt.Sprintf("replay-int-%d", time.Now().UnixNano())
	undo := throttle(t, brokers, src, clientID, 16<<10)
	defer undo()
	args := []string{"--kafka-brokers", brokers, "--kafka-client-id", clientID, "--topic", src, "--to", t0.Add(time.Hour).Format(time.RFC3339),
		"--progress", "none", "--commit-interval", "100ms"}
	var stdout, stderr lockedBuffer
	cmd := command(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "output on stdout", 60*time.Second, func() bool { return stdout.Len() > 0 })
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err == nil {
		t.Fatalf("an interrupted replay exited 0; stderr:\n%s", stderr.String())
	}
	var resume string
	sc := bufio.NewScanner(strings.NewReader(stderr.String()))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "replay --") {
			resume = l
		}
	}
	if resume == "" || !strings.Contains(resume, "--offsets") {
		t.Fatalf("no resume command printed:\n%s", stderr.String())
	}
	undo()
	// Run the printed command (it names the client ID; the throttle is off).
	words := strings.Fields(resume)[1:]
	rest, err := command(words...).Output()
	if err != nil {
		t.Fatalf("%s: %v", resume, err)
	}
	all := append([]byte(stdout.String()), rest...)
	if n := bytes.Count(all, []byte("\n")); n != killRecords*21 {
		t.Fatalf("interrupted and continued replays wrote %d lines together, want %d (first %d)", n, killRecords*21, strings.Count(stdout.String(), "\n"))
	}
	if stdout.Len() == 0 || len(rest) == 0 {
		t.Errorf("the interruption came at an end: %d and %d bytes", stdout.Len(), len(rest))
	}
}

// lockedBuffer is a bytes.Buffer a child process writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// TestTopicCopyThroughSink re-publishes history with --to-topic, runs the
// real parquet-sink on the original and on the copy into two prefixes, and
// checks with DuckDB and pyarrow that the two hold the same rows.
func TestTopicCopyThroughSink(t *testing.T) {
	brokers := testenv.Kafka(t)
	m := testenv.MinIO(t)
	python := testenv.Python(t)
	src := fmt.Sprintf("test.replay.sink.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	if out, err := command("--kafka-brokers", brokers, "--topic", src, "--offsets", "0,1,2,3", "--to-topic", src+".copy", "--progress", "none").CombinedOutput(); err != nil {
		t.Fatalf("replay --to-topic: %v\n%s", err, out)
	}

	bin := buildSink(t)
	bucket := fmt.Sprintf("replay-sink-%d", time.Now().UnixNano())
	store, err := objstore.New(context.Background(), objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true}, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	var rows [2]string
	for i, topic := range []string{src, src + ".copy"} {
		prefix := fmt.Sprintf("sink%d", i)
		sinkToPrefix(t, bin, brokers, m, bucket, topic, prefix, killRecords)
		rows[i] = prefixRows(t, python, m, bucket, prefix)
	}
	if n := strings.Count(rows[0], "\n"); n != killRecords*21 {
		t.Fatalf("the sink wrote %d rows of the original, want %d", n, killRecords*21)
	}
	if rows[0] != rows[1] {
		t.Fatalf("the sink wrote different rows from the copy (%d rows) than from the original (%d rows)",
			strings.Count(rows[1], "\n"), strings.Count(rows[0], "\n"))
	}
}

// sinkToPrefix runs parquet-sink on topic into bucket/prefix until it has
// consumed records records, then stops it: --flush-on-stop writes the open
// windows (a transactional topic's last window is never quiet-flushed:
// the sink compares its end with the high watermark, which counts the
// trailing commit marker).
func sinkToPrefix(t *testing.T, bin, brokers string, m testenv.S3, bucket, topic, prefix string, records int) {
	t.Helper()
	addr := testenv.FreeAddr(t)
	var logs lockedBuffer
	cmd := exec.Command(bin, "--kafka-brokers", brokers, "--topic", topic, "--group", topic+".sink", "--listen", addr,
		"--s3-endpoint", m.Endpoint, "--s3-bucket", bucket, "--s3-prefix", prefix, "--s3-access-key", m.AccessKey,
		"--s3-secret-key", m.SecretKey, "--s3-path-style", "--max-file-age", "1s", "--flush-on-stop")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	consumed := regexp.MustCompile(`(?m)^fleet_sink_records_total\{result="(?:ok|duplicate|invalid)"\} (\d+)`)
	waitFor(t, fmt.Sprintf("parquet-sink to consume %d records of %s", records, topic), 90*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		n := 0
		for _, m := range consumed.FindAllStringSubmatch(string(body), -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n >= records
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("parquet-sink: %v\n%s", err, logs.String())
	}
}

// prefixRows downloads the Parquet files under bucket/prefix and returns
// their rows as testdata/rows.py prints them (DuckDB, checked by pyarrow).
func prefixRows(t *testing.T, python string, m testenv.S3, bucket, prefix string) string {
	t.Helper()
	ctx := context.Background()
	store, err := objstore.New(ctx, objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, Prefix: prefix, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true}, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	objs, err := store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, ".parquet") {
			continue
		}
		data, err := store.Get(ctx, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(o.Key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var stderr bytes.Buffer
	cmd := exec.Command(python, filepath.Join("testdata", "rows.py"), dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rows.py %s: %v\n%s", prefix, err, stderr.String())
	}
	return string(out)
}
