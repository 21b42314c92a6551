package relay

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// bigBatch is a valid batch of about n bytes (incompressible strings).
func bigBatch(t *testing.T, vehicle string, seq uint64, n int) []byte {
	t.Helper()
	b := &wire.Batch{Identity: wire.Identity{VehicleID: vehicle, Epoch: 1, Seq: seq}, BaseTime: time.Now().UnixNano()}
	for i := 0; i*64 < n; i++ {
		b.Readings = append(b.Readings, wire.Reading{Signal: "note", Time: b.BaseTime + int64(i)*1e6,
			Value: wire.String(fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15^seq))})
	}
	data, err := wire.Encode(b, wire.EncodeOptions{Compression: wire.CompressionNone})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Kafka refuses some batches for good (the telemetry topic's
// max.message.bytes is below them): those go to the DLQ as
// kafka_rejected, every other batch is relayed and acked, and nothing
// stays in flight.
func TestKafkaRejectionsDoNotStall(t *testing.T) {
	brokers := testenv.Kafka(t)
	broker := mqtttest.StartBroker(t)
	run := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	topic, dlqTopic := "rejects."+run, "rejects."+run+".dlq"
	admCl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer admCl.Close()
	small := "4000"
	if err := kafkaio.EnsureTopics(context.Background(), admCl,
		kafkaio.TopicSpec{Name: topic, Partitions: 2, Replication: 1, Configs: map[string]*string{"max.message.bytes": &small}}); err != nil {
		t.Fatal(err)
	}

	cfg := DefaultConfig()
	cfg.MQTT.URL = broker.URL()
	cfg.MQTT.ClientID = "rejects-" + run
	cfg.Kafka.Brokers = []string{brokers}
	cfg.Topic, cfg.DLQTopic, cfg.CatalogTopic = topic, dlqTopic, topic+".catalog"
	cfg.Partitions, cfg.Replication = 2, 1
	cfg.Listen = "127.0.0.1:0"
	cfg.AckInterval = 50 * time.Millisecond
	cfg.Linger = time.Millisecond
	e := &env{t: t, broker: broker}
	br := e.startBridge(cfg)
	br.waitSubscribed(t)

	var log ackLog
	subscribe(t, e.client("ack-watcher"), "fleet/v1/+/ack", log.handler)
	car := e.client("car")
	for seq := uint64(1); seq <= 30; seq++ {
		payload := batch(t, "veh-ok", 1, seq)
		if seq%6 == 0 {
			payload = bigBatch(t, "veh-ok", seq, 20_000)
		}
		publish(t, car, topics.Telemetry("veh-ok"), payload)
	}
	mqtttest.Eventually(t, "every batch settled", func() error {
		if v := metricValue(t, br.AdminURL(), `fleet_bridge_messages_total{result="produced"}`); v != "25" {
			return fmt.Errorf("produced %q", v)
		}
		if v := metricValue(t, br.AdminURL(), `fleet_bridge_dlq_total{reason="kafka_rejected"}`); v != "5" {
			return fmt.Errorf("dlq %q", v)
		}
		if v := metricValue(t, br.AdminURL(), "fleet_bridge_inflight"); v != "0" {
			return fmt.Errorf("in flight %q", v)
		}
		return nil
	})
	mqtttest.Eventually(t, "acks for the relayed batches only", func() error {
		got, _ := log.acked()
		for seq := uint64(1); seq <= 30; seq++ {
			id := wire.Identity{VehicleID: "veh-ok", Epoch: 1, Seq: seq}
			if seq%6 == 0 && got[id] > 0 {
				return fmt.Errorf("%v acked, but Kafka refused it", id)
			}
			if seq%6 != 0 && got[id] == 0 {
				return fmt.Errorf("%v not acked", id)
			}
		}
		return nil
	})
	ends, err := kadm.NewClient(admCl).ListEndOffsets(context.Background(), topic, dlqTopic)
	if err != nil {
		t.Fatal(err)
	}
	sum := map[string]int64{}
	ends.Each(func(o kadm.ListedOffset) { sum[o.Topic] += o.Offset })
	if sum[topic] != 25 || sum[dlqTopic] != 5 {
		t.Errorf("Kafka holds %d telemetry and %d DLQ records, want 25 and 5", sum[topic], sum[dlqTopic])
	}
	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(dlqTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	seen := 0
	for seen < 5 && ctx.Err() == nil {
		cons.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			seen++
			if reason, _ := header(r, kafkaio.HeaderReason); reason != ReasonKafkaRejected {
				t.Errorf("DLQ reason %q", reason)
			}
			if msg, _ := header(r, kafkaio.HeaderError); !strings.Contains(msg, "max.message.bytes") {
				t.Errorf("DLQ error %q does not name the topic limit", msg)
			}
		})
	}
	if seen != 5 {
		t.Errorf("read %d DLQ records, want 5", seen)
	}
}
