package catalogstore_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// catalogTopic creates a fresh compacted catalog topic on brokers.
func catalogTopic(t *testing.T, seeds []string) string {
	t.Helper()
	topic := fmt.Sprintf("catalog-test-%d", time.Now().UnixNano())
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	compact := "compact"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafkaio.EnsureTopics(ctx, cl, kafkaio.TopicSpec{Name: topic, Partitions: 3, Replication: 1,
		Configs: map[string]*string{"cleanup.policy": &compact}}); err != nil {
		t.Fatal(err)
	}
	return topic
}

// newStore is a store over topic on seeds.
func newStore(t *testing.T, seeds []string, topic string) *catalogstore.Store {
	t.Helper()
	st, err := catalogstore.New(kafkaio.Config{Brokers: seeds, ClientID: "catalogstore-test"}, topic, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func catalog(t *testing.T, names ...string) *wire.Catalog {
	t.Helper()
	var specs []wire.SignalSpec
	for _, n := range names {
		specs = append(specs, wire.SignalSpec{Name: n, Unit: "V", Kind: wire.KindDouble, Scale: 0.5})
	}
	c, err := wire.NewCatalog(specs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func produce(t *testing.T, seeds []string, topic string, key string, value []byte) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(key), Value: value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func batchWith(t *testing.T, cat *wire.Catalog, signal string) []byte {
	t.Helper()
	const t0 = 1_700_000_000_000_000_000
	b := &wire.Batch{Identity: wire.Identity{VehicleID: "veh-1", Epoch: 1, Seq: 1}, BaseTime: t0}
	for i := int64(0); i < 5; i++ {
		b.Readings = append(b.Readings, wire.Reading{Signal: signal, Unit: "V", Time: t0 + i*1e6,
			Value: wire.Float(wire.Physical(20+i, 0.5, 0)), Scale: 0.5, Raw: 20 + i})
	}
	data, err := wire.Encode(b, wire.EncodeOptions{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestStoreResolvesRegisteredCatalogs(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, seeds []string) {
		topic := catalogTopic(t, seeds)
		st := newStore(t, seeds, topic)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()

		a, b := catalog(t, "a.volts"), catalog(t, "b.volts")
		// An unreadable record and one filed under the wrong key are
		// skipped, not fatal.
		produce(t, seeds, topic, "00", []byte("not a catalog"))
		produce(t, seeds, topic, hex.EncodeToString(b.ID()), a.Bytes())
		produce(t, seeds, topic, hex.EncodeToString(a.ID()), a.Bytes())

		got, err := st.Decode(ctx, batchWith(t, a, "a.volts"), wire.Limits{})
		if err != nil {
			t.Fatalf("batch referring to a registered catalog: %v", err)
		}
		if len(got.Readings) != 5 || got.Readings[4].Value.Float != 12 || got.Readings[0].Signal != "a.volts" {
			t.Fatalf("decoded %+v", got.Readings)
		}
		if st.Len() != 1 {
			t.Fatalf("store holds %d catalogs, want 1 (the bad records skipped)", st.Len())
		}

		// b is not registered: the store catches up, then says so.
		if _, err := st.Decode(ctx, batchWith(t, b, "b.volts"), wire.Limits{}); !errors.Is(err, wire.ErrUnknownCatalog) {
			t.Fatalf("batch referring to an unregistered catalog: %v, want ErrUnknownCatalog", err)
		}
		// Registered later (a vehicle publishes it, the bridge stores
		// it): the next batch finds it.
		produce(t, seeds, topic, hex.EncodeToString(b.ID()), b.Bytes())
		if _, err := st.Decode(ctx, batchWith(t, b, "b.volts"), wire.Limits{}); err != nil {
			t.Fatalf("after registration: %v", err)
		}

		// A second store (another consumer replica) reads them all.
		st2 := newStore(t, seeds, topic)
		if err := st2.CatchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if st2.Len() != 2 {
			t.Fatalf("a fresh store holds %d catalogs, want 2", st2.Len())
		}
	})
}

func TestCatchUpGivesUpWithItsContext(t *testing.T) {
	st := newStore(t, []string{"127.0.0.1:1"}, "nothing")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := st.CatchUp(ctx); err == nil {
		t.Fatal("CatchUp with no Kafka reachable returned nil")
	}
}
