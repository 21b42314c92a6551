package kafkaio_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// TestCheckCompacted runs against kfake and against Apache Kafka.
func TestCheckCompacted(t *testing.T) {
	testenv.EachKafka(t, func(t *testing.T, seeds []string) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		suffix := time.Now().Format("150405.000000")
		compact, del, both := "compact", "delete", "compact,delete"
		for name, policy := range map[string]*string{"compact": &compact, "delete": &del, "both": &both, "default": nil} {
			spec := kafkaio.TopicSpec{Name: "policy-" + name + "-" + suffix, Partitions: 1, Replication: 1}
			if policy != nil {
				spec.Configs = map[string]*string{"cleanup.policy": policy}
			}
			if err := kafkaio.EnsureTopics(ctx, cl, spec); err != nil {
				t.Fatal(err)
			}
			err := kafkaio.CheckCompacted(ctx, cl, spec.Name)
			if name == "compact" {
				if err != nil {
					t.Errorf("compacted topic: %v", err)
				}
			} else if err == nil || !strings.Contains(err.Error(), "cleanup.policy") {
				t.Errorf("%s topic: got %v, want an error naming cleanup.policy", name, err)
			}
		}
		if err := kafkaio.CheckCompacted(ctx, cl, "no-such-topic-"+suffix); err == nil {
			t.Error("a missing topic checked out fine")
		}
	})
}
