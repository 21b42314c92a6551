package relay

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// heapBound is the bridge's stated heap bound under hostile load with its
// default limits: the checks (at most --mqtt-connections+1 at once, 16
// bytes an entry of at most 1,000,000 entries each) and the payloads in
// flight stay well under it.
const heapBound = 256 << 20

// A flood of hostile devices — valid batches of a million readings in a
// few kilobytes, decompression bombs, garbage, bit-flipped batches — costs
// the bridge bounded memory; each ends where it should, and a well-behaved
// vehicle's batches go through meanwhile.
func TestHostileDevicesBoundedHeap(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.MaxBatchBytes = 1 << 20
	br := e.startBridge(cfg)
	br.waitSubscribed(t)

	// 200,000 readings in a few hundred bytes: 200 constant signals at
	// 100 Hz for 10 s (a million take seconds to check under -race).
	dense := &wire.Batch{Identity: wire.Identity{VehicleID: "veh-dense", Epoch: 1, Seq: 1}, BaseTime: time.Now().UnixNano()}
	for i := range 1000 {
		for s := range 200 {
			dense.Readings = append(dense.Readings, wire.Reading{Signal: fmt.Sprintf("s%03d", s), Time: dense.BaseTime + int64(i)*10_000_000, Value: wire.Int(int64(s))})
		}
	}
	denseData, err := wire.Encode(dense, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := &pb.Batch{}
	if err := proto.Unmarshal(denseData, env); err != nil {
		t.Fatal(err)
	}
	bomb := proto.Clone(env).(*pb.Batch)
	bomb.VehicleId, bomb.Compression, bomb.UncompressedSize = "veh-bomb", pb.Compression_COMPRESSION_ZSTD, 1<<30
	bombData, err := wire.Seal(bomb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a valid batch of %d readings in %d bytes", len(dense.Readings), len(denseData))

	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	})

	const rounds = 5
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			cl := e.client(fmt.Sprintf("hostile-%d", c))
			for i := range rounds {
				seq := uint64(c*rounds + i + 1)
				d := proto.Clone(env).(*pb.Batch)
				d.Seq = seq
				data, _ := wire.Seal(d)
				publish(t, cl, topics.Telemetry("veh-dense"), data)
				publish(t, cl, topics.Telemetry("veh-bomb"), bombData)
				publish(t, cl, topics.Telemetry("veh-garbage"), []byte("\x0a\xff\xff\xff\xff\x0fnot a batch"))
				flipped := append([]byte(nil), data...)
				flipped[len(flipped)/3] ^= 1
				publish(t, cl, topics.Telemetry("veh-dense"), flipped)
			}
		})
	}
	good := e.client("good-car")
	for seq := uint64(1); seq <= 20; seq++ {
		publish(t, good, topics.Telemetry("veh-good"), batch(t, "veh-good", 1, seq))
	}
	wg.Wait()
	waitLong(t, "every message settled", func() error {
		if v := metricValue(t, br.AdminURL(), `fleet_bridge_messages_total{result="produced"}`); v != fmt.Sprint(4*rounds+20) {
			return fmt.Errorf("produced %q", v)
		}
		if v := metricValue(t, br.AdminURL(), `fleet_bridge_messages_total{result="dlq"}`); v != fmt.Sprint(3*4*rounds) {
			return fmt.Errorf("dlq %q", v)
		}
		return nil
	})
	close(stop)
	sampler.Wait()
	for reason, want := range map[string]int{ReasonTooLarge: 4 * rounds, ReasonMalformed: 4 * rounds, ReasonCorrupt: 4 * rounds} {
		if v := metricValue(t, br.AdminURL(), `fleet_bridge_dlq_total{reason="`+reason+`"}`); v != fmt.Sprint(want) {
			t.Errorf("dlq %s: %q, want %d", reason, v, want)
		}
	}
	t.Logf("peak heap in use %.1f MiB (bound %d MiB) for %d batches of 200,000 readings", float64(peak.Load())/(1<<20), heapBound>>20, 4*rounds)
	if peak.Load() > heapBound {
		t.Errorf("peak heap in use %d MiB, over the bound of %d MiB", peak.Load()>>20, heapBound>>20)
	}
}

// waitLong is mqtttest.Eventually with a minute's patience: checking
// dense batches under the race detector is slow.
func waitLong(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
