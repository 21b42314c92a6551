// Command replayload measures the replay tool's throughput: it fills a
// fresh topic of a real Kafka cluster with simulated history (batches as
// agents send them once their catalog is registered), then runs the real
// replay binary on one core (taskset) into each target and reports records
// and readings per second of wall time and per second of the replay's own
// CPU time (user + system, from the kernel's accounting of the child).
// It prints one Markdown table row per target. Linux only.
//
//	replayload --kafka-brokers 127.0.0.1:19092 --replay bin/replay --batches 20000
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func main() {
	brokers := flag.String("kafka-brokers", "127.0.0.1:19092", "Kafka seed brokers")
	bin := flag.String("replay", "bin/replay", "replay binary")
	batches := flag.Int("batches", 20000, "batches to produce")
	vehicles := flag.Int("vehicles", 50, "simulated cars")
	imuHz := flag.Int("imu-hz", 100, "accelerometer rate of the simulated cars (readings per batch: 2*imu-hz+6 per second)")
	seconds := flag.Int("batch-seconds", 1, "seconds of readings per batch")
	targets := flag.String("targets", "jsonl,topic", "targets to measure: jsonl, topic, parquet")
	s3 := flag.String("s3-endpoint", "", "S3 endpoint for the parquet target (MinIO)")
	s3Key := flag.String("s3-access-key", "", "S3 access key")
	s3Secret := flag.String("s3-secret-key", "", "S3 secret key")
	cpu := flag.Int("cpu", 0, "the CPU the replay is pinned to")
	flag.StringVar(&profileDir, "cpuprofile", "", "write a 5 s CPU profile of each target's replay (from its /debug/pprof) into this folder as TARGET.pprof")
	flag.Parse()
	if err := run(*brokers, *bin, *batches, *vehicles, *imuHz, *seconds, strings.Split(*targets, ","), *s3, *s3Key, *s3Secret, *cpu); err != nil {
		fmt.Fprintln(os.Stderr, "replayload:", err)
		os.Exit(1)
	}
}

func run(brokers, bin string, batches, vehicles, imuHz, seconds int, targets []string, s3, s3Key, s3Secret string, cpu int) error {
	ctx := context.Background()
	stamp := time.Now().UnixNano()
	topic := fmt.Sprintf("bench.replay.%d", stamp)
	catTopic := topic + ".catalog"
	readings, err := fill(ctx, brokers, topic, catTopic, batches, vehicles, imuHz, seconds)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "replayload")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, target := range targets {
		args := []string{"-c", fmt.Sprint(cpu), bin, "--kafka-brokers", brokers, "--topic", topic, "--catalog-topic", catTopic,
			"--offsets", "0,1,2,3", "--progress", "none", "--log-level", "warn"}
		switch target {
		case "jsonl":
			args = append(args, "--to-jsonl", filepath.Join(dir, "out.jsonl"))
		case "topic":
			args = append(args, "--to-topic", topic+".copy")
		case "parquet":
			if err := ensureBucket(ctx, s3, s3Key, s3Secret, "bench-replay"); err != nil {
				return err
			}
			args = append(args, "--to-parquet", "s3://bench-replay/"+fmt.Sprint(stamp), "--s3-endpoint", s3, "--s3-path-style",
				"--s3-access-key", s3Key, "--s3-secret-key", s3Secret)
		default:
			return fmt.Errorf("unknown target %q", target)
		}
		var profiled <-chan error
		if profileDir != "" {
			addr := "127.0.0.1:19777"
			args = append(args, "--listen", addr)
			profiled = profile(addr, filepath.Join(profileDir, target+".pprof"))
		}
		cmd := exec.Command("taskset", args...)
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("replay to %s: %w", target, err)
		}
		if profiled != nil {
			if err := <-profiled; err != nil {
				fmt.Fprintf(os.Stderr, "replayload: profile of %s: %v\n", target, err)
			}
		}
		wall := time.Since(start)
		ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		cpuTime := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		out := ""
		if target == "jsonl" {
			if fi, err := os.Stat(filepath.Join(dir, "out.jsonl")); err == nil {
				out = fmt.Sprintf(" (%.0f MB of JSON)", float64(fi.Size())/1e6)
			}
		}
		fmt.Printf("| %s%s | %d | %d | %.2f | %.0f | %.0f | %.2f | %.0f |\n", target, out, batches, readings,
			wall.Seconds(), float64(batches)/wall.Seconds(), float64(readings)/wall.Seconds(),
			cpuTime.Seconds(), float64(readings)/cpuTime.Seconds())
	}
	return nil
}

var profileDir string

// profile fetches a 5 s CPU profile from the replay's admin endpoint at
// addr, once it answers, into file.
func profile(addr, file string) <-chan error {
	done := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get("http://" + addr + "/debug/pprof/profile?seconds=5")
			if err != nil {
				if time.Now().After(deadline) {
					done <- err
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, data)
			}
			if err == nil {
				err = os.WriteFile(file, data, 0o644)
			}
			done <- err
			return
		}
	}()
	return done
}

// ensureBucket creates the bench's bucket on the S3 endpoint.
func ensureBucket(ctx context.Context, endpoint, key, secret, bucket string) error {
	st, err := objstore.New(ctx, objstore.Config{Endpoint: endpoint, Bucket: bucket, AccessKey: key, SecretKey: secret, PathStyle: true}, objstore.Deps{})
	if err != nil {
		return err
	}
	return st.EnsureBucket(ctx)
}

// fill registers the simulator's catalog and produces the batches; it
// returns how many readings and fixes they hold.
func fill(ctx context.Context, brokers, topic, catTopic string, batches, vehicles, imuHz, seconds int) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ProducerLinger(10*time.Millisecond), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	compact, forever := "compact", "-1"
	// The history is dated in the past: without retention.ms=-1 Kafka
	// would delete it as soon as its segments roll.
	if err := kafkaio.EnsureTopics(ctx, cl,
		kafkaio.TopicSpec{Name: topic, Partitions: 4, Replication: -1, Configs: map[string]*string{"retention.ms": &forever}},
		kafkaio.TopicSpec{Name: catTopic, Partitions: 1, Replication: -1, Configs: map[string]*string{"cleanup.policy": &compact}}); err != nil {
		return 0, err
	}
	cat, err := sim.Catalog()
	if err != nil {
		return 0, err
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: catTopic, Key: []byte(hex.EncodeToString(cat.ID())), Value: cat.Bytes()}).FirstErr(); err != nil {
		return 0, err
	}
	cfg := sim.DefaultConfig()
	cfg.Vehicles, cfg.IMUHz, cfg.Start = vehicles, imuHz, time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)
	fleet := sim.NewFleet(cfg)
	var total int64
	errs := make(chan error, 1)
	for i := range batches {
		v := fleet[i%len(fleet)]
		b := &wire.Batch{Identity: wire.Identity{VehicleID: v.ID, Epoch: 1, Seq: uint64(i / len(fleet))}, BaseTime: v.Now().UnixNano()}
		for range seconds {
			var fix wire.Fix
			b.Readings, fix = v.AppendStep(b.Readings)
			b.Fixes = append(b.Fixes, fix)
		}
		data, err := wire.Encode(b, wire.EncodeOptions{Catalog: cat})
		if err != nil {
			return 0, err
		}
		total += int64(len(b.Readings) + len(b.Fixes))
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(v.ID), Value: data, Timestamp: time.Unix(0, b.BaseTime)}, func(_ *kgo.Record, err error) {
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return 0, err
	}
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return total, nil
}
