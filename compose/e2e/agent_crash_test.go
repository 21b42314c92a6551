package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestAgentKilled100Times kills the edge agent with SIGKILL at random moments
// 100 times while it collects and publishes, leaving a torn record at the
// end of its newest spool segment every few kills (as a power cut during a
// write would), then lets it finish. Every batch it ever spooled must be in
// Kafka: per vehicle, one epoch and every seq from 1 to the last.
func TestAgentKilled100Times(t *testing.T) {
	mqttURL := testenv.MQTT(t)
	brokers := testenv.Kafka(t)
	run := strconv.FormatUint(mrand.Uint64()%1e9, 36)
	topic := "e2e.crash." + run
	bins := buildBinaries(t, "./edge-agent", "./bridge")

	startProc(t, filepath.Join(bins, "bridge"), "bridge", "--mqtt-url", mqttURL, "--mqtt-client-id", "crash-bridge-"+run,
		"--share-group", "crash-"+run, "--kafka-brokers", brokers, "--topic", topic, "--dlq-topic", topic+".dlq",
		"--partitions", "2", "--replication", "1", "--listen", "127.0.0.1:0")

	spoolDir := filepath.Join(t.TempDir(), "spool")
	prefix := "crash-" + run + "-"
	args := func(extra ...string) []string {
		return append([]string{"--mqtt-url", mqttURL, "--sim-vehicles", "3", "--sim-id-prefix", prefix,
			"--sim-speedup", "50", "--sim-imu-hz", "5", "--batch-max-age", "1s", "--ack-timeout", "2s",
			"--spool-dir", spoolDir, "--listen", ""}, extra...)
	}
	const kills = 100
	torn := 0
	for i := 0; i < kills; i++ {
		p := startProc(t, filepath.Join(bins, "edge-agent"), fmt.Sprintf("edge-agent-%d", i), args()...)
		time.Sleep(time.Duration(50+mrand.IntN(400)) * time.Millisecond) // a random moment, not a wait for a condition
		p.kill()
		if i%7 == 3 {
			if tearNewestSegment(t, spoolDir) {
				torn++
			}
		}
	}
	t.Logf("killed the agent %d times, tore %d segment tails", kills, torn)

	// A last run that ends once every spooled batch is acked.
	final := startProc(t, filepath.Join(bins, "edge-agent"), "edge-agent-final",
		args("--sim-duration", "5s", "--exit-when-done", "--drain-timeout", "2m")...)
	if err := final.wait(3 * time.Minute); err != nil {
		t.Fatalf("the final run did not get every spooled batch acknowledged: %v", err)
	}

	// What the spools say was appended, and what is in Kafka.
	want := map[string]uint64{} // vehicle -> highest seq appended
	epochs := map[string]uint64{}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("%s%04d", prefix, i)
		sp, err := spool.Open(spool.Config{Dir: filepath.Join(spoolDir, id)}, spool.Deps{})
		if err != nil {
			t.Fatalf("%s: spool does not open: %v", id, err)
		}
		st := sp.Stats()
		sp.Close()
		if st.Records != 0 {
			t.Errorf("%s: %d batches still spooled after the final run", id, st.Records)
		}
		want[id], epochs[id] = st.NextSeq-1, st.Epoch
	}
	got := readIdentities(t, brokers, topic)
	for id, last := range want {
		seqs := got[id]
		if len(seqs) != 1 {
			t.Errorf("%s: epochs in Kafka %v, want just the spool's %016x", id, keys(seqs), epochs[id])
			continue
		}
		s := seqs[epochs[id]]
		var missing []uint64
		for q := uint64(1); q <= last; q++ {
			if !s[q] {
				missing = append(missing, q)
			}
		}
		if len(missing) > 0 {
			t.Errorf("%s: %d of %d spooled batches never reached Kafka, e.g. seqs %v", id, len(missing), last, missing[:min(10, len(missing))])
		}
		if len(s) != int(last) {
			t.Errorf("%s: Kafka holds seqs beyond the spool's last %d: %d distinct", id, last, len(s))
		}
		t.Logf("%s: seqs 1..%d all in Kafka", id, last)
	}
}

// tearNewestSegment appends part of a record to the newest segment file,
// as a write cut short by a power cut leaves it. It reports whether it
// found a segment.
func tearNewestSegment(t *testing.T, dir string) bool {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "*", "*.seg"))
	if len(segs) == 0 {
		return false
	}
	slices.Sort(segs)
	newest := segs[mrand.IntN(len(segs))] // any vehicle's; names sort by index within a folder
	dirSegs, _ := filepath.Glob(filepath.Join(filepath.Dir(newest), "*.seg"))
	slices.Sort(dirSegs)
	newest = dirSegs[len(dirSegs)-1]
	f, err := os.OpenFile(newest, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	junk := make([]byte, 1+mrand.IntN(60))
	_, _ = rand.Read(junk)
	if _, err := f.Write(junk); err != nil {
		t.Fatal(err)
	}
	return true
}

// readIdentities reads every record of topic and returns, per vehicle and
// epoch, the seqs present.
func readIdentities(t *testing.T, brokers, topic string) map[string]map[uint64]map[uint64]bool {
	t.Helper()
	out := map[string]map[uint64]map[uint64]bool{}
	readTopic(t, brokers, topic, func(r *kgo.Record) {
		id, err := wire.DecodeIdentity(r.Value, wire.Limits{})
		if err != nil {
			t.Errorf("undecodable record at %d/%d: %v", r.Partition, r.Offset, err)
			return
		}
		if out[id.VehicleID] == nil {
			out[id.VehicleID] = map[uint64]map[uint64]bool{}
		}
		if out[id.VehicleID][id.Epoch] == nil {
			out[id.VehicleID][id.Epoch] = map[uint64]bool{}
		}
		out[id.VehicleID][id.Epoch][id.Seq] = true
	})
	return out
}

// readTopic hands every record of topic, up to its end offsets at the
// call, to fn.
func readTopic(t *testing.T, brokers, topic string, fn func(*kgo.Record)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v (partitions left %v)", topic, ctx.Err(), remaining)
		}
		fs.EachRecord(func(r *kgo.Record) {
			fn(r)
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
	}
}

func keys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
