package livelocation

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// car is a simulated vehicle near Berlin's Alexanderplatz.
type car struct {
	id       string
	lat, lon float64
	status   string
}

// encodeBatch encodes one batch of a vehicle: a fix and a status, at ts.
func encodeBatch(t *testing.T, c car, seq uint64, ts time.Time) []byte {
	t.Helper()
	n := ts.UnixNano()
	data, err := wire.Encode(&wire.Batch{
		Identity: wire.Identity{VehicleID: c.id, Epoch: 42, Seq: seq},
		BaseTime: n,
		Readings: []wire.Reading{{Signal: "status", Time: n, Value: wire.String(c.status)},
			{Signal: "speed", Unit: "km/h", Time: n, Value: wire.Float(30)}},
		Fixes: []wire.Fix{{Time: n, Lat: c.lat, Lon: c.lon, Alt: 35, Speed: 8.3, Heading: 90, Accuracy: math.NaN()}},
	}, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func produce(t *testing.T, cl *kgo.Client, recs ...*kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func telemetry(key string, value []byte) *kgo.Record {
	return &kgo.Record{Topic: topics.KafkaTelemetry, Key: []byte(key), Value: value}
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getJSON(url string, into any) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if into == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(into)
}

type nearbyAnswer struct {
	Vehicles []struct {
		ID        string   `json:"id"`
		Lat       float64  `json:"lat"`
		Lon       float64  `json:"lon"`
		DistanceM float64  `json:"distance_m"`
		Heading   *float64 `json:"heading"`
		Speed     *float64 `json:"speed"`
		Status    string   `json:"status"`
		UpdatedAt string   `json:"updated_at"`
	} `json:"vehicles"`
}

// checkNearby asks nearby around Alexanderplatz and compares with want.
func checkNearby(base string, want map[string]car) error {
	var got nearbyAnswer
	if code, err := getJSON(base+"/v1/vehicles/nearby?lat=52.5219&lon=13.4132&radius_m=5000&limit=100", &got); err != nil || code != 200 {
		return fmt.Errorf("nearby: %d %v", code, err)
	}
	if len(got.Vehicles) != len(want) {
		return fmt.Errorf("nearby found %d vehicles, want %d", len(got.Vehicles), len(want))
	}
	prev := -1.0
	for _, v := range got.Vehicles {
		w, ok := want[v.ID]
		if !ok {
			return fmt.Errorf("unexpected vehicle %s", v.ID)
		}
		if math.Abs(v.Lat-w.lat) > 1e-6 || math.Abs(v.Lon-w.lon) > 1e-6 || v.Status != w.status {
			return fmt.Errorf("%s at %v,%v %q; want %v,%v %q", v.ID, v.Lat, v.Lon, v.Status, w.lat, w.lon, w.status)
		}
		if v.DistanceM < prev {
			return fmt.Errorf("not nearest first: %v after %v", v.DistanceM, prev)
		}
		prev = v.DistanceM
	}
	return nil
}

func metric(base, series string) (string, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %s in /metrics", series)
}

func startService(t *testing.T, cfg Config) (*Service, func()) {
	t.Helper()
	svc, err := New(cfg, Deps{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
		http.DefaultClient.CloseIdleConnections()
	}
	t.Cleanup(stop)
	return svc, stop
}

func TestEndToEndThroughKafka(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, topics.KafkaTelemetry))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()

	// Five cars drive north-east for three batches each; the batches before
	// the lookback window must be ignored.
	now := time.Now()
	want := map[string]car{}
	ancient := telemetry("ancient", encodeBatch(t, car{"ancient", 52.52, 13.41, "available"}, 1, now.Add(-time.Hour)))
	ancient.Timestamp = now.Add(-time.Hour) // the lookback goes by the Kafka record time
	produce(t, prod, ancient)
	for i := range 5 {
		c := car{id: fmt.Sprintf("taxi-%d", i), lat: 52.5200 + float64(i)*0.001, lon: 13.4050, status: "available"}
		for seq := range uint64(3) {
			c.lat += 0.0002
			c.lon += 0.0003
			if seq == 2 && i%2 == 1 {
				c.status = "busy"
			}
			produce(t, prod, telemetry(c.id, encodeBatch(t, c, seq, now.Add(time.Duration(int(seq)-10)*time.Second))))
		}
		want[c.id] = c
	}
	// A late, replayed batch of taxi-0 from before its newest, and garbage.
	produce(t, prod, telemetry("taxi-0", encodeBatch(t, car{"taxi-0", 52.40, 13.30, "offline"}, 0, now.Add(-30*time.Second))),
		telemetry("junk", []byte("definitely not a batch")))

	cfg := DefaultConfig()
	cfg.Kafka.Brokers = brokers
	cfg.Listen = "127.0.0.1:0"
	cfg.PublishInterval = 50 * time.Millisecond
	cfg.LocationPartitions = 2
	svc, stop := startService(t, cfg)
	base := svc.URL()

	eventually(t, "ready", func() error {
		if code, err := getJSON(base+"/readyz", nil); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %v", code, err)
		}
		return nil
	})
	// Ready means caught up: the state is complete without waiting more.
	if err := checkNearby(base, want); err != nil {
		t.Fatalf("after ready: %v", err)
	}
	if code, _ := getJSON(base+"/v1/vehicles/ancient", nil); code != 404 {
		t.Errorf("a vehicle only heard of before the lookback: %d, want 404", code)
	}
	if v, err := metric(base, `fleet_live_records_total{result="undecodable",source="telemetry"}`); err != nil || v != "1" {
		t.Errorf("undecodable records = %q, %v; want 1", v, err)
	}
	// Of the vehicles' batches only the late one of taxi-0 is stale. The
	// replica reads its own publications back from the location topic,
	// and those do not count as the vehicles' stale fixes.
	eventually(t, "positions read back from the location topic", func() error {
		v, err := metric(base, `fleet_live_records_total{result="ok",source="location"}`)
		if n, _ := strconv.Atoi(v); err != nil || n < 5 {
			return fmt.Errorf("%q, %v", v, err)
		}
		return nil
	})
	if v, err := metric(base, `fleet_live_fix_rejected_stale_total{source="telemetry"}`); err != nil || v != "1" {
		t.Errorf("stale fixes from telemetry = %q, %v; want 1", v, err)
	}
	// The store's numbers: vehicles by status and freshness, updates, and
	// the query latency histogram once a query ran.
	if v, err := metric(base, `fleet_live_vehicles{freshness="fresh",status="busy"}`); err != nil || v != "2" {
		t.Errorf("fresh busy vehicles = %q, %v; want 2", v, err)
	}
	if v, err := metric(base, `fleet_live_vehicles{freshness="fresh",status="available"}`); err != nil || v != "3" {
		t.Errorf("fresh available vehicles = %q, %v; want 3", v, err)
	}
	if v, err := metric(base, `fleet_live_updates_total`); err != nil || v == "0" {
		t.Errorf("updates = %q, %v", v, err)
	}
	if v, err := metric(base, `fleet_live_query_seconds_count{query="nearby"}`); err != nil || v == "0" {
		t.Errorf("nearby query latencies observed = %q, %v", v, err)
	}
	for _, path := range []string{"/healthz", "/", "/v1/vehicles", "/openapi.json", "/v1/stats", "/v1/health"} {
		if code, err := getJSON(base+path, nil); err != nil || code != 200 {
			t.Errorf("GET %s = %d %v", path, code, err)
		}
	}

	// Live: a change shows in nearby and on the event stream.
	ctx, cancelStream := context.WithCancel(context.Background())
	defer cancelStream()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/vehicles/stream?bbox=13.3,52.4,13.5,52.6", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	moved := want["taxi-3"]
	moved.lat, moved.lon, moved.status = 52.5300, 13.4100, "offline"
	want["taxi-3"] = moved
	produce(t, prod, telemetry(moved.id, encodeBatch(t, moved, 3, now)))
	eventually(t, "one stream client", func() error {
		if v, err := metric(base, `fleet_live_stream_clients{mode="vehicles"}`); err != nil || v != "1" {
			return fmt.Errorf("stream clients = %q, %v", v, err)
		}
		return nil
	})
	eventually(t, "nearby shows the move", func() error { return checkNearby(base, want) })
	deadline := time.After(10 * time.Second)
	for found := false; !found; {
		select {
		case l := <-lines:
			found = strings.HasPrefix(l, "data: ") && strings.Contains(l, `"id":"taxi-3"`) && strings.Contains(l, `"offline"`)
		case <-deadline:
			t.Fatal("no stream event for taxi-3's move")
		}
	}

	// Every vehicle's latest position reaches the compacted location topic.
	adm := kadm.NewClient(prod)
	eventually(t, "location topic compacted", func() error {
		cfgs, err := adm.DescribeTopicConfigs(context.Background(), topics.KafkaLocation)
		if err != nil {
			return err
		}
		c, err := cfgs.On(topics.KafkaLocation, nil)
		if err != nil {
			return err
		}
		for _, kv := range c.Configs {
			if kv.Key == "cleanup.policy" && kv.MaybeValue() == "compact" {
				return nil
			}
		}
		return fmt.Errorf("configs %+v", c.Configs)
	})
	readLocations(t, brokers, want)

	// Shutdown ends the open stream and Run returns nil.
	stop()
	for range lines {
	}

	// A second instance that reads no telemetry at all (a tiny lookback)
	// gets the fleet from the location topic alone.
	cfg2 := cfg
	cfg2.Lookback = time.Millisecond
	cfg2.Kafka.ClientID = "live-location-2"
	svc2, _ := startService(t, cfg2)
	eventually(t, "bootstrapped instance ready", func() error {
		if !svc2.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	if err := checkNearby(svc2.URL(), want); err != nil {
		t.Fatalf("after bootstrap: %v", err)
	}
	if v, err := metric(svc2.URL(), `fleet_live_records_total{result="ok",source="telemetry"}`); err == nil {
		t.Fatalf("the bootstrap-only instance read %s telemetry records", v)
	}
	if v, err := metric(svc2.URL(), `fleet_live_records_total{result="ok",source="location"}`); err != nil || v == "0" {
		t.Fatalf("location records read: %q %v", v, err)
	}
}

// readLocations consumes the location topic until it holds want's latest
// position of every vehicle.
func readLocations(t *testing.T, brokers []string, want map[string]car) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topics.KafkaLocation),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	latest := map[string]*pb.Position{}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("location topic holds %d of %d latest positions", len(latest), len(want))
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var p pb.Position
			if err := proto.Unmarshal(r.Value, &p); err != nil {
				t.Fatalf("location record: %v", err)
			}
			if string(r.Key) != p.GetVehicleId() {
				t.Fatalf("key %q for vehicle %q", r.Key, p.GetVehicleId())
			}
			if w, ok := want[p.GetVehicleId()]; ok && math.Abs(p.GetLat()-w.lat) < 1e-6 && math.Abs(p.GetLon()-w.lon) < 1e-6 && p.GetStatus() == w.status {
				if !math.IsNaN(p.GetAccuracyM()) || p.GetAltM() != 35 {
					t.Fatalf("position %v: want alt 35 and NaN accuracy", &p)
				}
				latest[p.GetVehicleId()] = &p
			}
		})
		if len(latest) == len(want) {
			return
		}
	}
}

func TestRunWithoutKafkaStaysUnreadyAndStops(t *testing.T) {
	cfg := Config{Listen: "127.0.0.1:0"}
	cfg.Kafka.Brokers = []string{"127.0.0.1:1"} // nothing listens there
	svc, stop := startService(t, cfg)
	var body struct {
		Ready   bool              `json:"ready"`
		Failing map[string]string `json:"failing"`
	}
	if code, err := getJSON(svc.URL()+"/readyz", &body); err != nil || code != 503 || body.Failing["telemetry-catch-up"] == "" {
		t.Fatalf("readyz = %d %+v %v", code, body, err)
	}
	if code, err := getJSON(svc.URL()+"/healthz", nil); err != nil || code != 200 {
		t.Fatalf("healthz = %d %v", code, err)
	}
	stop()
}

func TestNewRejectsBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StaleAfter = -time.Second
	if _, err := New(cfg, Deps{}); err == nil || !strings.Contains(err.Error(), "--stale-after") {
		t.Fatalf("New = %v, want an error naming --stale-after", err)
	}
}
