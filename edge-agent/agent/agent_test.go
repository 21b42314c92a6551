package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/gps"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/cli/clitest"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func TestMain(m *testing.M) {
	if os.Getenv(slackChild) != "" {
		slackChildMain() // the child of TestTimerSlackReachesEveryThread
		return
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction(mqtttest.PahoDisconnect))
}

const waitLimit = 20 * time.Second

// acker plays the cloud: it reads every vehicle's telemetry, decodes each
// batch and acks it, as the bridge does once Kafka holds the batch.
type acker struct {
	client mqtt.Client

	mu      sync.Mutex
	batches map[wire.Identity]*wire.Batch
	raw     map[wire.Identity][]byte
	copies  int
	bad     []string
}

func startAcker(t *testing.T, url string) *acker {
	t.Helper()
	a := &acker{batches: map[wire.Identity]*wire.Batch{}, raw: map[wire.Identity][]byte{}}
	a.client = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("acker").SetAutoReconnect(false))
	if tok := a.client.Connect(); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("acker connect: %v", tok.Error())
	}
	t.Cleanup(func() { a.client.Disconnect(250) })
	if tok := a.client.Subscribe(topics.TelemetryFilter, 1, a.onBatch); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("acker subscribe: %v", tok.Error())
	}
	return a
}

func (a *acker) onBatch(_ mqtt.Client, msg mqtt.Message) {
	b, err := wire.Decode(msg.Payload(), wire.Limits{})
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.bad = append(a.bad, fmt.Sprintf("%s: undecodable batch: %v", msg.Topic(), err))
		return
	}
	if topics.Telemetry(b.VehicleID) != msg.Topic() {
		a.bad = append(a.bad, fmt.Sprintf("batch of %s published on %s", b.VehicleID, msg.Topic()))
	}
	a.copies++
	if prev, ok := a.raw[b.Identity]; ok && !bytes.Equal(prev, msg.Payload()) {
		a.bad = append(a.bad, fmt.Sprintf("batch %v re-sent with different bytes", b.Identity))
	}
	a.raw[b.Identity] = msg.Payload()
	a.batches[b.Identity] = b
	data, err := proto.Marshal(&pb.Ack{VehicleId: b.VehicleID, Ranges: []*pb.SeqRange{{Epoch: b.Epoch, First: b.Seq, Last: b.Seq}}})
	if err != nil {
		a.bad = append(a.bad, err.Error())
		return
	}
	a.client.Publish(topics.Ack(b.VehicleID), 1, false, data) // no waiting inside a paho handler
}

// payload is the bytes of a batch as it arrived.
func (a *acker) payload(id wire.Identity) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.raw[id]
}

func (a *acker) snapshot() (map[wire.Identity]*wire.Batch, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[wire.Identity]*wire.Batch, len(a.batches))
	for k, v := range a.batches {
		out[k] = v
	}
	return out, append([]string(nil), a.bad...)
}

// simOf, canOf and gpsOf are the configurations of the source kinds.
func simOf(cfg Config) *sim.SourceConfig { return cfg.Source("sim").(*sim.SourceConfig) }
func canOf(cfg Config) *can.SourceConfig { return cfg.Source("can").(*can.SourceConfig) }
func gpsOf(cfg Config) *gps.Config       { return cfg.Source("gps").(*gps.Config) }

// testConfig is a small fleet simulated as fast as possible, spooling
// under a fresh folder.
func testConfig(t *testing.T, url string) Config {
	cfg := DefaultConfig()
	cfg.Spool.Dir = t.TempDir()
	cfg.MQTT.URL = url
	simOf(cfg).NumVehicles = 3
	simOf(cfg).Seed = 42
	simOf(cfg).Start = "2025-06-02T07:30:00Z"
	simOf(cfg).Speedup = 0
	simOf(cfg).Duration = 30 * time.Second
	cfg.ExitWhenDone = true
	cfg.AckTimeout = 2 * time.Second
	cfg.DrainTimeout = waitLimit
	cfg.Listen = "127.0.0.1:0"
	return cfg
}

func runAgent(t *testing.T, ctx context.Context, cfg Config) error {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Deps{Logger: mqtttest.Logger(t), Registerer: reg, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	select {
	case err := <-errc:
		return err
	case <-time.After(2 * waitLimit):
		t.Fatal("Run did not return")
		return nil
	}
}

func sortReadings(rs []wire.Reading) {
	sort.SliceStable(rs, func(i, j int) bool {
		if rs[i].Signal != rs[j].Signal {
			return rs[i].Signal < rs[j].Signal
		}
		return rs[i].Time < rs[j].Time
	})
}

func sameFloat(a, b float64) bool { return math.Float64bits(a) == math.Float64bits(b) }

func sameReading(a, b wire.Reading) bool {
	return a.Signal == b.Signal && a.Unit == b.Unit && a.Time == b.Time && a.Value.Kind == b.Value.Kind &&
		sameFloat(a.Value.Float, b.Value.Float) && a.Value.Int == b.Value.Int && a.Value.Bool == b.Value.Bool && a.Value.Str == b.Value.Str
}

func sameFix(a, b wire.Fix) bool {
	return a.Time == b.Time && sameFloat(a.Lat, b.Lat) && sameFloat(a.Lon, b.Lon) && sameFloat(a.Alt, b.Alt) &&
		sameFloat(a.Speed, b.Speed) && sameFloat(a.Heading, b.Heading) && sameFloat(a.Accuracy, b.Accuracy)
}

// TestDeliversEveryReadingOnce runs a finite simulation to completion: Run
// returns nil only once the cloud acked everything, and the cloud must have
// received exactly what the simulator generates for the configuration.
func TestDeliversEveryReadingOnce(t *testing.T) {
	broker := mqtttest.StartBroker(t)
	cloud := startAcker(t, broker.URL())
	cfg := testConfig(t, broker.URL())
	if err := runAgent(t, context.Background(), cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, problems := cloud.snapshot()
	for _, p := range problems {
		t.Error(p)
	}

	// Regenerate the simulation, as a test of the cloud side would.
	sc, err := simOf(cfg).Sim()
	if err != nil {
		t.Fatal(err)
	}
	end := sc.Start.Add(simOf(cfg).Duration)
	byVehicle := map[string][]*wire.Batch{}
	for _, b := range got {
		byVehicle[b.VehicleID] = append(byVehicle[b.VehicleID], b)
	}
	if len(byVehicle) != simOf(cfg).NumVehicles {
		t.Fatalf("batches from %d vehicles, want %d", len(byVehicle), simOf(cfg).NumVehicles)
	}
	epochs := map[uint64]bool{}
	for _, v := range sim.NewFleet(sc) {
		var wantReadings []wire.Reading
		var wantFixes []wire.Fix
		for v.Now().Before(end) {
			rs, fix := v.Step()
			wantReadings = append(wantReadings, rs...)
			wantFixes = append(wantFixes, fix)
		}

		batches := byVehicle[v.ID]
		if len(batches) == 0 {
			t.Errorf("%s: no batches", v.ID)
			continue
		}
		sort.Slice(batches, func(i, j int) bool { return batches[i].Seq < batches[j].Seq })
		var gotReadings []wire.Reading
		var gotFixes []wire.Fix
		for i, b := range batches {
			if b.Seq != uint64(i+1) {
				t.Fatalf("%s: seqs %d..%d have a gap before %d", v.ID, batches[0].Seq, batches[len(batches)-1].Seq, b.Seq)
			}
			epochs[b.Epoch] = true
			if b.AgentVersion != Version || b.Decoder != sim.Decoder {
				t.Errorf("%v: agent %q decoder %q, want %q %q", b.Identity, b.AgentVersion, b.Decoder, Version, sim.Decoder)
			}
			first := int64(math.MaxInt64)
			last := int64(math.MinInt64)
			for _, r := range b.Readings {
				first, last = min(first, r.Time), max(last, r.Time)
			}
			for _, f := range b.Fixes {
				first, last = min(first, f.Time), max(last, f.Time)
			}
			if b.BaseTime != first {
				t.Errorf("%v: base time %d, want its earliest reading %d", b.Identity, b.BaseTime, first)
			}
			if time.Duration(last-first) > cfg.BatchMaxAge+time.Second {
				t.Errorf("%v spans %v; batches close at %v", b.Identity, time.Duration(last-first), cfg.BatchMaxAge)
			}
			gotReadings = append(gotReadings, b.Readings...)
			gotFixes = append(gotFixes, b.Fixes...)
		}
		sortReadings(wantReadings)
		sortReadings(gotReadings)
		if len(gotReadings) != len(wantReadings) {
			t.Errorf("%s: %d readings arrived, the simulation made %d", v.ID, len(gotReadings), len(wantReadings))
		} else {
			for i := range wantReadings {
				if !sameReading(gotReadings[i], wantReadings[i]) {
					t.Errorf("%s: reading %+v arrived as %+v", v.ID, wantReadings[i], gotReadings[i])
					break
				}
			}
		}
		if len(gotFixes) != len(wantFixes) {
			t.Errorf("%s: %d fixes arrived, the simulation made %d", v.ID, len(gotFixes), len(wantFixes))
		} else {
			for i := range wantFixes {
				if !sameFix(gotFixes[i], wantFixes[i]) {
					t.Errorf("%s: fix %d %+v arrived as %+v", v.ID, i, wantFixes[i], gotFixes[i])
					break
				}
			}
		}
	}
	if len(epochs) != simOf(cfg).NumVehicles {
		t.Errorf("epochs %v; want one per vehicle (each has its own spool)", epochs)
	}
	for e := range epochs {
		if e == 0 || e > math.MaxInt64 {
			t.Errorf("epoch %d: want a positive signed 64-bit number", e)
		}
	}
}

// TestFailsWhenTheCloudNeverAcks: with nobody acking, an agent told to exit
// when done gives up after the drain timeout and says how much is unacked.
func TestFailsWhenTheCloudNeverAcks(t *testing.T) {
	broker := mqtttest.StartBroker(t)
	cfg := testConfig(t, broker.URL())
	simOf(cfg).NumVehicles = 1
	simOf(cfg).Duration = 5 * time.Second
	cfg.DrainTimeout = 500 * time.Millisecond
	err := runAgent(t, context.Background(), cfg)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not acknowledged") {
		t.Fatalf("Run = %v; want an error saying batches were not acknowledged", err)
	}
	// The count it gives is what stays spooled: five seconds of readings,
	// one batch a second while connected with little backlog, two (fixes
	// and status apart from the signals) otherwise.
	sc := cfg.Spool
	sc.Dir = filepath.Join(cfg.Spool.Dir, "sim-0001")
	sp, err2 := spool.Open(sc, spool.Deps{})
	if err2 != nil {
		t.Fatal(err2)
	}
	defer sp.Close()
	n := sp.Stats().Records
	if n < 5 || n > 10 || !strings.Contains(err.Error(), fmt.Sprintf("%d batches", n)) {
		t.Errorf("Run = %v; the spool holds %d batches (want 5 to 10), and the error should count them", err, n)
	}
}

// TestStopsOnCancel: an endless simulation stops when its context is
// cancelled, and loses nothing: every batch it made is in the cloud or
// still spooled for the next run.
func TestStopsOnCancel(t *testing.T) {
	broker := mqtttest.StartBroker(t)
	cloud := startAcker(t, broker.URL())
	cfg := testConfig(t, broker.URL())
	simOf(cfg).Duration = 0
	cfg.ExitWhenDone = false
	simOf(cfg).Speedup = 100
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if got, _ := cloud.snapshot(); len(got) >= 6 {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	if err := runAgent(t, ctx, cfg); err != nil {
		t.Fatalf("Run after cancel = %v, want nil (every batch acked)", err)
	}
	got, problems := cloud.snapshot()
	for _, p := range problems {
		t.Error(p)
	}
	// The stop does not wait for acks (that is --exit-when-done): what the
	// cloud did not get yet stays spooled. A batch made before the link
	// was up may be behind newer ones, so the cloud's seqs need not be
	// 1..n; together with the spool they must be.
	dirs, err := os.ReadDir(cfg.Spool.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != simOf(cfg).NumVehicles {
		t.Fatalf("%d spools, want one per vehicle (%d)", len(dirs), simOf(cfg).NumVehicles)
	}
	for _, d := range dirs {
		vehicle := d.Name()
		sp, err := spool.Open(spool.Config{Dir: filepath.Join(cfg.Spool.Dir, vehicle)}, spool.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		pending := map[uint64]bool{}
		for rec, err := range sp.Pending(0) {
			if err != nil {
				t.Fatalf("%s: spool: %v", vehicle, err)
			}
			pending[rec.Seq] = true
		}
		st := sp.Stats()
		sp.Close()
		inCloud := 0
		for q := uint64(1); q < st.NextSeq; q++ {
			_, in := got[wire.Identity{VehicleID: vehicle, Epoch: st.Epoch, Seq: q}]
			if in {
				inCloud++
			}
			if !in && !pending[q] {
				t.Errorf("%s: batch %d was made, freed, and is not in the cloud", vehicle, q)
			}
		}
		t.Logf("%s: %d batches made, %d in the cloud, %d still spooled", vehicle, st.NextSeq-1, inCloud, len(pending))
	}
}

// agentProgram is how the edge-agent binary parses its configuration.
var agentProgram = cli.Program{Name: "edge-agent", EnvPrefix: "FLEET_AGENT"}

func configDir() string { return filepath.Join(testenv.RepoRoot(), "testdata", "config", "edge-agent") }

// TestConfigFiles parses every testdata/config/edge-agent file as
// `edge-agent --config FILE` does.
func TestConfigFiles(t *testing.T) {
	clitest.ConfigFiles(t, agentProgram, configDir(), func() *Config { return &Config{} },
		func(t *testing.T, cfg *Config) {
			if _, fleet := cfg.fleet(); !fleet {
				return
			}
			if _, err := simOf(*cfg).Sim(); err != nil {
				t.Fatalf("good config has no simulator configuration: %v", err)
			}
		}, 2, 6)
}

// TestConfigFileValues checks a file's settings reach the simulator, and
// that flags override the file.
func TestConfigFileValues(t *testing.T) {
	var cfg Config
	file := filepath.Join(configDir(), "full.good.yaml")
	if _, err := cli.Parse(agentProgram, &cfg, []string{"--config", file, "--sim-vehicles", "7"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if cfg.MQTT.URL != "ssl://mqtt.fleet.example:8883" || simOf(cfg).Speedup != 10 || simOf(cfg).Duration != 10*time.Minute ||
		!cfg.ExitWhenDone || cfg.BatchMaxAge != 5*time.Second || cfg.BatchMaxReadings != 2000 || cfg.TickNanos != 1_000_000 ||
		cfg.AckTimeout != 30*time.Second || cfg.MQTT.ConnectTimeout != 25*time.Second || cfg.Listen != "" || cfg.DrainTimeout != 5*time.Minute {
		t.Errorf("config %+v", cfg)
	}
	sc, err := simOf(cfg).Sim()
	if err != nil {
		t.Fatal(err)
	}
	want := sim.DefaultConfig()
	want.Seed, want.Vehicles, want.IMUHz, want.IDPrefix = 99, 7, 25, "taxi-"
	want.Start = time.Date(2025, 1, 15, 6, 0, 0, 0, time.UTC)
	want.CenterLat, want.CenterLon = 52.52, 13.405
	if !sc.Start.Equal(want.Start) {
		t.Errorf("sim start %v, want %v", sc.Start, want.Start)
	}
	sc.Start = want.Start
	if sc != want {
		t.Errorf("sim config\n got %+v\nwant %+v (the flag's 7 vehicles win over the file)", sc, want)
	}
}

// TestBinaryStaysSmall: the agent ships to small boards and must not link
// Kafka, S3 or Parquet code (ARCHITECTURE.md, "Components").
func TestBinaryStaysSmall(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, statErr := os.Stat(goTool); statErr != nil {
			t.Fatalf("no go command to list the dependencies with: %v", err)
		}
	}
	cmd := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", "github.com/fleetpipe/fleetpipe/edge-agent")
	cmd.Dir = testenv.RepoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !contains(deps, "github.com/fleetpipe/fleetpipe/edge-agent/agent") {
		t.Fatalf("go list gave an implausible dependency list: %v", deps)
	}
	forbidden := []string{
		"github.com/twmb/franz-go", "github.com/IBM/sarama", "github.com/Shopify/sarama", "github.com/segmentio/kafka-go",
		"github.com/confluentinc/confluent-kafka-go", "github.com/aws/", "github.com/minio/", "github.com/johannesboyne/gofakes3",
		"github.com/parquet-go/", "github.com/xitongsys/parquet-go", "github.com/apache/arrow",
		"github.com/fleetpipe/fleetpipe/internal/kafkaio", "github.com/fleetpipe/fleetpipe/internal/objstore",
		"github.com/fleetpipe/fleetpipe/internal/s3local", "github.com/fleetpipe/fleetpipe/consumers/",
		"github.com/fleetpipe/fleetpipe/bridge/",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("edge-agent depends on %s (matches %q); Kafka, S3 and Parquet code must stay out of the agent", d, f)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestShippedExampleConfig parses the example config that ships beside the
// systemd unit: every key must be a real flag and every value valid. Only
// the paths that exist on a board, not here, are pointed at test files.
func TestShippedExampleConfig(t *testing.T) {
	example := filepath.Join(testenv.RepoRoot(), "edge-agent", "deploy", "agent.example.yaml")
	dbc := filepath.Join(testenv.RepoRoot(), "testdata", "can", "test.dbc")
	var cfg Config
	_, err := cli.Parse(agentProgram, &cfg, []string{"--config", example,
		"--mqtt-ca-file=", "--mqtt-cert-file=", "--mqtt-key-file=", "--can-dbc", dbc}, io.Discard)
	if err != nil {
		t.Fatalf("the shipped example config is rejected: %v", err)
	}
	if cfg.VehicleID != "car-0001" || cfg.Spool.Fsync != "always" || cfg.BatchMaxAge != time.Second ||
		canOf(cfg).Interface != "can0" || gpsOf(cfg).Path != "/dev/ttyUSB0" || cfg.BacklogRate != 20 {
		t.Errorf("example config read as %+v", cfg)
	}
}

func TestProcs(t *testing.T) {
	car := DefaultConfig()
	car.Sources = cli.StringList{"gps"}
	if got := car.Procs(); got != 1 {
		t.Errorf("one car: GOMAXPROCS %d, want 1", got)
	}
	fleet := DefaultConfig()
	simOf(fleet).NumVehicles = 50
	if got, want := fleet.Procs(), min(50, runtime.NumCPU()); got != want {
		t.Errorf("50 simulated cars: GOMAXPROCS %d, want %d", got, want)
	}
	car.MaxProcs = 3
	if got := car.Procs(); got != 3 {
		t.Errorf("--max-procs 3: GOMAXPROCS %d", got)
	}
}
