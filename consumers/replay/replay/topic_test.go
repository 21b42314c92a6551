package replay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// uniqueTopic names a topic no other test (or earlier run against the
// same broker) uses.
func uniqueTopic(t *testing.T) string {
	return fmt.Sprintf("test.replay.%s.%d", strings.NewReplacer("/", ".", " ", "_").Replace(t.Name()), time.Now().UnixNano())
}

// consumeAll reads every committed record of topic (read committed), up to
// its end offsets as of the call. Transactions writing to it must be over.
func consumeAll(t *testing.T, brokers, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Markers are kept, so that the last offset of every partition is seen.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topic), kgo.KeepControlRecords(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	var out []*kgo.Record
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v; still to read: %v", topic, ctx.Err(), left)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				out = append(out, r)
			}
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return out
}

// header returns the value of a record header.
func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// checkRepublished checks that target holds each source record of want
// exactly once, unchanged, keyed and partitioned as the bridge does.
func checkRepublished(t *testing.T, f *fixture, target string, want []produced) {
	t.Helper()
	got := consumeAll(t, f.addr, target)
	seen := map[string]*kgo.Record{}
	for _, r := range got {
		from := header(r, HeaderReplayedFrom)
		if seen[from] != nil {
			t.Fatalf("record %s is in %s twice (offsets %d and %d)", from, target, seen[from].Offset, r.Offset)
		}
		seen[from] = r
	}
	if len(got) != len(want) {
		t.Errorf("%s holds %d records, want %d", target, len(got), len(want))
	}
	for _, p := range want {
		r := seen[fmt.Sprintf("%s/%d/%d", f.topic, p.partition, p.offset)]
		if r == nil {
			t.Fatalf("source record %d/%d is not in %s", p.partition, p.offset, target)
		}
		if string(r.Key) != p.vehicle || !r.Timestamp.Equal(p.ts) || r.Partition != PartitionFor(p.vehicle, testPartitions) {
			t.Fatalf("record %d/%d re-published as key %q at %v on partition %d; want %q at %v on %d",
				p.partition, p.offset, r.Key, r.Timestamp, r.Partition, p.vehicle, p.ts, PartitionFor(p.vehicle, testPartitions))
		}
		if !bytes.Equal(r.Value, encodeBatch(t, p.vehicle, uint64(p.seq), p.ts)) {
			t.Fatalf("record %d/%d: value changed", p.partition, p.offset)
		}
	}
}

func TestToTopic(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, brokers []string) {
		f := newFixtureOn(t, brokers[0], uniqueTopic(t))
		target := f.topic + ".backfill"
		from, to := t0.Add(7*time.Second), t0.Add(41*time.Second)
		res := run(t, f.config(t, "--from", rfc(from), "--to", rfc(to), "--to-topic", target), nil)
		if res.err != nil {
			t.Fatal(res.err)
		}
		want := f.want(func(p produced) bool { return !p.ts.Before(from) && p.ts.Before(to) })
		checkRepublished(t, f, target, want)
		if res.stats.Written != int64(len(want)) {
			t.Errorf("stats %+v, want %d written", res.stats, len(want))
		}
		// --vehicle re-publishes only that vehicle's records.
		vt := f.topic + ".vehicle"
		res = run(t, f.config(t, "--from", rfc(t0), "--vehicle", "veh-5", "--to-topic", vt), nil)
		if res.err != nil {
			t.Fatal(res.err)
		}
		checkRepublished(t, f, vt, f.want(func(p produced) bool { return p.vehicle == "veh-5" }))
	})
}

// failingTarget fails the replay at its n-th write, as a crash would stop
// it: nothing after the last commit is committed.
type failingTarget struct {
	Target
	n int
}

var errInjected = errors.New("injected failure")

func (f *failingTarget) Write(ctx context.Context, rec Record) error {
	if f.n--; f.n == 0 {
		return errInjected
	}
	return f.Target.Write(ctx, rec)
}

func TestResumeAfterFailure(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, brokers []string) {
		f := newFixtureOn(t, brokers[0], uniqueTopic(t))
		want := f.want(func(produced) bool { return true })
		dir := t.TempDir()

		// The reference: one uninterrupted replay into a file.
		ref := filepath.Join(dir, "ref.jsonl")
		if res := run(t, f.config(t, "--from", rfc(t0), "--to-jsonl", ref), nil); res.err != nil {
			t.Fatal(res.err)
		}
		refBytes, err := os.ReadFile(ref)
		if err != nil || len(refBytes) == 0 {
			t.Fatalf("reference output: %v, %d bytes", err, len(refBytes))
		}

		for _, c := range []struct {
			name   string
			target []string
			check  func(t *testing.T)
		}{
			{"jsonl", []string{"--to-jsonl", filepath.Join(dir, "out.jsonl")}, func(t *testing.T) {
				got, err := os.ReadFile(filepath.Join(dir, "out.jsonl"))
				if err != nil || !bytes.Equal(got, refBytes) {
					t.Fatalf("resumed output differs from an uninterrupted replay's (%d and %d bytes, %v)", len(got), len(refBytes), err)
				}
			}},
			{"topic", []string{"--to-topic", f.topic + ".resumed"}, func(t *testing.T) {
				checkRepublished(t, f, f.topic+".resumed", want)
			}},
		} {
			t.Run(c.name, func(t *testing.T) {
				name := c.name + "-" + fmt.Sprint(time.Now().UnixNano())
				args := append([]string{"--from", rfc(t0), "--resume", name, "--commit-interval", "10ms"}, c.target...)
				// Three runs that each fail part-way, then one that ends.
				for i, n := range []int{9, 17, 3} {
					res := run(t, f.config(t, args...), func(tg Target) Target { return &failingTarget{Target: tg, n: n} })
					if !errors.Is(res.err, errInjected) {
						t.Fatalf("run %d: err %v, want the injected failure", i, res.err)
					}
					if c.name == "jsonl" {
						// Lines written after the last commit, as a crash leaves
						// them (more than the rest of the output: truncating
						// matters, not only overwriting).
						fh, err := os.OpenFile(filepath.Join(dir, "out.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
						if err != nil {
							t.Fatal(err)
						}
						fh.WriteString(strings.Repeat(`{"torn":`, len(refBytes)/8+1))
						fh.Close()
					}
				}
				// Resuming needs only the name.
				res := run(t, f.config(t, "--resume", name), nil)
				if res.err != nil {
					t.Fatal(res.err)
				}
				c.check(t)
				// A finished replay resumed again does nothing.
				res = run(t, f.config(t, "--resume", name), nil)
				if res.err != nil || res.stats.Written != 0 {
					t.Fatalf("resuming a finished replay: err %v, stats %+v", res.err, res.stats)
				}
				c.check(t)
			})
		}
	})
}

// TestDryRunEstimate checks the plan's byte estimate on real Kafka (which
// reports partition sizes; kfake does not).
func TestDryRunEstimate(t *testing.T) {
	f := newFixtureOn(t, testenv.Kafka(t), uniqueTopic(t))
	res := run(t, f.config(t, "--offsets", "0,2:1-3", "--dry-run"), nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	out := string(res.stdout)
	if !regexp.MustCompile(`estimated bytes to read: [0-9.]+ (B|KiB)\n`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^ +2 +1 +3 +2 +[0-9.]+ (B|KiB) +0 +[0-9]+ *$`).MatchString(out) {
		t.Fatalf("plan:\n%s", out)
	}
}
