package replay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestMain checks for leaked goroutines, except the AWS SDK's idle
// keep-alive connections to S3 (objstore has no Close; they time out).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"))
}

const (
	testPartitions = 4
	testRecords    = 60
	testVehicles   = 12
)

// t0 is the first record's Kafka timestamp; record i is at t0 + i seconds.
var t0 = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

// produced is what the test put in the topic, as the producer reported it.
type produced struct {
	vehicle   string
	partition int32
	offset    int64
	ts        time.Time
	seq       int
	bad       bool
}

type fixture struct {
	cluster  *kfake.Cluster // nil on real Kafka
	addr     string
	topic    string
	producer *kgo.Client
	ledger   []produced
}

// newFixture starts a kfake cluster with the telemetry topic and produces
// testRecords batches from testVehicles vehicles, one second apart, with Kafka's
// default key partitioning (the producer's, not ours).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(testPartitions, topics.KafkaTelemetry))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	f := newFixtureOn(t, c.ListenAddrs()[0], topics.KafkaTelemetry)
	f.cluster = c
	return f
}

// keepForever is retention.ms=-1: the test data is dated in the past, and a
// real broker deletes old records by time once their segment rolls.
var keepForever = map[string]*string{"retention.ms": new("-1")}

// newFixtureOn is newFixture on any cluster: it creates topic (when
// missing) with testPartitions partitions and produces the records.
func newFixtureOn(t *testing.T, addr, topic string) *fixture {
	t.Helper()
	f := &fixture{addr: addr, topic: topic}
	var err error
	f.producer, err = kgo.NewClient(kgo.SeedBrokers(f.addr), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.producer.Close) // before a kfake cluster's Close: cleanups run last first
	if err := kafkaio.EnsureTopics(context.Background(), f.producer, kafkaio.TopicSpec{Name: topic, Partitions: testPartitions, Replication: -1, Configs: keepForever}); err != nil {
		t.Fatal(err)
	}
	for i := range testRecords {
		f.produce(t, fmt.Sprintf("veh-%d", i%testVehicles), t0.Add(time.Duration(i)*time.Second), i, nil)
	}
	for p := range int32(testPartitions) {
		if len(f.want(func(r produced) bool { return r.partition == p })) < 5 {
			t.Fatalf("test data puts fewer than 5 records in partition %d", p)
		}
	}
	return f
}

// produce writes one batch (or value, when not nil) and notes where it went.
func (f *fixture) produce(t *testing.T, vehicle string, ts time.Time, seq int, value []byte) produced {
	t.Helper()
	bad := value != nil
	if !bad {
		value = encodeBatch(t, vehicle, uint64(seq), ts)
	}
	rec := &kgo.Record{Key: []byte(vehicle), Value: value, Timestamp: ts}
	if err := f.producer.ProduceSync(context.Background(), rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
	p := produced{vehicle: vehicle, partition: rec.Partition, offset: rec.Offset, ts: ts, seq: seq, bad: bad}
	f.ledger = append(f.ledger, p)
	return p
}

func encodeBatch(t *testing.T, vehicle string, seq uint64, ts time.Time) []byte {
	t.Helper()
	base := ts.UnixNano()
	b := &wire.Batch{
		Identity: wire.Identity{VehicleID: vehicle, Epoch: 0xfeedface00000000 + seq%3, Seq: seq},
		BaseTime: base,
		Readings: []wire.Reading{
			{Signal: "speed", Unit: "km/h", Time: base, Value: wire.Float(float64(seq) + 0.5)},
			{Signal: "gear", Time: base + 1_000_000, Value: wire.Int(int64(seq % 6))},
		},
		Fixes: []wire.Fix{{Time: base, Lat: 37.98, Lon: 23.72, Alt: math.NaN(), Speed: 8.25, Heading: math.NaN(), Accuracy: 3.5}},
	}
	data, err := wire.Encode(b, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// want returns the good records for which keep holds, in replay order.
func (f *fixture) want(keep func(produced) bool) []produced {
	var out []produced
	for _, p := range f.ledger {
		if !p.bad && keep(p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b produced) int {
		if a.partition != b.partition {
			return int(a.partition - b.partition)
		}
		return int(a.offset - b.offset)
	})
	return out
}

// config parses args as the binary would, pointed at the fixture.
func (f *fixture) config(t *testing.T, args ...string) Config {
	t.Helper()
	var cfg Config
	args = append([]string{"--kafka-brokers", f.addr, "--topic", f.topic, "--state-topic", f.topic + ".replay-state"}, args...)
	if _, err := cli.Parse(program, &cfg, args, &bytes.Buffer{}); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return cfg
}

var program = Program

type result struct {
	stdout []byte
	log    string
	stats  Stats
	err    error
}

// safeBuffer is a bytes.Buffer the progress goroutine can log into.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func run(t *testing.T, cfg Config, wrap func(Target) Target) result {
	t.Helper()
	var out bytes.Buffer
	var logs safeBuffer
	r, err := New(cfg, Deps{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	r.wrapTarget = wrap
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	return result{stdout: out.Bytes(), log: logs.String(), stats: r.Stats(), err: err}
}

// line is one JSON line of the output.
type line struct {
	VehicleID string   `json:"vehicle_id"`
	Epoch     string   `json:"epoch"`
	Seq       uint64   `json:"seq"`
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	TS        string   `json:"ts"`
	Signal    string   `json:"signal"`
	Unit      string   `json:"unit"`
	Type      string   `json:"type"`
	Value     any      `json:"value"`
	Lat       *float64 `json:"lat"`
	Alt       *float64 `json:"alt"`
}

func parseLines(t *testing.T, out []byte) []line {
	t.Helper()
	var lines []line
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// records returns the distinct (partition, offset) of the output, in order,
// checking each record gives its two readings and one fix in that order.
func records(t *testing.T, out []byte) []produced {
	t.Helper()
	lines := parseLines(t, out)
	if len(lines)%3 != 0 {
		t.Fatalf("%d lines, want 3 per record", len(lines))
	}
	var recs []produced
	for i := 0; i < len(lines); i += 3 {
		a, b, c := lines[i], lines[i+1], lines[i+2]
		if a.Signal != "speed" || b.Signal != "gear" || c.Type != "location" ||
			a.Offset != b.Offset || b.Offset != c.Offset || a.Partition != c.Partition {
			t.Fatalf("record lines out of order: %+v %+v %+v", a, b, c)
		}
		recs = append(recs, produced{vehicle: a.VehicleID, partition: a.Partition, offset: a.Offset})
	}
	return recs
}

func sameRecords(t *testing.T, got, want []produced) {
	t.Helper()
	key := func(ps []produced) []string {
		var s []string
		for _, p := range ps {
			s = append(s, fmt.Sprintf("%s@%d/%d", p.vehicle, p.partition, p.offset))
		}
		return s
	}
	if g, w := key(got), key(want); !slices.Equal(g, w) {
		t.Fatalf("replayed records\n got %v\nwant %v", g, w)
	}
}

func rfc(t time.Time) string { return t.Format(time.RFC3339Nano) }

func TestTimeRangeBoundaries(t *testing.T) {
	f := newFixture(t)
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	for _, c := range []struct {
		name     string
		from, to time.Time // zero: flag not given
		keep     func(time.Time) bool
	}{
		{"whole seconds", sec(10), sec(20), func(ts time.Time) bool { return !ts.Before(sec(10)) && ts.Before(sec(20)) }},
		{"just after the edges", sec(10).Add(time.Nanosecond), sec(20).Add(time.Nanosecond), func(ts time.Time) bool { return ts.After(sec(10)) && !ts.After(sec(20)) }},
		{"just before the edges", sec(10).Add(-time.Millisecond), sec(20).Add(-time.Millisecond), func(ts time.Time) bool { return !ts.Before(sec(10)) && ts.Before(sec(20)) }},
		{"from only", sec(55), time.Time{}, func(ts time.Time) bool { return !ts.Before(sec(55)) }},
		{"to only", time.Time{}, sec(3), func(ts time.Time) bool { return ts.Before(sec(3)) }},
		{"before everything", t0.Add(-time.Hour), t0, nil},
		{"after everything", sec(testRecords), sec(testRecords + 100), nil},
		{"other time zone", sec(30).In(time.FixedZone("EEST", 3*3600)), sec(33), func(ts time.Time) bool { return !ts.Before(sec(30)) && ts.Before(sec(33)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var args []string
			if !c.from.IsZero() {
				args = append(args, "--from", rfc(c.from))
			}
			if !c.to.IsZero() {
				args = append(args, "--to", rfc(c.to))
			}
			if c.keep == nil {
				// An empty slice is an error naming the range, unless allowed.
				res := run(t, f.config(t, args...), nil)
				if res.err == nil || !strings.Contains(res.err.Error(), "holds no records") || !strings.Contains(res.err.Error(), "--allow-empty") {
					t.Fatalf("empty slice: err %v", res.err)
				}
				args = append(args, "--allow-empty")
				c.keep = func(time.Time) bool { return false }
			}
			res := run(t, f.config(t, args...), nil)
			if res.err != nil {
				t.Fatal(res.err)
			}
			want := f.want(func(p produced) bool { return c.keep(p.ts) })
			sameRecords(t, records(t, res.stdout), want)
			if res.stats.Records != int64(len(want)) || res.stats.Readings != 2*int64(len(want)) || res.stats.Fixes != int64(len(want)) {
				t.Errorf("stats %+v for %d records", res.stats, len(want))
			}
		})
	}
}

func TestOffsetRange(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		name string
		args []string
		keep func(produced) bool
	}{
		{"start and end", []string{"--offsets", "2:3-7"},
			func(p produced) bool { return p.partition == 2 && p.offset >= 3 && p.offset < 7 }},
		{"start only", []string{"--offsets", "1:5-"},
			func(p produced) bool { return p.partition == 1 && p.offset >= 5 }},
		{"end only", []string{"--offsets", "0:-4"},
			func(p produced) bool { return p.partition == 0 && p.offset < 4 }},
		{"end past the high watermark", []string{"--offsets", "3:1-100000"},
			func(p produced) bool { return p.partition == 3 && p.offset >= 1 }},
		{"several partitions", []string{"--offsets", "3:2-4, 0:1-3,1"},
			func(p produced) bool {
				return (p.partition == 3 && p.offset >= 2 && p.offset < 4) || (p.partition == 0 && p.offset >= 1 && p.offset < 3) || p.partition == 1
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := run(t, f.config(t, c.args...), nil)
			if res.err != nil {
				t.Fatal(res.err)
			}
			want := f.want(c.keep)
			if len(want) == 0 {
				t.Fatal("test data put nothing in the range")
			}
			sameRecords(t, records(t, res.stdout), want)
		})
	}
}

func TestVehicle(t *testing.T) {
	f := newFixture(t)
	const vehicle = "veh-3"
	want := f.want(func(p produced) bool { return p.vehicle == vehicle })
	if len(want) == 0 {
		t.Fatal("no records of", vehicle)
	}
	if got := PartitionFor(vehicle, testPartitions); got != want[0].partition {
		t.Fatalf("PartitionFor(%s) = %d, but the producer put its records in %d", vehicle, got, want[0].partition)
	}
	res := run(t, f.config(t, "--from", rfc(t0), "--vehicle", vehicle), nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	sameRecords(t, records(t, res.stdout), want)
	// Only the vehicle's partition was read: the other vehicles there were skipped.
	onPartition := f.want(func(p produced) bool { return p.partition == want[0].partition })
	if res.stats.Records != int64(len(onPartition)) || res.stats.Skipped != int64(len(onPartition)-len(want)) {
		t.Errorf("stats %+v; partition holds %d records, %d of the vehicle", res.stats, len(onPartition), len(want))
	}

	// With offset ranges, the vehicle's partition must be among them.
	other := (want[0].partition + 1) % testPartitions
	res = run(t, f.config(t, "--vehicle", vehicle, "--offsets", fmt.Sprintf("%d:0-", other)), nil)
	if res.err == nil || !strings.Contains(res.err.Error(), "--offsets") {
		t.Fatalf("vehicle on another partition: err %v, want one naming --offsets", res.err)
	}
	res = run(t, f.config(t, "--vehicle", vehicle, "--offsets", fmt.Sprintf("%d:2-,%d", want[0].partition, other)), nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	sameRecords(t, records(t, res.stdout), f.want(func(p produced) bool { return p.vehicle == vehicle && p.offset >= 2 }))
}

// TestPartitionForMatchesKafka checks the partitioner against murmur2 values
// from Kafka's own UtilsTest.testMurmur2: partition = (hash & 0x7fffffff) % n.
func TestPartitionForMatchesKafka(t *testing.T) {
	for key, hash := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		for _, n := range []int{1, 3, 6, 12, 100} {
			want := int32(int(uint32(hash)&0x7fffffff) % n)
			if got := PartitionFor(key, n); got != want {
				t.Errorf("PartitionFor(%q, %d) = %d, want %d", key, n, got, want)
			}
		}
	}
}

func TestDeterministic(t *testing.T) {
	f := newFixture(t)
	cfg := f.config(t, "--from", rfc(t0.Add(5*time.Second)), "--to", rfc(t0.Add(50*time.Second)))
	a, b := run(t, cfg, nil), run(t, cfg, nil)
	if a.err != nil || b.err != nil {
		t.Fatal(a.err, b.err)
	}
	if len(a.stdout) == 0 || !bytes.Equal(a.stdout, b.stdout) {
		t.Fatalf("two replays of one slice differ (%d and %d bytes)", len(a.stdout), len(b.stdout))
	}
	if n := strings.Count(a.log, `msg="partition done"`); n != testPartitions || !strings.Contains(a.log, `msg="replay done" records=`) {
		t.Errorf("progress log has %d partition lines, want %d, and a summary:\n%s", n, testPartitions, a.log)
	}
	// Ascending partitions, then offsets.
	recs := records(t, a.stdout)
	if !slices.IsSortedFunc(recs, func(x, y produced) int {
		if x.partition != y.partition {
			return int(x.partition - y.partition)
		}
		return int(x.offset - y.offset)
	}) {
		t.Fatalf("output not in partition, offset order: %v", recs)
	}
}

func TestNoConsumerGroup(t *testing.T) {
	f := newFixture(t)
	var groupRequests atomic.Int64
	for _, key := range []int16{kmsg.FindCoordinator.Int16(), kmsg.JoinGroup.Int16(), kmsg.OffsetCommit.Int16(), kmsg.ConsumerGroupHeartbeat.Int16()} {
		f.cluster.ControlKey(key, func(kmsg.Request) (kmsg.Response, error, bool) {
			f.cluster.KeepControl()
			groupRequests.Add(1)
			return nil, nil, false
		})
	}
	if res := run(t, f.config(t, "--from", rfc(t0)), nil); res.err != nil || res.stats.Records != testRecords {
		t.Fatalf("err %v, stats %+v", res.err, res.stats)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	groups, err := kadm.NewClient(cl).ListGroups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 0 || groupRequests.Load() != 0 {
		t.Fatalf("replay touched consumer groups: groups %v, %d group requests", groups.Groups(), groupRequests.Load())
	}
}

func TestDryRunReadsNothing(t *testing.T) {
	f := newFixture(t)
	var fetches atomic.Int64
	f.cluster.ControlKey(kmsg.Fetch.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		f.cluster.KeepControl()
		fetches.Add(1)
		return nil, nil, false
	})
	res := run(t, f.config(t, "--from", rfc(t0.Add(10*time.Second)), "--to", rfc(t0.Add(20*time.Second)), "--dry-run"), nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if fetches.Load() != 0 || res.stats.Records != 0 {
		t.Fatalf("dry run fetched: %d fetch requests, stats %+v", fetches.Load(), res.stats)
	}
	want := f.want(func(p produced) bool {
		return !p.ts.Before(t0.Add(10*time.Second)) && p.ts.Before(t0.Add(20*time.Second))
	})
	out := string(res.stdout)
	if !strings.Contains(out, "replay plan: topic fleet.telemetry.v1 (4 partitions)") ||
		!strings.Contains(out, fmt.Sprintf("records to read: %d\n", len(want))) || strings.Contains(out, "{") {
		t.Fatalf("plan:\n%s", out)
	}
	for p := range testPartitions {
		if !regexp.MustCompile(fmt.Sprintf(`(?m)^ +%d +[0-9]`, p)).MatchString(out) {
			t.Errorf("plan has no row for partition %d:\n%s", p, out)
		}
	}

	// The same slice for real does fetch: the counter works.
	cfg := f.config(t, "--from", rfc(t0.Add(10*time.Second)), "--to", rfc(t0.Add(20*time.Second)))
	if res := run(t, cfg, nil); res.err != nil || fetches.Load() == 0 {
		t.Fatalf("real run: err %v, %d fetches", res.err, fetches.Load())
	}
}

func TestBadRecords(t *testing.T) {
	f := newFixture(t)
	bad := f.produce(t, "veh-1", t0.Add(testRecords*time.Second), 0, []byte("not a batch"))
	f.produce(t, "veh-1", t0.Add((testRecords+1)*time.Second), testRecords+1, nil)
	// A batch whose key is another vehicle's is bad too.
	mismatch := f.produce(t, "veh-2", t0.Add((testRecords+2)*time.Second), 0, encodeBatch(t, "veh-4", 99, t0))

	res := run(t, f.config(t, "--from", rfc(t0)), nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	sameRecords(t, records(t, res.stdout), f.want(func(produced) bool { return true }))
	if res.stats.Bad != 2 || res.stats.Records != int64(len(f.ledger)) {
		t.Errorf("stats %+v, want 2 bad of %d", res.stats, len(f.ledger))
	}
	for _, p := range []produced{bad, mismatch} {
		if !strings.Contains(res.log, fmt.Sprintf("skipping a bad record\" partition=%d offset=%d", p.partition, p.offset)) {
			t.Errorf("log does not report the bad record at %d/%d:\n%s", p.partition, p.offset, res.log)
		}
	}

	res = run(t, f.config(t, "--from", rfc(t0), "--fail-on-bad"), nil)
	if res.err == nil || !strings.Contains(res.err.Error(), "--fail-on-bad") {
		t.Fatalf("--fail-on-bad: err %v", res.err)
	}
}

// producingTarget produces more records into every partition on its first
// write, as live traffic would during a replay.
type producingTarget struct {
	Target
	once sync.Once
	f    *fixture
	t    *testing.T
}

func (p *producingTarget) Write(ctx context.Context, rec Record) error {
	p.once.Do(func() {
		for i := range 20 {
			p.f.produce(p.t, fmt.Sprintf("late-%d", i), t0.Add(time.Duration(i)*time.Second), i, nil)
		}
	})
	return p.Target.Write(ctx, rec)
}

func TestStopsAtStartupHighWatermark(t *testing.T) {
	f := newFixture(t)
	for _, args := range [][]string{{"--from", rfc(t0)}, {"--offsets", "0:0-"}} {
		want := f.want(func(p produced) bool { return args[0] == "--from" || p.partition == 0 })
		res := run(t, f.config(t, args...), func(tg Target) Target { return &producingTarget{Target: tg, f: f, t: t} })
		if res.err != nil {
			t.Fatal(res.err)
		}
		sameRecords(t, records(t, res.stdout), want)
	}
}

func TestUnknownTopic(t *testing.T) {
	f := newFixture(t)
	res := run(t, f.config(t, "--topic", "no.such.topic", "--from", rfc(t0)), nil)
	if res.err == nil || !strings.Contains(res.err.Error(), "--topic") {
		t.Fatalf("err %v, want one naming --topic", res.err)
	}
	res = run(t, f.config(t, "--offsets", "4"), nil)
	if res.err == nil || !strings.Contains(res.err.Error(), "--offsets") {
		t.Fatalf("err %v, want one naming --offsets", res.err)
	}
}

func TestJSONLines(t *testing.T) {
	var out bytes.Buffer
	j := newJSONLines(&out)
	b := &wire.Batch{
		Identity: wire.Identity{VehicleID: "veh-9", Epoch: 0xdeadbeef, Seq: 7},
		Readings: []wire.Reading{
			{Signal: "speed", Unit: "km/h", Time: t0.UnixNano() + 100_000, Value: wire.Float(12.5)},
			{Signal: "odo", Unit: "m", Time: t0.UnixNano(), Value: wire.Int(-3)},
			{Signal: "door_open", Time: t0.UnixNano(), Value: wire.Bool(true)},
			{Signal: "status", Time: t0.UnixNano(), Value: wire.String("a \"b\" <c>")},
			{Signal: "temp", Unit: "C", Time: t0.UnixNano(), Value: wire.Float(math.NaN())},
		},
		Fixes: []wire.Fix{{Time: t0.UnixNano() + 1, Lat: 37.9838, Lon: 23.7275, Alt: math.NaN(), Speed: 0, Heading: math.NaN(), Accuracy: 3.2}},
	}
	if err := j.Write(context.Background(), Record{Partition: 2, Offset: 41, Batch: b}); err != nil {
		t.Fatal(err)
	}
	if err := j.Commit(context.Background(), Position{}, true, func(context.Context, Position, json.RawMessage) error { return nil }); err != nil {
		t.Fatal(err)
	}
	head := `{"vehicle_id":"veh-9","epoch":"00000000deadbeef","seq":7,"partition":2,"offset":41,`
	want := head + `"ts":"2025-06-01T08:00:00.0001Z","signal":"speed","unit":"km/h","type":"double","value":12.5}
` + head + `"ts":"2025-06-01T08:00:00Z","signal":"odo","unit":"m","type":"int","value":-3}
` + head + `"ts":"2025-06-01T08:00:00Z","signal":"door_open","unit":"","type":"bool","value":true}
` + head + `"ts":"2025-06-01T08:00:00Z","signal":"status","unit":"","type":"string","value":"a \"b\" \u003cc\u003e"}
` + head + `"ts":"2025-06-01T08:00:00Z","signal":"temp","unit":"C","type":"double","value":"NaN"}
` + head + `"ts":"2025-06-01T08:00:00.000000001Z","type":"location","lat":37.9838,"lon":23.7275,"speed":0,"accuracy":3.2}
`
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
	for l := range strings.Lines(out.String()) {
		if !json.Valid([]byte(l)) {
			t.Errorf("invalid JSON: %s", l)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // flag the error must name; "" for valid
	}{
		{[]string{"--from", "2025-06-01T08:00:00Z"}, ""},
		{[]string{"--to", "2025-06-01T08:00:00+03:00"}, ""},
		{[]string{"--offsets", "0"}, ""},
		{[]string{"--offsets", "0:5-9,3:-2,7:4-"}, ""},
		{[]string{"--vehicle", "veh-1", "--offsets", "1:3-"}, ""},
		{[]string{"--resume", "backfill-1"}, ""},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-jsonl", "out.jsonl", "--resume", "x"}, ""},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-topic", "fleet.backfill"}, ""},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-parquet", "s3://bucket/backfill/2025"}, ""},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--signals", "speed,wheel_*,location"}, ""},
		{nil, "--from"},
		{[]string{"--from", "yesterday"}, "--from"},
		{[]string{"--from", "2025-06-01"}, "--from"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to", "08:30"}, "--to"},
		{[]string{"--from", "2025-06-01T09:00:00Z", "--to", "2025-06-01T08:00:00Z"}, "--from"},
		{[]string{"--from", "2025-06-01T09:00:00Z", "--to", "2025-06-01T09:00:00Z"}, "--from"},
		{[]string{"--from", "2025-06-01T09:00:00Z", "--offsets", "1"}, "--from"},
		{[]string{"--to", "2025-06-01T09:00:00Z", "--offsets", "1:1-"}, "--to"},
		{[]string{"--offsets", "1:1-9,1:20-30"}, "--offsets"},
		{[]string{"--offsets", "-2"}, "--offsets"},
		{[]string{"--offsets", "x:1-2"}, "--offsets"},
		{[]string{"--offsets", "1:-5-"}, "--offsets"},
		{[]string{"--offsets", "1:9-9"}, "--offsets"},
		{[]string{"--offsets", "1:5"}, "--offsets"},
		{[]string{"--offsets", ","}, "--offsets"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--vehicle", "bad/id"}, "--vehicle"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--signals", "a[b"}, "--signals"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-jsonl", "-", "--to-topic", "x"}, "--to-topic"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-topic", "fleet.telemetry.v1"}, "--to-topic"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-topic", "fleet.catalog.v1"}, "--to-topic"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-topic", "x", "--signals", "speed"}, "--signals"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-parquet", "bucket/prefix"}, "--to-parquet"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-parquet", "s3://B/prefix"}, "--to-parquet"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-parquet", "s3://bucket//x"}, "--to-parquet"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--allow-live-prefix"}, "--allow-live-prefix"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--resume", "x"}, "--resume"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--to-jsonl", "f", "--resume", "no/slash"}, "--resume"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--state-topic", "fleet.telemetry.v1"}, "--state-topic"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--commit-interval", "0s"}, "--commit-interval"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--progress", "fancy"}, "--progress"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--topic", ""}, "--topic"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--progress-interval", "-1s"}, "--progress-interval"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--kafka-brokers", "localhost"}, "--kafka-brokers"},
		{[]string{"--from", "2025-06-01T08:00:00Z", "--s3-endpoint", "minio:9000"}, "--s3-endpoint"},
	} {
		var cfg Config
		_, err := cli.Parse(program, &cfg, c.args, &bytes.Buffer{})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want+":")):
			t.Errorf("%q: err %v, want one naming %s", c.args, err, c.want)
		}
	}
	if err := (&Config{}).Validate(); err == nil {
		t.Error("zero Config validated")
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	var cfg Config
	if _, err := cli.Parse(program, &cfg, []string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v", err)
	}
	for _, s := range []string{"--dry-run", "-from", "-offsets", "-vehicle", "-signals", "-to-jsonl", "-to-topic", "-to-parquet", "-resume", "reset-group", "-fail-on-bad", "FLEET_REPLAY", "never"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("help lacks %q:\n%s", s, out.String())
		}
	}
}

// waitingTarget holds its first write until the replay has logged progress.
type waitingTarget struct {
	Target
	logs func() string
	once sync.Once
	err  error
}

func (w *waitingTarget) Write(ctx context.Context, rec Record) error {
	w.once.Do(func() {
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(w.logs(), `msg="replay progress"`) {
			if time.Now().After(deadline) {
				w.err = errors.New("no progress logged while a write was pending")
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	if w.err != nil {
		return w.err
	}
	return w.Target.Write(ctx, rec)
}

func TestProgressLogged(t *testing.T) {
	f := newFixture(t)
	var out bytes.Buffer
	var logs safeBuffer
	r, err := New(f.config(t, "--from", rfc(t0), "--progress", "lines", "--progress-interval", "10ms"),
		Deps{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	r.wrapTarget = func(tg Target) Target { return &waitingTarget{Target: tg, logs: logs.String} }
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "replay progress\" records=") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// scrapingTarget reads /metrics on the second write, while the replay runs.
type scrapingTarget struct {
	Target
	url    string
	writes int
	body   string
	err    error
}

func (s *scrapingTarget) Write(ctx context.Context, rec Record) error {
	s.writes++
	if s.writes == 2 {
		resp, err := http.Get(s.url + "/metrics")
		if err != nil {
			s.err = err
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			s.body = string(b)
		}
	}
	return s.Target.Write(ctx, rec)
}

func TestMetricsWhileRunning(t *testing.T) {
	f := newFixture(t)
	var out bytes.Buffer
	r, err := New(f.config(t, "--from", rfc(t0), "--listen", "127.0.0.1:0"), Deps{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	url := r.AdminURL()
	if url == "" {
		t.Fatal("no admin URL with --listen")
	}
	scraper := &scrapingTarget{url: url}
	r.wrapTarget = func(tg Target) Target { scraper.Target = tg; return scraper }
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if scraper.err != nil {
		t.Fatalf("scrape while running: %v", scraper.err)
	}
	for _, want := range []string{`fleet_replay_records_total [1-9]`, `fleet_replay_fixes_total [0-9]`, `fleet_kafka_\w+`} {
		if !regexp.MustCompile(want).MatchString(scraper.body) {
			t.Errorf("/metrics during the replay lacks %q:\n%s", want, scraper.body)
		}
	}
	if _, err := http.Get(url + "/metrics"); err == nil {
		t.Error("/metrics still served after Run returned")
	}
}

func TestSignals(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		signals string
		want    []string // per record, the lines' signal (or "location")
	}{
		{"speed", []string{"speed"}},
		{"ge*,location", []string{"gear", "location"}},
		{"location", []string{"location"}},
		{"speed,gear", []string{"speed", "gear"}},
	} {
		res := run(t, f.config(t, "--from", rfc(t0), "--signals", c.signals), nil)
		if res.err != nil {
			t.Fatal(res.err)
		}
		lines := parseLines(t, res.stdout)
		if len(lines) != testRecords*len(c.want) {
			t.Fatalf("--signals %s: %d lines, want %d", c.signals, len(lines), testRecords*len(c.want))
		}
		for i, l := range lines {
			got := l.Signal
			if l.Type == "location" {
				got = "location"
			}
			if want := c.want[i%len(c.want)]; got != want {
				t.Fatalf("--signals %s: line %d is %q, want %q", c.signals, i, got, want)
			}
		}
		if wantReadings := int64(testRecords * (len(c.want) - strings.Count(c.signals, "location"))); res.stats.Readings != wantReadings {
			t.Errorf("--signals %s: stats %+v", c.signals, res.stats)
		}
	}
	// A pattern that matches nothing writes nothing (and is not an error:
	// the records were there).
	res := run(t, f.config(t, "--from", rfc(t0), "--signals", "no_such_signal"), nil)
	if res.err != nil || len(res.stdout) != 0 {
		t.Fatalf("err %v, %d bytes", res.err, len(res.stdout))
	}
}

func TestUnknownVehicle(t *testing.T) {
	f := newFixture(t)
	res := run(t, f.config(t, "--from", rfc(t0), "--vehicle", "veh-404"), nil)
	if res.err == nil || !strings.Contains(res.err.Error(), "--vehicle") || !strings.Contains(res.err.Error(), "veh-404 has no records") {
		t.Fatalf("err %v, want one saying veh-404 has no records", res.err)
	}
	if res.stats.Records == 0 {
		t.Error("the vehicle's partition was not read")
	}
	res = run(t, f.config(t, "--from", rfc(t0), "--vehicle", "veh-404", "--allow-empty"), nil)
	if res.err != nil || len(res.stdout) != 0 {
		t.Fatalf("--allow-empty: err %v, %d bytes", res.err, len(res.stdout))
	}
}

func TestProgressBar(t *testing.T) {
	var out safeBuffer
	stats := Stats{Records: 500, Bytes: 3 << 20, Readings: 10_000}
	p := startProgress(ProgressBar, time.Second, &out, slog.New(slog.DiscardHandler), 1000, func() Stats { return stats })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "500/1000 records") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.finish()
	for _, want := range []string{"replay", "50 %", "500/1000 records", "3.0 MiB", "rec/s", "readings/s", "ETA"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the bar lacks %q:\n%q", want, out.String())
		}
	}
}

// TestJSONFormatting checks the hand-written formatting against
// encoding/json on awkward values.
func TestJSONFormatting(t *testing.T) {
	for _, f := range []float64{0, math.Copysign(0, -1), 1, -1.5, 0.1, 1e-6, 9.99e-7, 1e-7, 1.5e-9, 1e20, 1e21, 1.2345e22, -3e-300, math.MaxFloat64, math.SmallestNonzeroFloat64, 123456789.125, 1e-5} {
		want, _ := json.Marshal(f)
		if got := appendFloat(nil, f); string(got) != string(want) {
			t.Errorf("appendFloat(%g) = %s, want %s", f, got, want)
		}
	}
	for _, s := range []string{"", "speed", "a b", `q"uote`, `back\slash`, "<tag>&", "tab\there", "ünïcode", "bad\xffutf8", "\u2028", "ctrl\x01"} {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

func FuzzJSONFormatting(f *testing.F) {
	f.Add("speed", 12.5)
	f.Add("<x>", 1e-9)
	f.Fuzz(func(t *testing.T, s string, v float64) {
		if want, _ := json.Marshal(s); string(appendString(nil, s)) != string(want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, appendString(nil, s), want)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return
		}
		if want, _ := json.Marshal(v); string(appendFloat(nil, v)) != string(want) {
			t.Fatalf("appendFloat(%v) = %s, want %s", v, appendFloat(nil, v), want)
		}
	})
}
