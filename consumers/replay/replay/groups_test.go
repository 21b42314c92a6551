package replay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// liveGroup is a consumer group member that has read and committed part of
// the fixture's topic, and stays in the group until closed.
type liveGroup struct {
	cl    *kgo.Client
	group string
}

func joinGroup(t *testing.T, f *fixture, group string, upTo int) *liveGroup {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(f.addr), kgo.ConsumerGroup(group), kgo.ConsumeTopics(f.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	if err != nil {
		t.Fatal(err)
	}
	g := &liveGroup{cl: cl, group: group}
	t.Cleanup(g.close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := 0; n < upTo; {
		fs := cl.PollRecords(ctx, upTo-n)
		if ctx.Err() != nil {
			t.Fatalf("group %s read %d of %d records", group, n, upTo)
		}
		n += fs.NumRecords()
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

func (g *liveGroup) close() { g.cl.Close() }

// committed returns a group's committed offsets on topic as "p:offset" words.
func committed(t *testing.T, addr, group, topic string) string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	os, err := kadm.NewClient(cl).FetchOffsetsForTopics(context.Background(), group, topic)
	if err != nil {
		t.Fatal(err)
	}
	var words []string
	for _, o := range os.Sorted() {
		if o.At >= 0 {
			words = append(words, fmt.Sprintf("%d:%d", o.Partition, o.At))
		}
	}
	return strings.Join(words, " ")
}

func listGroups(t *testing.T, addr string) []string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	gs, err := kadm.NewClient(cl).ListGroups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return gs.Groups()
}

// TestLiveGroupsUntouched runs replays of every kind while a live group and
// a stopped one hold offsets on the topic, and checks that their committed
// offsets do not move and that no replay creates a group.
func TestLiveGroupsUntouched(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, brokers []string) {
		f := newFixtureOn(t, brokers[0], uniqueTopic(t))
		live := f.topic + ".live-sink"
		stopped := f.topic + ".stopped"
		joinGroup(t, f, live, 20)
		joinGroup(t, f, stopped, 33).close()
		before := map[string]string{live: committed(t, f.addr, live, f.topic), stopped: committed(t, f.addr, stopped, f.topic)}
		if before[live] == "" || before[stopped] == "" {
			t.Fatalf("the groups committed nothing: %v", before)
		}

		dir := t.TempDir()
		for _, args := range [][]string{
			{"--from", rfc(t0)},
			{"--offsets", "0:2-9,3", "--dry-run"},
			{"--from", rfc(t0), "--vehicle", "veh-4", "--signals", "speed", "--to-jsonl", filepath.Join(dir, "a.jsonl")},
			{"--from", rfc(t0), "--to-jsonl", filepath.Join(dir, "b.jsonl"), "--resume", "untouched-" + fmt.Sprint(time.Now().UnixNano())},
			{"--from", rfc(t0), "--to-topic", f.topic + ".copy", "--resume", "untouched-t-" + fmt.Sprint(time.Now().UnixNano())},
		} {
			if res := run(t, f.config(t, args...), nil); res.err != nil {
				t.Fatalf("%q: %v", args, res.err)
			}
		}
		for g, want := range before {
			if got := committed(t, f.addr, g, f.topic); got != want {
				t.Errorf("group %s moved from %s to %s", g, want, got)
			}
		}
		// No other group holds offsets on the topic: no replay made one.
		// (Other tests' groups on a shared broker hold offsets elsewhere.)
		for _, g := range listGroups(t, f.addr) {
			if _, ok := before[g]; !ok && committed(t, f.addr, g, f.topic) != "" {
				t.Errorf("group %s holds offsets on %s after the replays", g, f.topic)
			}
		}
	})
}

func resetGroup(t *testing.T, f *fixture, group string, to time.Time, execute bool) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cfg := ResetGroupConfig{Group: group, Topic: f.topic, ToTime: rfc(to), Execute: execute}
	cfg.Kafka.Brokers = []string{f.addr}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := ResetGroup(ctx, cfg, slog.New(slog.DiscardHandler), &out)
	return out.String(), err
}

func TestResetGroup(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, brokers []string) {
		f := newFixtureOn(t, brokers[0], uniqueTopic(t))
		group := f.topic + ".group"
		g := joinGroup(t, f, group, testRecords)
		start := committed(t, f.addr, group, f.topic)
		to := t0.Add(25 * time.Second)

		// A group with a live member is refused, dry run or not.
		for _, execute := range []bool{false, true} {
			out, err := resetGroup(t, f, group, to, execute)
			if !errors.Is(err, ErrGroupActive) || !strings.Contains(err.Error(), "--group") {
				t.Fatalf("live group, --execute=%v: err %v, want ErrGroupActive\n%s", execute, err, out)
			}
		}
		if got := committed(t, f.addr, group, f.topic); got != start {
			t.Fatalf("refused reset moved the group: %s, was %s", got, start)
		}

		g.close()
		dry, err := resetGroup(t, f, group, to, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := committed(t, f.addr, group, f.topic); got != start {
			t.Fatalf("dry run moved the group: %s, was %s", got, start)
		}
		done, err := resetGroup(t, f, group, to, true)
		if err != nil {
			t.Fatal(err)
		}
		// The table it applied is the table the dry run showed.
		table := func(s string) string {
			_, rest, _ := strings.Cut(s, "\n")
			rest, _, _ = strings.Cut(rest, "moved group")
			return rest
		}
		if table(dry) != table(done) || !strings.Contains(dry, "dry run") || !strings.Contains(done, "moved group") {
			t.Fatalf("dry run and execution differ:\n%s\n%s", dry, done)
		}
		// Each partition now starts at its first record at or after the time.
		var want []string
		for p := range int32(testPartitions) {
			first := int64(-1)
			var end int64
			for _, r := range f.want(func(r produced) bool { return r.partition == p }) {
				end = r.offset + 1
				if first < 0 && !r.ts.Before(to) {
					first = r.offset
				}
			}
			if first < 0 {
				first = end
			}
			want = append(want, fmt.Sprintf("%d:%d", p, first))
			if !strings.Contains(dry, fmt.Sprintf("re-reads %d", end-first)) && end != first {
				t.Errorf("dry run does not say partition %d re-reads %d records:\n%s", p, end-first, dry)
			}
		}
		if got := committed(t, f.addr, group, f.topic); got != strings.Join(want, " ") {
			t.Fatalf("group moved to %s, want %s", got, strings.Join(want, " "))
		}

		// Unknown groups and topics are errors naming the flag.
		if _, err := resetGroup(t, f, "no-such-group-"+f.topic, to, false); err == nil || !strings.Contains(err.Error(), "--group") {
			t.Errorf("unknown group: %v", err)
		}
	})
}

func TestResetGroupConfig(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--group", "g", "--to-time", "2025-06-01T08:00:00Z"}, ""},
		{[]string{"--group", "g", "--to-time", "2025-06-01T08:00:00Z", "--execute", "--topic", "t"}, ""},
		{[]string{"--to-time", "2025-06-01T08:00:00Z"}, "--group"},
		{[]string{"--group", "g"}, "--to-time"},
		{[]string{"--group", "g", "--to-time", "8am"}, "--to-time"},
		{[]string{"--group", "g", "--to-time", "2025-06-01T08:00:00Z", "--topic", ""}, "--topic"},
	} {
		var cfg ResetGroupConfig
		_, err := cliParse(ResetGroupProgram, &cfg, c.args)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want+":")):
			t.Errorf("%q: err %v, want one naming %s", c.args, err, c.want)
		}
	}
}

func cliParse(p cli.Program, cfg cli.Config, args []string) (*slog.Logger, error) {
	return cli.Parse(p, cfg, args, &bytes.Buffer{})
}
