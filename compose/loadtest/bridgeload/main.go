// Command bridgeload measures the bridge against the broker's own ceiling
// on real Mosquitto and Kafka, in one run: the same publishers (simulated
// vehicles sending 100-reading batches at QoS 1 as fast as the broker
// takes them) feed first a plain shared subscriber that acknowledges each
// message at once (the ceiling), then the bridge binary. It prints a
// markdown table: messages/s of each, the bridge's share of the ceiling,
// the bridge's CPU per message (from /proc), its MQTT→Kafka latency
// quantiles and the end-to-end ack messages it published per batch.
// Linux only.
//
//	bridgeload --bridge bin/bridge --mqtt-url tcp://127.0.0.1:11883 --kafka-brokers 127.0.0.1:19092
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/compose/loadtest/fleetsim"
	"github.com/fleetpipe/fleetpipe/internal/mqttlite"
)

func main() {
	bridge := flag.String("bridge", "bin/bridge", "bridge binary")
	mqttURL := flag.String("mqtt-url", "tcp://127.0.0.1:11883", "Mosquitto")
	brokers := flag.String("kafka-brokers", "127.0.0.1:19092", "Kafka")
	vehicles := flag.Int("vehicles", 1000, "simulated vehicles")
	publishers := flag.Int("publishers", 4, "MQTT connections the vehicles publish through")
	readings := flag.Int("readings", 100, "readings per batch")
	seconds := flag.Int("seconds", 20, "measured seconds per phase, after 5 s of warm-up")
	rounds := flag.Int("rounds", 2, "ceiling/bridge pairs; medians are reported")
	flag.StringVar(&profilePath, "cpu-profile", "", "write the bridge's CPU profile (and, with .allocs appended, what it allocated) over each round's measured seconds to this file, the round's tag appended")
	flag.Parse()
	if err := run(*bridge, *mqttURL, *brokers, *vehicles, *publishers, *readings, time.Duration(*seconds)*time.Second, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bridgeload:", err)
		os.Exit(1)
	}
}

// profilePath, if set, is where the bridge's CPU profiles go.
var profilePath string

type result struct {
	ceiling, bridge, cpuMicros, p50, p99, acksPerBatch float64
}

func run(bridgeBin, mqttURL, brokers string, vehicles, publishers, readings int, measure time.Duration, rounds int) error {
	var results []result
	for r := range rounds {
		tag := fmt.Sprintf("%d-%d", time.Now().Unix(), r)
		ceil, err := ceilingPhase(mqttURL, tag, vehicles, publishers, readings, measure)
		if err != nil {
			return err
		}
		res, err := bridgePhase(bridgeBin, mqttURL, brokers, tag, vehicles, publishers, readings, measure)
		if err != nil {
			return err
		}
		res.ceiling = ceil
		results = append(results, res)
		fmt.Fprintf(os.Stderr, "round %d: ceiling %.0f/s, bridge %.0f/s, %.1f µs CPU/message\n", r+1, res.ceiling, res.bridge, res.cpuMicros)
	}
	med := func(f func(result) float64) float64 {
		var v []float64
		for _, r := range results {
			v = append(v, f(r))
		}
		sort.Float64s(v)
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	c, b := med(func(r result) float64 { return r.ceiling }), med(func(r result) float64 { return r.bridge })
	fmt.Printf("| broker ceiling (plain acking shared subscriber) | %.0f messages/s |\n", c)
	fmt.Printf("| bridge, MQTT → Kafka | %.0f messages/s (%.0f%% of the ceiling) |\n", b, 100*b/c)
	fmt.Printf("| bridge CPU per message | %.1f µs |\n", med(func(r result) float64 { return r.cpuMicros }))
	fmt.Printf("| MQTT → Kafka latency p50 / p99 (bridge receipt to Kafka ack) | %.1f / %.1f ms |\n",
		med(func(r result) float64 { return r.p50 }), med(func(r result) float64 { return r.p99 }))
	fmt.Printf("| end-to-end ack messages per batch | %.3f |\n", med(func(r result) float64 { return r.acksPerBatch }))
	return nil
}

func newFleet(mqttURL, tag string, vehicles, publishers, readings int) (*fleetsim.Fleet, error) {
	return fleetsim.New(fleetsim.Config{URL: mqttURL, Prefix: "bl" + tag + "-", Vehicles: vehicles, Batches: 1 << 30,
		ReadingsPerBatch: readings, Connections: publishers, Window: 512, Epoch: 1})
}

// ceilingPhase runs the publishers against a plain subscriber that acks
// every message at once, and returns the messages/s it received.
func ceilingPhase(mqttURL, tag string, vehicles, publishers, readings int, measure time.Duration) (float64, error) {
	var got atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 2 {
		sub, err := mqttlite.New(mqttlite.Config{URL: mqttURL, ClientID: fmt.Sprintf("ceiling-%s-%d", tag, i), CleanSession: true,
			Subscriptions: []mqttlite.Subscription{{Filter: "$share/ceiling" + tag + "/fleet/v1/+/telemetry", QoS: 1}},
			OnMessage:     func(m *mqttlite.Message) { m.Ack(); got.Add(1) }}, mqttlite.Deps{})
		if err != nil {
			return 0, err
		}
		go func() { _ = sub.Run(ctx) }()
	}
	time.Sleep(time.Second)
	fleet, err := newFleet(mqttURL, tag+"c", vehicles, publishers, readings)
	if err != nil {
		return 0, err
	}
	go func() { _ = fleet.Run(ctx) }()
	time.Sleep(5 * time.Second)
	n0, t0 := got.Load(), time.Now()
	time.Sleep(measure)
	return float64(got.Load()-n0) / time.Since(t0).Seconds(), nil
}

func bridgePhase(bin, mqttURL, brokers, tag string, vehicles, publishers, readings int, measure time.Duration) (result, error) {
	var res result
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	admin := ln.Addr().String()
	ln.Close()
	topic := "bench.telemetry." + tag
	cmd := exec.Command(bin, "--mqtt-url", mqttURL, "--mqtt-client-id", "bench-"+tag, "--share-group", "bench"+tag,
		"--kafka-brokers", brokers, "--topic", topic, "--dlq-topic", topic+".dlq", "--catalog-topic", topic+".catalog",
		"--partitions", "4", "--replication", "1", "--listen", admin, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	for deadline := time.Now().Add(time.Minute); ; {
		if metric(admin, "fleet_bridge_mqtt_connected") >= 1 {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("the bridge did not connect")
		}
		time.Sleep(200 * time.Millisecond)
	}
	kcl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		return res, err
	}
	defer kcl.Close()
	adm := kadm.NewClient(kcl)
	count := func() int64 {
		ends, err := adm.ListEndOffsets(context.Background(), topic)
		if err != nil {
			return 0
		}
		var n int64
		ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fleet, err := newFleet(mqttURL, tag+"b", vehicles, publishers, readings)
	if err != nil {
		return res, err
	}
	go func() { _ = fleet.Run(ctx) }()
	time.Sleep(5 * time.Second)
	const latency = "fleet_bridge_mqtt_to_kafka_seconds"
	n0, c0, a0, h0, t0 := count(), cpu(cmd.Process.Pid), metric(admin, "fleet_bridge_acks_published_total"), buckets(admin, latency), time.Now()
	if profilePath != "" {
		allocs := make(chan error, 1)
		go func() { allocs <- profile(admin, "allocs", fmt.Sprintf("%s.%s.allocs", profilePath, tag), measure) }()
		if err := profile(admin, "profile", fmt.Sprintf("%s.%s", profilePath, tag), measure); err != nil {
			return res, err
		}
		if err := <-allocs; err != nil {
			return res, err
		}
	}
	time.Sleep(measure - time.Since(t0))
	n1, c1, a1 := count(), cpu(cmd.Process.Pid), metric(admin, "fleet_bridge_acks_published_total")
	el := time.Since(t0).Seconds()
	res.bridge = float64(n1-n0) / el
	res.cpuMicros = (c1 - c0).Seconds() * 1e6 / float64(max(n1-n0, 1))
	res.acksPerBatch = (a1 - a0) / float64(max(n1-n0, 1))
	res.p50, res.p99 = quantiles(h0, buckets(admin, latency))
	return res, nil
}

// profile saves one of the bridge's profiles (profile: CPU, allocs: what
// was allocated) over d.
func profile(admin, kind, path string, d time.Duration) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", admin, kind, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	fmt.Fprintln(os.Stderr, "bridge profile:", path)
	return f.Close()
}

// cpu is a process's user+system time, from /proc/PID/stat.
func cpu(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return time.Duration((ut + st) * float64(time.Second) / 100) // USER_HZ
}

// scrape returns the admin server's metric lines.
func scrape(admin string) []string {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

func metric(admin, name string) float64 {
	for _, l := range scrape(admin) {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// bucket is a cumulative histogram bucket: the count of observations up
// to le.
type bucket struct{ le, n float64 }

// buckets reads a histogram's cumulative buckets off the admin server.
func buckets(admin, name string) []bucket {
	var bs []bucket
	for _, l := range scrape(admin) {
		rest, ok := strings.CutPrefix(l, name+`_bucket{le="`)
		if !ok {
			continue
		}
		le, count, _ := strings.Cut(rest, `"} `)
		x, _ := strconv.ParseFloat(le, 64)
		n, _ := strconv.ParseFloat(count, 64)
		bs = append(bs, bucket{x, n})
	}
	return bs
}

// quantiles returns p50 and p99 (ms) of the observations made between two
// readings of a histogram's buckets, interpolating linearly within a
// bucket as Prometheus's histogram_quantile does.
func quantiles(before, after []bucket) (float64, float64) {
	if len(after) == 0 || len(before) != len(after) {
		return 0, 0
	}
	d := make([]bucket, len(after))
	for i := range after {
		d[i] = bucket{after[i].le, after[i].n - before[i].n}
	}
	total := d[len(d)-1].n
	if total == 0 {
		return 0, 0
	}
	q := func(p float64) float64 {
		rank := p * total
		lo, below := 0.0, 0.0
		for _, b := range d {
			if b.n >= rank {
				if math.IsInf(b.le, 1) {
					return lo * 1000 // past the last bound: all that is known
				}
				return (lo + (b.le-lo)*(rank-below)/(b.n-below)) * 1000
			}
			lo, below = b.le, b.n
		}
		return lo * 1000
	}
	return q(0.5), q(0.99)
}
