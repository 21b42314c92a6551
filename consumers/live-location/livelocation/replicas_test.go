package livelocation

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// replicaSet is what one run of the replicas test shares.
type replicaSet struct {
	t        *testing.T
	brokers  []string
	cfg      Config
	prod     *kgo.Client
	replicas []*Service
}

func (rs *replicaSet) start(name string) *Service {
	cfg := rs.cfg
	cfg.Kafka.ClientID = name
	svc, _ := startService(rs.t, cfg)
	rs.replicas = append(rs.replicas, svc)
	return svc
}

// metricSum sums a series over the replicas (absent counts as 0).
func metricSum(svcs []*Service, series string) float64 {
	total := 0.0
	for _, s := range svcs {
		if v, err := metric(s.URL(), series); err == nil {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total
}

// fleetView is what a replica answers for the whole fleet.
type fleetView struct {
	Vehicles []vehicleJSON `json:"vehicles"`
	Total    int           `json:"total"`
}

type vehicleJSON struct {
	ID     string   `json:"id"`
	Lat    *float64 `json:"lat"`
	Lon    *float64 `json:"lon"`
	Status string   `json:"status"`
}

func (rs *replicaSet) view(s *Service) (fleetView, error) {
	var v fleetView
	code, err := getJSON(s.URL()+"/v1/vehicles?limit=10000", &v)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /v1/vehicles: %d", code)
	}
	return v, err
}

func deref(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

// agree waits until every replica holds exactly want.
func (rs *replicaSet) agree(what string, want map[string]car) {
	rs.t.Helper()
	eventually(rs.t, what, func() error {
		for i, s := range rs.replicas {
			v, err := rs.view(s)
			if err != nil {
				return err
			}
			if len(v.Vehicles) != len(want) {
				return fmt.Errorf("replica %d holds %d vehicles, want %d", i, len(v.Vehicles), len(want))
			}
			for _, got := range v.Vehicles {
				w, ok := want[got.ID]
				// Positions cross the wire as 1e-7 degree steps.
				if !ok || got.Lat == nil || math.Abs(*got.Lat-w.lat) > 1e-7 || math.Abs(*got.Lon-w.lon) > 1e-7 || got.Status != w.status {
					return fmt.Errorf("replica %d: %s at %v,%v %q, want %+v", i, got.ID, deref(got.Lat), deref(got.Lon), got.Status, w)
				}
			}
		}
		// Nearby answers the same everywhere too.
		var first nearbyAnswer
		for i, s := range rs.replicas {
			var got nearbyAnswer
			if code, err := getJSON(s.URL()+"/v1/vehicles/nearby?lat=52.52&lon=13.40&radius_m=20000&limit=15&status=available", &got); err != nil || code != 200 {
				return fmt.Errorf("nearby: %d %v", code, err)
			}
			if i == 0 {
				first = got
			} else if !reflect.DeepEqual(got, first) {
				return fmt.Errorf("replica %d answers nearby %+v, replica 0 %+v", i, got, first)
			}
		}
		return nil
	})
}

// locationRecords reads the location topic from its start to its end and
// counts the positions and tombstones per vehicle.
func (rs *replicaSet) locationRecords() (positions, tombstones map[string]int) {
	rs.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(rs.prod)
	ends, err := adm.ListEndOffsets(ctx, rs.cfg.LocationTopic)
	if err != nil {
		rs.t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(rs.brokers...), kgo.ConsumeTopics(rs.cfg.LocationTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		rs.t.Fatal(err)
	}
	defer cl.Close()
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	positions, tombstones = map[string]int{}, map[string]int{}
	for len(left) > 0 {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			rs.t.Fatalf("location topic not read to its end: %v", left)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			if r.Value == nil {
				tombstones[string(r.Key)]++
			} else {
				var p pb.Position
				if err := proto.Unmarshal(r.Value, &p); err != nil || p.GetVehicleId() != string(r.Key) {
					rs.t.Fatalf("location record %q: %v", r.Key, err)
				}
				positions[string(r.Key)]++
			}
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return positions, tombstones
}

// publishedExactly waits until the location topic holds want positions per
// vehicle, then checks, after several more publish intervals, that no more
// came: each change published once, by one replica.
func (rs *replicaSet) publishedExactly(want map[string]int) {
	rs.t.Helper()
	total := 0
	for _, n := range want {
		total += n
	}
	eventually(rs.t, "positions published", func() error {
		if got := metricSum(rs.replicas, `fleet_live_location_published_total{kind="position",result="ok"}`); got < float64(total) {
			return fmt.Errorf("%v positions published, want %d", got, total)
		}
		return nil
	})
	time.Sleep(10 * rs.cfg.PublishInterval) // a second publisher would have spoken by now
	positions, _ := rs.locationRecords()
	if !reflect.DeepEqual(positions, want) {
		rs.t.Fatalf("positions per vehicle in the location topic:\n%v\nwant\n%v", positions, want)
	}
}

// send produces a telemetry record to the run's telemetry topic.
func (rs *replicaSet) send(r *kgo.Record) {
	rs.t.Helper()
	r.Topic = rs.cfg.Topic
	produce(rs.t, rs.prod, r)
}

func (rs *replicaSet) ownedSum() int {
	return int(metricSum(rs.replicas, "fleet_live_owned_partitions"))
}

// TestReplicasShareTheFleet runs replicas in one consumer group on kfake
// and on Apache Kafka: each change is published to the location topic
// once, by the owner of the vehicle's partition; every replica answers the
// same for the whole fleet; a third replica becomes ready from the location
// topic without reading telemetry; a vehicle not heard from for the TTL is
// evicted everywhere and tombstoned once.
func TestReplicasShareTheFleet(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, brokers []string) {
		run := fmt.Sprintf("replicas-%d-%d", time.Now().UnixNano(), rand.Uint32())
		rs := &replicaSet{t: t, brokers: brokers}
		rs.cfg = DefaultConfig()
		rs.cfg.Kafka.Brokers = brokers
		rs.cfg.Listen = "127.0.0.1:0"
		rs.cfg.Topic = run + ".telemetry"
		rs.cfg.LocationTopic = run + ".location"
		rs.cfg.CatalogTopic = run + ".catalog"
		rs.cfg.Group = run
		rs.cfg.LocationPartitions = 3
		rs.cfg.PublishInterval = 100 * time.Millisecond
		rs.cfg.SweepInterval = 100 * time.Millisecond
		rs.cfg.StaleAfter = 10 * time.Second
		rs.cfg.TTL = 30 * time.Second
		var err error
		if rs.prod, err = kgo.NewClient(kgo.SeedBrokers(brokers...)); err != nil {
			t.Fatal(err)
		}
		defer rs.prod.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := kadm.NewClient(rs.prod).CreateTopic(ctx, 4, 1, nil, rs.cfg.Topic); err != nil {
			t.Fatal(err)
		}

		a, b := rs.start("replica-a"), rs.start("replica-b")
		eventually(t, "both ready, the partitions split", func() error {
			if !a.Ready() || !b.Ready() {
				return fmt.Errorf("ready: %v %v", a.Ready(), b.Ready())
			}
			na, nb := int(metricSum([]*Service{a}, "fleet_live_owned_partitions")), int(metricSum([]*Service{b}, "fleet_live_owned_partitions"))
			if na+nb != 4 || na == 0 || nb == 0 {
				return fmt.Errorf("owned partitions %d + %d", na, nb)
			}
			return nil
		})

		// Forty cars, one change each. Their fixes are three minutes ahead
		// (within the allowed clock skew), so they outlive the test's short
		// TTL however slow the machine.
		ahead := time.Now().Add(3 * time.Minute)
		want := map[string]car{}
		published := map[string]int{}
		for i := range 40 {
			c := car{id: fmt.Sprintf("cab-%02d", i), lat: 52.50 + float64(i%8)*0.005, lon: 13.38 + float64(i/8)*0.008, status: []string{"available", "busy"}[i%2]}
			want[c.id] = c
			published[c.id] = 1
			rs.send(telemetry(c.id, encodeBatch(t, c, 1, ahead)))
		}
		rs.agree("two replicas agree", want)
		rs.publishedExactly(published)

		// Ten of them move: each move is published once more.
		for i := range 10 {
			c := want[fmt.Sprintf("cab-%02d", i*4)]
			c.lat += 0.001
			c.status = "offline"
			want[c.id] = c
			published[c.id]++
			rs.send(telemetry(c.id, encodeBatch(t, c, 2, ahead.Add(time.Second))))
		}
		rs.agree("two replicas agree after the moves", want)
		rs.publishedExactly(published)

		// A third replica: ready from the location topic, not from telemetry.
		c := rs.start("replica-c")
		eventually(t, "the third replica ready", func() error {
			if !c.Ready() {
				return fmt.Errorf("not ready")
			}
			return nil
		})
		if v, err := metric(c.URL(), `fleet_live_records_total{result="ok",source="location"}`); err != nil || v == "0" {
			t.Fatalf("the third replica read location records %q %v", v, err)
		}
		rs.agree("three replicas agree", want)
		eventually(t, "the partitions split three ways", func() error {
			if n := rs.ownedSum(); n != 4 {
				return fmt.Errorf("owned partitions sum to %d", n)
			}
			return nil
		})
		if got := metricSum([]*Service{c}, `fleet_live_records_total{result="ok",source="telemetry"}`); got != 0 {
			t.Fatalf("the third replica read %v telemetry records; the owners committed before handing over", got)
		}

		// Changes after the rebalance are still published once.
		for i := range 6 {
			cc := want[fmt.Sprintf("cab-%02d", i*6+1)]
			cc.lon += 0.002
			want[cc.id] = cc
			published[cc.id]++
			rs.send(telemetry(cc.id, encodeBatch(t, cc, 3, ahead.Add(2*time.Second))))
		}
		rs.agree("three replicas agree after the rebalance", want)
		rs.publishedExactly(published)

		// A car last heard from almost a TTL ago is evicted everywhere and
		// tombstoned once, by its owner.
		ghost := car{id: "ghost", lat: 52.51, lon: 13.39, status: "available"}
		// It stays 8 s before its TTL runs out: long enough for the owner to
		// publish it and replica a to read it back.
		rs.send(telemetry(ghost.id, encodeBatch(t, ghost, 1, time.Now().Add(-rs.cfg.TTL+8*time.Second))))
		eventually(t, "the ghost seen", func() error {
			if code, _ := getJSON(a.URL()+"/v1/vehicles/ghost", nil); code != 200 {
				return fmt.Errorf("ghost: %d", code)
			}
			return nil
		})
		eventually(t, "the ghost evicted everywhere", func() error {
			for i, s := range rs.replicas {
				if code, _ := getJSON(s.URL()+"/v1/vehicles/ghost", nil); code != 404 {
					return fmt.Errorf("replica %d still has the ghost (%d)", i, code)
				}
			}
			return nil
		})
		eventually(t, "the ghost tombstoned", func() error {
			_, tombs := rs.locationRecords()
			if tombs["ghost"] != 1 || len(tombs) != 1 {
				return fmt.Errorf("tombstones %v, want one for the ghost", tombs)
			}
			return nil
		})
		rs.agree("the fleet without the ghost", want)
	})
}
