// Command sinkload measures parquet-sink from Kafka fetch to S3: it fills a
// fresh topic of a real Kafka cluster with simulated batches (as agents
// send them once their catalog is registered: about 100 readings and a fix
// a batch), then runs the real parquet-sink binary, pinned to one CPU with
// taskset, on it until its checkpoints cover the whole topic, and reports
// readings per second of wall time, CPU microseconds per reading (the
// process's user + system time, from /proc), its peak RSS and the peak Go
// heap it reported on /metrics. It prints Markdown table rows. Linux only.
//
//	sinkload --kafka-brokers 127.0.0.1:19092 --s3-endpoint http://127.0.0.1:19000 --sink bin/parquet-sink
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

type options struct {
	brokers, s3, s3Key, s3Secret, bin string
	batches, vehicles, imuHz          int
	partitions                        int32
	cpu                               int
	maxFileBytes                      string
	profile                           string
	heap                              bool
	heapObjectMB                      int
}

func main() {
	var o options
	flag.StringVar(&o.brokers, "kafka-brokers", "127.0.0.1:19092", "Kafka seed brokers")
	flag.StringVar(&o.s3, "s3-endpoint", "http://127.0.0.1:19000", "S3 endpoint (MinIO)")
	flag.StringVar(&o.s3Key, "s3-access-key", "fleetminio", "S3 access key")
	flag.StringVar(&o.s3Secret, "s3-secret-key", "fleetminio-secret", "S3 secret key")
	flag.StringVar(&o.bin, "sink", "bin/parquet-sink", "parquet-sink binary")
	flag.IntVar(&o.batches, "batches", 200_000, "batches to produce")
	flag.IntVar(&o.vehicles, "vehicles", 1000, "simulated cars")
	flag.IntVar(&o.imuHz, "imu-hz", 47, "accelerometer rate of the cars (2*imu-hz+6 readings and a fix per batch)")
	var parts int
	flag.IntVar(&parts, "partitions", 8, "partitions of the topic")
	flag.IntVar(&o.cpu, "cpu", 1, "the CPU the sink is pinned to")
	flag.StringVar(&o.maxFileBytes, "max-file-bytes", "134217728", "the sink's --max-file-bytes")
	flag.StringVar(&o.profile, "cpu-profile", "", "save a CPU profile of the sink's first 10 s of work to this file")
	flag.BoolVar(&o.heap, "heap", false, "instead: measure the peak Go heap of one process writing a window of --heap-object-mb to S3 on each of --partitions partitions at once")
	flag.IntVar(&o.heapObjectMB, "heap-object-mb", 128, "with --heap: the size of each partition's readings object")
	flag.Parse()
	o.partitions = int32(parts)
	run := run
	if o.heap {
		run = heapRun
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "sinkload:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx := context.Background()
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	topic, bucket := "bench.sink."+stamp, "bench-sink-"+stamp
	cl, err := kgo.NewClient(kgo.SeedBrokers(o.brokers), kgo.ProducerLinger(10*time.Millisecond), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	readings, err := fill(ctx, cl, o, topic)
	if err != nil {
		return err
	}
	st, err := objstore.New(ctx, objstore.Config{Endpoint: o.s3, Bucket: bucket, AccessKey: o.s3Key, SecretKey: o.s3Secret, PathStyle: true}, objstore.Deps{})
	if err != nil {
		return err
	}
	if err := st.EnsureBucket(ctx); err != nil {
		return err
	}
	admin, err := freeAddr()
	if err != nil {
		return err
	}
	cmd := exec.Command("taskset", "-c", strconv.Itoa(o.cpu), o.bin, "--kafka-brokers", o.brokers, "--topic", topic, "--catalog-topic", topic+".catalog",
		"--group", "bench-"+stamp, "--s3-endpoint", o.s3, "--s3-bucket", bucket, "--s3-path-style",
		"--s3-access-key", o.s3Key, "--s3-secret-key", o.s3Secret, "--max-file-bytes", o.maxFileBytes,
		"--max-file-age", "30s", "--quiet-margin", "1s", "--listen", admin, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	var heapMu sync.Mutex
	var peakHeap float64
	stopSampling := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if h, err := metric(admin, "go_memstats_heap_inuse_bytes"); err == nil {
				heapMu.Lock()
				peakHeap = max(peakHeap, h)
				heapMu.Unlock()
			}
		}
	}()
	if o.profile != "" {
		go saveProfile(admin, o.profile)
		go func() { // and the heap, mid-way
			time.Sleep(6 * time.Second)
			if resp, err := http.Get("http://" + admin + "/debug/pprof/heap"); err == nil {
				defer resp.Body.Close()
				if f, err := os.Create(o.profile + ".heap"); err == nil {
					_, _ = f.ReadFrom(resp.Body)
					f.Close()
				}
			}
		}()
	}
	if err := waitWritten(ctx, cl, st, topic, 10*time.Minute); err != nil {
		return err
	}
	wall := time.Since(start)
	close(stopSampling)
	cpu, hwm, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	files, bytes, err := totalObjects(ctx, st)
	if err != nil {
		return err
	}
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	heapMu.Lock()
	defer heapMu.Unlock()
	fmt.Printf("| readings (and fixes) written | %d in %d batches, %d partitions |\n", readings, o.batches, o.partitions)
	fmt.Printf("| Parquet objects | %d, %.1f MB (%.2f bytes per reading) |\n", files, float64(bytes)/1e6, float64(bytes)/float64(readings))
	fmt.Printf("| wall time, start to all checkpoints at the end | %.1f s |\n", wall.Seconds())
	fmt.Printf("| readings/s (one core) | %.0f |\n", float64(readings)/wall.Seconds())
	fmt.Printf("| CPU per reading | %.3f µs |\n", float64(cpu.Microseconds())/float64(readings))
	fmt.Printf("| readings per CPU-second | %.0f |\n", float64(readings)/cpu.Seconds())
	fmt.Printf("| peak RSS | %.0f MB |\n", float64(hwm)/1e6)
	fmt.Printf("| peak Go heap in use (sampled every 100 ms) | %.0f MB |\n", peakHeap/1e6)
	return nil
}

// fill registers the simulator's catalog and produces the batches (encoded
// on every core); it returns how many readings and fixes they hold.
func fill(ctx context.Context, cl *kgo.Client, o options, topic string) (int64, error) {
	compact := "compact"
	if err := kafkaio.EnsureTopics(ctx, cl,
		kafkaio.TopicSpec{Name: topic, Partitions: o.partitions, Replication: -1},
		kafkaio.TopicSpec{Name: topic + ".catalog", Partitions: 1, Replication: -1, Configs: map[string]*string{"cleanup.policy": &compact}}); err != nil {
		return 0, err
	}
	cat, err := sim.Catalog()
	if err != nil {
		return 0, err
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic + ".catalog", Key: []byte(hex.EncodeToString(cat.ID())), Value: cat.Bytes()}).FirstErr(); err != nil {
		return 0, err
	}
	cfg := sim.DefaultConfig()
	cfg.Vehicles, cfg.IMUHz, cfg.Start = o.vehicles, o.imuHz, time.Now().Add(-time.Duration(o.batches/o.vehicles)*time.Second)
	fleet := sim.NewFleet(cfg)
	// Record times spread over the last two minutes, so that windows end
	// by their age every 30 s and the last ones are quiet at once.
	t0 := time.Now().Add(-2 * time.Minute)
	step := 2 * time.Minute / time.Duration(o.batches)
	var total int64
	var mu sync.Mutex
	var firstErr error
	workers := 2
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rs []wire.Reading
			// Each worker owns whole vehicles (a vehicle's state is not shared).
			for vi := w; vi < len(fleet); vi += workers {
				v := fleet[vi]
				for seq := 0; seq*len(fleet)+vi < o.batches; seq++ {
					i := seq*len(fleet) + vi
					b := &wire.Batch{Identity: wire.Identity{VehicleID: v.ID, Epoch: 1, Seq: uint64(seq)}, BaseTime: v.Now().UnixNano()}
					var fix wire.Fix
					b.Readings, fix = v.AppendStep(rs[:0])
					b.Fixes = []wire.Fix{fix}
					data, err := wire.Encode(b, wire.EncodeOptions{Catalog: cat})
					if err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
					rs = b.Readings
					mu.Lock()
					total += int64(len(b.Readings) + len(b.Fixes))
					mu.Unlock()
					cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(v.ID), Value: data, Timestamp: t0.Add(time.Duration(i) * step)}, func(_ *kgo.Record, err error) {
						if err != nil {
							mu.Lock()
							firstErr = err
							mu.Unlock()
						}
					})
				}
			}
		}()
	}
	wg.Wait()
	if err := cl.Flush(ctx); err != nil {
		return 0, err
	}
	return total, firstErr
}

func waitWritten(ctx context.Context, cl *kgo.Client, st *objstore.Store, topic string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return err
	}
	for {
		behind := 0
		ends.Each(func(o kadm.ListedOffset) {
			var c struct {
				NextOffset int64 `json:"next_offset"`
			}
			data, err := st.Get(ctx, fmt.Sprintf("_sink/checkpoints/%s+%d.json", topic, o.Partition))
			if err == nil {
				err = json.Unmarshal(data, &c)
			}
			if o.Offset > 0 && (err != nil || c.NextOffset < o.Offset) {
				behind++
			}
		})
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the sink has not written the topic after %v (%d partitions behind)", timeout, behind)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func totalObjects(ctx context.Context, st *objstore.Store) (n int, size int64, err error) {
	for _, table := range []string{"readings/", "locations/"} {
		objs, err := st.List(ctx, table)
		if err != nil {
			return 0, 0, err
		}
		for _, o := range objs {
			n++
			size += o.Size
		}
	}
	return n, size, nil
}

// procUsage is a process's CPU time (user + system) and peak RSS.
func procUsage(pid int) (time.Duration, int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may hold spaces): utime is the
	// 14th field, stime the 15th, in clock ticks (100 a second on Linux).
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	cpu := time.Duration(ut+st) * 10 * time.Millisecond
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var hwm int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			hwm = kb * 1024
		}
	}
	return cpu, hwm, nil
}

func metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, errors.New(name + " not found")
}

// saveProfile fetches a 10 s CPU profile from the sink's admin port.
func saveProfile(admin, path string) {
	for range 50 {
		resp, err := http.Get("http://" + admin + "/debug/pprof/profile?seconds=10")
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err == nil {
			_, _ = f.ReadFrom(resp.Body)
			f.Close()
		}
		return
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
