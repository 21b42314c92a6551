package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// replay runs the edge-agent binary on a candump log until it has sent
// the whole log and Kafka holds every batch (--exit-when-done), then reads
// the telemetry topic back and reports the bytes it holds per reading:
// the agent's cost on the wire end to end, batches as the agent closes
// them by the log's clock. Fast, the replay outruns the catalog's
// registration (its batches name their signals); --realtime replays at the
// log's pace, as a car sends, and nearly every batch refers to the
// catalog.
func replay(agentBin, dbc, log string, realtime bool) error {
	if dbc == "" {
		return fmt.Errorf("--replay-log needs --replay-dbc")
	}
	c, err := startCloud()
	if err != nil {
		return err
	}
	defer c.stop()
	dir, err := os.MkdirTemp("", "agentload-replay")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	cmd := exec.Command(agentBin, "--mqtt-url", c.broker.URL(), "--source", "can", "--vehicle-id", "replay-0001",
		"--can-dbc", dbc, "--can-candump", log, fmt.Sprintf("--can-realtime=%v", realtime), "--exit-when-done",
		"--spool-dir", filepath.Join(dir, "spool"), "--listen=", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("edge-agent: %w", err)
	}
	took := time.Since(start)

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.kafka.ListenAddrs()...), kgo.ConsumeTopics(topics.KafkaTelemetry, topics.KafkaCatalog),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topics.KafkaTelemetry, topics.KafkaCatalog)
	if err != nil {
		return err
	}
	want := map[string]int64{}
	ends.Each(func(o kadm.ListedOffset) { want[o.Topic] += o.Offset })
	got := map[string]int64{}
	catalogs := wire.Catalogs{}
	var payloads [][]byte
	for got[topics.KafkaTelemetry] < want[topics.KafkaTelemetry] || got[topics.KafkaCatalog] < want[topics.KafkaCatalog] {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("reading Kafka back: %w (%v of %v records)", err, got, want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			got[r.Topic]++
			if r.Topic == topics.KafkaCatalog {
				if cat, err := wire.ParseCatalog(r.Value, wire.Limits{}); err == nil {
					catalogs.Add(cat)
				}
				return
			}
			payloads = append(payloads, r.Value)
		})
	}
	var bytes, readings int
	for _, p := range payloads {
		b, err := wire.Decode(p, wire.Limits{Catalogs: catalogs})
		if err != nil {
			return fmt.Errorf("a batch in Kafka does not decode: %w", err)
		}
		bytes += len(p)
		readings += len(b.Readings) + len(b.Fixes)
	}
	if readings == 0 {
		return fmt.Errorf("no reading reached Kafka")
	}
	pace := "as fast as possible"
	if realtime {
		pace = "at the log's pace"
	}
	fmt.Printf("| %s, %s | %d | %d | %.3f | %.1f s |\n", filepath.Base(log), pace, readings, len(payloads),
		float64(bytes)/float64(readings), took.Seconds())
	return nil
}
