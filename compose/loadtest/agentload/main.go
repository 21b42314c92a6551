// Command agentload measures the edge agent's cost: it runs the real
// edge-agent binary as one simulated car producing a chosen number of
// readings per second against the cloud as the car meets it — an
// in-process MQTT broker (mochi) and the real bridge over an in-process
// Kafka-protocol cluster (kfake), which registers the car's catalog and
// acks its batches end to end — then reports the agent process's peak
// resident memory and its CPU time per reading, read from /proc. Linux
// only.
//
//	agentload --agent bin/edge-agent --rate 1000 --seconds 30 [--capture-rules FILE]
//	agentload --agent bin/edge-agent --replay-dbc D --replay-log L [--realtime]
//
// The second form replays a candump log through the agent end to end and
// reports the bytes Kafka holds per reading (replay.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fleetpipe/fleetpipe/bridge/relay"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

func main() {
	agentBin := flag.String("agent", "bin/edge-agent", "edge-agent binary")
	rate := flag.Int("rate", 1000, "readings per second the simulated car produces (fixes included)")
	seconds := flag.Int("seconds", 30, "measured seconds (after a 5 s warm-up), split into --rounds")
	rounds := flag.Int("rounds", 3, "measurements the seconds are split into; the CPU reported is their median")
	fsync := flag.String("fsync", "always", "the agent's --spool-fsync")
	rules := flag.String("capture-rules", "", "the agent's --capture-rules (empty: none)")
	replayDBC := flag.String("replay-dbc", "", "with --replay-log: the log's DBC")
	replayLog := flag.String("replay-log", "", "replay this candump log end to end and report bytes per reading instead")
	realtime := flag.Bool("realtime", false, "with --replay-log: replay at the log's pace, as a car sends (the catalog is registered before most batches)")
	flag.Parse()
	if *replayLog != "" {
		if err := replay(*agentBin, *replayDBC, *replayLog, *realtime); err != nil {
			fmt.Fprintln(os.Stderr, "agentload:", err)
			os.Exit(1)
		}
		return
	}
	if *rounds < 1 || *seconds < *rounds {
		fmt.Fprintln(os.Stderr, "agentload: want --rounds >= 1 and --seconds >= --rounds")
		os.Exit(2)
	}
	if err := run(*agentBin, *rate, *seconds, *rounds, *fsync, *rules); err != nil {
		fmt.Fprintln(os.Stderr, "agentload:", err)
		os.Exit(1)
	}
}

// cloud is the cloud as the car meets it: an in-process broker and the
// real bridge over kfake, which acks batches (merged, every
// --ack-interval) once Kafka holds them and registers catalogs.
type cloud struct {
	broker *embedmqtt.Broker
	kafka  *kfake.Cluster
	stop   func()
}

func startCloud() (*cloud, error) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	broker, err := embedmqtt.New(embedmqtt.Config{Addr: "127.0.0.1:0"}, embedmqtt.Deps{Logger: logger})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	brokerDone := make(chan error, 1)
	go func() { brokerDone <- broker.Run(ctx) }()
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(1, topics.KafkaTelemetry, topics.KafkaDLQ, topics.KafkaCatalog))
	if err != nil {
		cancel()
		return nil, err
	}
	bc := relay.DefaultConfig()
	bc.MQTT.URL = broker.URL()
	bc.MQTT.ClientID = "agentload-bridge"
	bc.Kafka.Brokers = cli.StringList(kafka.ListenAddrs())
	bc.Listen = "127.0.0.1:0"
	bc.BridgeID = "agentload"
	bc.CreateTopics = false
	br, err := relay.New(bc, relay.Deps{Logger: logger, Registerer: prometheus.NewRegistry(), Gatherer: prometheus.NewRegistry()})
	if err != nil {
		cancel()
		kafka.Close()
		return nil, err
	}
	bridgeDone := make(chan error, 1)
	go func() { bridgeDone <- br.Run(ctx) }()
	return &cloud{broker: broker, kafka: kafka, stop: func() {
		cancel()
		<-bridgeDone
		<-brokerDone
		kafka.Close()
	}}, nil
}

func run(agentBin string, rate, seconds, rounds int, fsync, rules string) error {
	c, err := startCloud()
	if err != nil {
		return err
	}
	defer c.stop()
	broker := c.broker

	// One car: each simulated second brings 2 x IMU Hz accelerometer
	// readings, six 1 Hz signals and a fix.
	imuHz := max((rate-7)/2, 0)
	perSecond := 2*imuHz + 7
	dir, err := os.MkdirTemp("", "agentload")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	args := []string{"--mqtt-url", broker.URL(), "--sim-vehicles", "1", "--sim-imu-hz", strconv.Itoa(imuHz),
		"--sim-speedup", "1", "--batch-max-age", "1s", "--spool-dir", filepath.Join(dir, "spool"), "--spool-fsync", fsync,
		"--listen", metricsAddr, "--log-level", "warn"}
	if rules != "" {
		args = append(args, "--capture-rules", rules)
	}
	cmd := exec.Command(agentBin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid

	time.Sleep(5 * time.Second) // warm-up: the measurement's definition, not a wait for a condition
	// The machine's cost of a wake-up drifts with its host's load, so the
	// measured time is split into rounds and the median reported with the
	// spread.
	var perReading []float64
	var total, totalCPU, totalSecs float64
	for range rounds {
		cpu0, err := cpuSeconds(pid)
		if err != nil {
			return err
		}
		n0, err := readings("http://" + metricsAddr)
		if err != nil {
			return err
		}
		t0 := time.Now()
		time.Sleep(time.Duration(seconds) * time.Second / time.Duration(rounds))
		cpu1, _ := cpuSeconds(pid)
		n1, err := readings("http://" + metricsAddr)
		if err != nil {
			return err
		}
		perReading = append(perReading, (cpu1-cpu0)/(n1-n0)*1e6)
		total += n1 - n0
		totalCPU += cpu1 - cpu0
		totalSecs += time.Since(t0).Seconds()
	}
	hwm, rss := memory(pid)
	heap, _ := metric("http://"+metricsAddr, "go_memstats_heap_inuse_bytes")
	gcs, _ := metric("http://"+metricsAddr, "go_gc_duration_seconds_count")
	sorted := slices.Clone(perReading)
	slices.Sort(sorted)
	spread := make([]string, len(perReading))
	for i, v := range perReading {
		spread[i] = fmt.Sprintf("%.2f", v)
	}
	fmt.Printf("| readings/s (target %d, sim %d) | %.0f |\n", rate, perSecond, total/totalSecs)
	fmt.Printf("| CPU per reading (median of %d rounds of %d s) | %.2f µs |\n", rounds, seconds/rounds, sorted[len(sorted)/2])
	fmt.Printf("| CPU per reading, each round | %s µs |\n", strings.Join(spread, ", "))
	fmt.Printf("| CPU | %.1f%% of one core |\n", totalCPU/totalSecs*100)
	fmt.Printf("| peak RSS (VmHWM) | %.1f MB |\n", hwm/1e6)
	fmt.Printf("| RSS at the end | %.1f MB |\n", rss/1e6)
	fmt.Printf("| Go heap in use at the end | %.1f MB |\n", heap/1e6)
	fmt.Printf("| garbage collections | %.0f |\n", gcs)
	fmt.Printf("| spool fsync | %s |\n", fsync)
	if rules != "" {
		captured, _ := captureReadings("http://" + metricsAddr)
		all, _ := readings("http://" + metricsAddr)
		fmt.Printf("| capture rules | %s |\n", filepath.Base(rules))
		fmt.Printf("| readings sent again in capture windows | %.0f%% |\n", 100*captured/max(all, 1))
	}
	return nil
}

// cpuSeconds is the process's CPU time: the sum of its threads' time on
// a CPU from /proc/PID/task/*/schedstat, in nanoseconds (the utime and
// stime of /proc/PID/stat count 10 ms ticks, too coarse for a process that
// uses a few milliseconds a second). Go rarely ends a thread, so none of
// the time is lost between two samples.
func cpuSeconds(pid int) (float64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("no threads of process %d: %v", pid, err)
	}
	var ns float64
	for _, p := range tasks {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q", p, data)
		}
		ns += v
	}
	return ns / 1e9, nil
}

var memLine = regexp.MustCompile(`(?m)^(VmHWM|VmRSS):\s+(\d+) kB`)

func memory(pid int) (hwm, rss float64) {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, m := range memLine.FindAllStringSubmatch(string(data), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "VmHWM" {
			hwm = v * 1000
		} else {
			rss = v * 1000
		}
	}
	return hwm, rss
}

// metric reads one unlabelled sample from the agent's /metrics.
func metric(base, name string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(string(body))
	if m == nil {
		return 0, fmt.Errorf("no %s", name)
	}
	return strconv.ParseFloat(m[1], 64)
}

var captureLine = regexp.MustCompile(`(?m)^fleet_agent_capture_readings_total\{rule="[^"]*"\} (\S+)$`)

// captureReadings is the readings and fixes the agent spooled in capture
// windows.
func captureReadings(base string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, m := range captureLine.FindAllStringSubmatch(string(body), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v
	}
	return sum, nil
}

var readingsLine = regexp.MustCompile(`(?m)^fleet_agent_readings_total\{kind="(?:reading|fix)"\} (\S+)$`)

func readings(base string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, m := range readingsLine.FindAllStringSubmatch(string(body), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v
	}
	return sum, nil
}
