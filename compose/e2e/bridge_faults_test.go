package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/compose/loadtest/fleetsim"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// privateStack is a Mosquitto and a Kafka of the test's own, started with
// compose/services.sh beside the shared stack, so the test may restart
// them without disturbing other tests.
type privateStack struct {
	t           *testing.T
	env         []string
	mqtt, kafka string
}

func startPrivateStack(t *testing.T) *privateStack {
	t.Helper()
	base, _ := strconv.Atoi(os.Getenv("FLEET_SERVICES_PORT_OFFSET"))
	s := &privateStack{t: t, env: append(os.Environ(),
		"FLEET_SERVICES_PORT_OFFSET="+strconv.Itoa(base+50),
		"FLEET_SERVICES_RUN_DIR="+filepath.Join(t.TempDir(), "run"))}
	out := s.services("start", "mosquitto", "kafka")
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimPrefix(sc.Text(), "export ")
		if v, ok := strings.CutPrefix(line, "FLEET_TEST_MQTT_URL="); ok {
			s.mqtt = v
		}
		if v, ok := strings.CutPrefix(line, "FLEET_TEST_KAFKA_BROKERS="); ok {
			s.kafka = v
		}
	}
	if s.mqtt == "" || s.kafka == "" {
		t.Fatalf("services.sh start printed no addresses:\n%s", out)
	}
	t.Cleanup(func() { s.services("stop") })
	return s
}

func (s *privateStack) services(args ...string) []byte {
	return s.servicesEnv(nil, args...)
}

func (s *privateStack) servicesEnv(extra []string, args ...string) []byte {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(testenv.RepoRoot(), "compose", "services.sh"), args...)
	cmd.Env = append(append([]string(nil), s.env...), extra...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		s.t.Fatalf("services.sh %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// restart stops a service and starts it again with its data.
func (s *privateStack) restart(svc string) {
	s.servicesEnv([]string{"FLEET_SERVICES_KEEP_DATA=1"}, "restart", svc)
}

// TestBridgeUnderFaults: two bridge replicas relay a fleet's million
// readings while one replica is killed with SIGKILL twenty times, Mosquitto
// restarts, and Kafka restarts. Every batch ends up in Kafka (counted
// independently by identity), and a batch is there more than once only if
// the fleet sent it more than once (an unacked window), never because a
// bridge duplicated it on its own.
func TestBridgeUnderFaults(t *testing.T) {
	testenv.Kafka(t) // a real-services run; the test starts its own
	stack := startPrivateStack(t)
	bins := buildBinaries(t, "./bridge")
	run := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	topic := "faults.telemetry." + run
	bridgeArgs := func(id string) []string {
		return []string{"--mqtt-url", stack.mqtt, "--mqtt-client-id", "faults-" + id, "--share-group", "faults",
			"--kafka-brokers", stack.kafka, "--topic", topic, "--dlq-topic", topic + ".dlq", "--catalog-topic", topic + ".catalog",
			"--partitions", "4", "--replication", "1", "--bridge-id", id, "--listen", testenv.FreeAddr(t),
			"--ack-interval", "200ms", "--drain-timeout", "5s", "--log-level", "warn"}
	}
	bin := filepath.Join(bins, "bridge")
	b1 := startProc(t, bin, "bridge-1", bridgeArgs("b1")...)
	var b2 *proc
	var b2mu sync.Mutex
	startB2 := func() {
		b2mu.Lock()
		b2 = startProc(t, bin, "bridge-2", bridgeArgs("b2")...)
		b2mu.Unlock()
	}
	startB2()

	kcl, err := kgo.NewClient(kgo.SeedBrokers(stack.kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer kcl.Close()
	adm := kadm.NewClient(kcl)
	waitFor(t, "the bridge to create "+topic, time.Minute, func(ctx context.Context) error {
		td, err := adm.ListTopics(ctx, topic)
		if err != nil || !td.Has(topic) {
			return fmt.Errorf("not there yet (%v)", err)
		}
		return nil
	})

	const vehicles, batches, readings = 100, 100, 100 // a million readings
	fleet, err := fleetsim.New(fleetsim.Config{URL: stack.mqtt, Prefix: "flt-" + run + "-", Vehicles: vehicles, Batches: batches,
		ReadingsPerBatch: readings, Connections: 4, Interval: 200 * time.Millisecond, ResendAfter: 3 * time.Second, Epoch: 7})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fleetDone := make(chan error, 1)
	fleetStopped := make(chan struct{})
	start := time.Now()
	go func() { fleetDone <- fleet.Run(ctx); close(fleetStopped) }()
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-fleetStopped:
				return
			case <-tick.C:
				t.Logf("%v: %+v", time.Since(start).Round(time.Second), fleet.Stats())
			}
		}
	}()
	if dir := os.Getenv("FLEET_FAULTS_KEEP_LOGS"); dir != "" {
		t.Cleanup(func() {
			for _, p := range []*proc{b1, b2} {
				data, _ := os.ReadFile(p.log)
				_ = os.WriteFile(filepath.Join(dir, p.name+".log"), data, 0o644)
			}
		})
	}

	// The faults, while the fleet drives: twenty kills of one replica,
	// a Mosquitto restart after the tenth, a Kafka restart after the
	// fifteenth.
	for i := 1; i <= 20; i++ {
		time.Sleep(700 * time.Millisecond)
		b2mu.Lock()
		b2.kill()
		b2mu.Unlock()
		startB2()
		switch i {
		case 10:
			stack.restart("mosquitto")
		case 15:
			stack.restart("kafka")
		}
	}
	if !b1.running() {
		t.Fatal("the replica that was not killed died")
	}
	t.Logf("faults done after %v", time.Since(start).Round(time.Second))
	err = <-fleetDone
	<-progressDone
	if err != nil {
		t.Fatalf("the fleet's batches were not all acked: %v (%+v)", err, fleet.Stats())
	}
	t.Logf("every batch acked after %v", time.Since(start).Round(time.Second))
	st := fleet.Stats()
	t.Logf("fleet: %d batches published (%d re-sends), %d acked", st.Published, st.Resent, st.Acked)

	// Count independently what Kafka holds.
	counts := map[wire.Identity]int{}
	total := 0
	ends, err := adm.ListEndOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	ends.Each(func(o kadm.ListedOffset) { want += o.Offset })
	starts := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) { starts[o.Partition] = kgo.NewOffset().At(0) })
	cons, err := kgo.NewClient(kgo.SeedBrokers(stack.kafka), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: starts}))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	for int64(total) < want {
		fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
		fs := cons.PollFetches(fctx)
		timedOut := fctx.Err() != nil
		fcancel()
		for _, fe := range fs.Errors() {
			t.Logf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
		}
		if timedOut {
			t.Fatalf("read %d of %d records", total, want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			total++
			id, err := wire.DecodeIdentity(r.Value, wire.Limits{RequireChecksum: true})
			if err != nil {
				t.Errorf("record at %d/%d: %v", r.Partition, r.Offset, err)
				return
			}
			counts[id]++
		})
	}
	pubs := fleet.Publishes()
	missing, extra := 0, 0
	for id, n := range pubs {
		switch c := counts[id]; {
		case c == 0:
			missing++
		case c > n:
			extra++
			if extra < 5 {
				t.Errorf("%v is in Kafka %d times but was published %d times", id, c, n)
			}
		}
	}
	if len(pubs) != vehicles*batches || missing > 0 {
		t.Fatalf("%d of %d batches missing from Kafka", missing, vehicles*batches)
	}
	if extra > 0 {
		t.Fatalf("%d batches duplicated by the bridges", extra)
	}
	t.Logf("Kafka: %d records for %d batches (%d readings); %d duplicates, all from re-sends", total, len(counts), len(counts)*readings, total-len(counts))

	// The replicas settle everything they took.
	for _, p := range []*proc{b1, b2} {
		if err := p.stop(30 * time.Second); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}
