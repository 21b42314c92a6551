package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// link is the cars' cellular link: a TCP proxy to the broker that the test
// can cut (every connection dropped, new ones refused) and restore.
type link struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  map[net.Conn]struct{}
}

func newLink(t *testing.T, target string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, target: target, up: true, conns: map[net.Conn]struct{}{}}
	go l.serve()
	t.Cleanup(func() { ln.Close(); l.cut() })
	return l
}

func (l *link) url() string { return "tcp://" + l.ln.Addr().String() }

func (l *link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		up := l.up
		l.mu.Unlock()
		if !up {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", l.target)
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		l.conns[c], l.conns[s] = struct{}{}, struct{}{}
		l.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); s.Close(); c.Close() }()
		go func() { _, _ = io.Copy(c, s); s.Close(); c.Close() }()
	}
}

func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.up = false
	for c := range l.conns {
		c.Close()
	}
	l.conns = map[net.Conn]struct{}{}
}

func (l *link) restore() {
	l.mu.Lock()
	l.up = true
	l.mu.Unlock()
}

// TestLongOutageWithRebootLosesNothing cuts the cars' link for 30 s, reboots
// the agent in the middle (kill -9, start again), restores the link, and
// checks that every car's live position is current within 15 s of the
// link coming back while the backlog still drains, that the backlog then
// drains, and that every batch ever spooled is in Kafka or still spooled.
func TestLongOutageWithRebootLosesNothing(t *testing.T) {
	mqttURL := testenv.MQTT(t)
	brokers := testenv.Kafka(t)
	run := strconv.FormatUint(mrand.Uint64()%1e9, 36)
	topic := "e2e.outage." + run
	bins := buildBinaries(t, "./edge-agent", "./bridge", "./consumers/live-location")
	bridgeAddr := testenv.FreeAddr(t)
	startProc(t, filepath.Join(bins, "bridge"), "bridge", "--mqtt-url", mqttURL, "--mqtt-client-id", "outage-bridge-"+run,
		"--share-group", "outage-"+run, "--kafka-brokers", brokers, "--topic", topic, "--dlq-topic", topic+".dlq",
		"--partitions", "2", "--replication", "1", "--listen", bridgeAddr)
	// The broker drops what nobody subscribes to: the cars start once the
	// bridge's subscription is in place.
	waitFor(t, "the bridge to be ready", time.Minute, func(ctx context.Context) error { return ready(ctx, "http://"+bridgeAddr) })
	liveAddr := testenv.FreeAddr(t)
	startProc(t, filepath.Join(bins, "live-location"), "live-location", "--kafka-brokers", brokers, "--topic", topic,
		"--location-topic", "", "--listen", liveAddr, "--group", topic+".live")

	l := newLink(t, strings.TrimPrefix(mqttURL, "tcp://"))
	spoolDir := filepath.Join(t.TempDir(), "spool")
	prefix := "outage-" + run + "-"
	const vehicles = 5
	agentAddr := testenv.FreeAddr(t)
	agentArgs := []string{"--mqtt-url", l.url(), "--sim-vehicles", strconv.Itoa(vehicles), "--sim-id-prefix", prefix,
		"--sim-speedup", "1", "--batch-max-age", "1s", "--ack-timeout", "3s", "--backlog-rate", "2",
		"--reconnect-min", "200ms", "--reconnect-max", "1s", "--spool-dir", spoolDir, "--listen", agentAddr}
	agent := startProc(t, filepath.Join(bins, "edge-agent"), "edge-agent", agentArgs...)
	ids := make([]string, vehicles)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%04d", prefix, i+1)
	}
	liveURL := "http://" + liveAddr
	waitFor(t, "the cars on the live map", time.Minute, func(ctx context.Context) error {
		return fresh(ctx, liveURL, ids, 3*time.Second)
	})

	// The outage: 30 s without a link, a reboot in the middle.
	l.cut()
	time.Sleep(15 * time.Second) // the outage's length is the point of the test
	agent.kill()
	agent = startProc(t, filepath.Join(bins, "edge-agent"), "edge-agent-rebooted", agentArgs...)
	time.Sleep(15 * time.Second)
	backlogBefore := spooled(t, "http://"+agentAddr)
	l.restore()
	back := time.Now()

	// Live first: the map is current again while the backlog is still
	// being sent (checked below). Reconnecting takes each car up to 1.5 s
	// of backoff, then a batch's age and the trip through the broker,
	// the bridge and Kafka; the deadline leaves room for a loaded machine.
	waitFor(t, "every car's live position to be current again", 15*time.Second, func(ctx context.Context) error {
		return fresh(ctx, liveURL, ids, 3*time.Second)
	})
	tookLive := time.Since(back)
	backlogAfter := spooled(t, "http://"+agentAddr)
	t.Logf("backlog %d batches when the link came back; live map current after %v, with %d batches still spooled",
		backlogBefore, tookLive.Round(10*time.Millisecond), backlogAfter)
	if backlogAfter == 0 {
		t.Errorf("the backlog had drained before the live map was current: the test did not show live-first")
	}

	// The backlog has drained when the oldest batch still unacked was
	// spooled after the link came back. (The cars keep driving: a batch
	// or two of theirs is always on its way, so "nothing spooled" is not
	// a state the test can wait for.)
	waitFor(t, "the backlog to drain", 2*time.Minute, func(ctx context.Context) error {
		sinceBack := time.Since(back)
		if age := agentMetric(ctx, t, "http://"+agentAddr, "fleet_agent_spool_oldest_age_seconds"); age >= sinceBack.Seconds() {
			return fmt.Errorf("the oldest unacked batch was spooled %.1fs ago, %v before the link came back (%d spooled)",
				age, (time.Duration(age*float64(time.Second)) - sinceBack).Round(time.Millisecond), spooled(t, "http://"+agentAddr))
		}
		return nil
	})
	if err := agent.stop(30 * time.Second); err != nil {
		t.Fatalf("agent shutdown: %v", err)
	}
	// Every batch ever spooled is in Kafka, or still in the spool for the
	// agent's next run (the newest, whose ack had not come yet).
	got := readIdentities(t, brokers, topic)
	for _, id := range ids {
		sp, err := spool.Open(spool.Config{Dir: filepath.Join(spoolDir, id)}, spool.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		st := sp.Stats()
		pending := map[uint64]bool{}
		for rec, err := range sp.Pending(0) {
			if err != nil {
				t.Fatalf("%s: spool: %v", id, err)
			}
			pending[rec.Seq] = true
		}
		sp.Close()
		seqs := got[id][st.Epoch]
		for q := uint64(1); q < st.NextSeq; q++ {
			if !seqs[q] && !pending[q] {
				t.Errorf("%s: batch %d was spooled, freed, and is not in Kafka", id, q)
			}
		}
		if len(got[id]) != 1 {
			t.Errorf("%s: %d epochs in Kafka, want 1", id, len(got[id]))
		}
		t.Logf("%s: seqs 1..%d in Kafka but for %d still spooled", id, st.NextSeq-1, len(pending))
	}
}

// ready asks a service's /readyz.
func ready(ctx context.Context, base string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/readyz: %d %s", base, resp.StatusCode, body)
	}
	return nil
}

// fresh checks that every vehicle's latest fix on the live map is at most
// maxAge old.
func fresh(ctx context.Context, base string, ids []string, maxAge time.Duration) error {
	for _, id := range ids {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/vehicles/"+id, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		var v struct {
			UpdatedAt *string `json:"updated_at"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || v.UpdatedAt == nil {
			return fmt.Errorf("%s: status %d, %v", id, resp.StatusCode, err)
		}
		ts, err := time.Parse(time.RFC3339Nano, *v.UpdatedAt)
		if err != nil {
			return err
		}
		if age := time.Since(ts); age > maxAge {
			return fmt.Errorf("%s: last fix %v old", id, age.Round(time.Millisecond))
		}
	}
	return nil
}

// spooled reads the agent's count of unacked spooled batches.
func spooled(t *testing.T, base string) int {
	t.Helper()
	return int(agentMetric(context.Background(), t, base, "fleet_agent_spool_records"))
}

// agentMetric reads an unlabelled series from the agent's metrics.
func agentMetric(ctx context.Context, t *testing.T, base, series string) float64 {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in the agent's metrics", series)
	}
	f, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
