package livelocation

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// chromium finds the Debian chromium that compose/services.sh install
// brings (FLEET_CHROMIUM overrides). Without it the test is skipped, or
// fails under CI.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FLEET_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "chromium not found (compose/services.sh install brings Debian's chromium; FLEET_CHROMIUM names another)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// browser starts headless chromium as the sandbox needs it, with nothing
// that reaches out to the network on its own.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.Flag("use-gl", "swiftshader"),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-features", "Translate,BlinkGenPropertyTrees,OptimizationHints,MediaRouter,AutofillServerCommunication"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first run starts the browser, which lives as long as ctx: no
	// timeout on it (each step below has its own deadline).
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// step runs one action with a deadline.
func step[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitJS polls a JavaScript expression until it is true.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ok, err := chromedp.Run(sctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s (%s; err %v)", what, expr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	return step(t, ctx, chromedp.Evaluate[T](expr))
}

// clickAt clicks the map where (lat, lon) is drawn, with a real mouse event.
func clickAt(t *testing.T, ctx context.Context, lat, lon float64) {
	t.Helper()
	xy := evalJS[[]float64](t, ctx, fmt.Sprintf(`(() => { const [x, y] = fleet.project(%v, %v);
		const r = document.getElementById("map").getBoundingClientRect(); return [r.left + x, r.top + y]; })()`, lat, lon))
	step(t, ctx, chromedp.MouseClickXY(xy[0], xy[1]))
}

// TestDashboardInABrowser drives the dashboard in headless Chromium against
// a running service with known vehicles: the counts and the list, a vehicle
// moving, clicking one for its details, and the nearby query of a click.
// It keeps a screenshot in the test's artifact directory (go test
// -artifacts; make test keeps them under .cache/test-output).
func TestDashboardInABrowser(t *testing.T) {
	ctx := browser(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, topics.KafkaTelemetry))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	prod, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()

	// Eight taxis around Alexanderplatz.
	cars := []car{
		{"taxi-01", 52.5219, 13.4132, "available"}, {"taxi-02", 52.5232, 13.4150, "available"},
		{"taxi-03", 52.5201, 13.4101, "busy"}, {"taxi-04", 52.5245, 13.4080, "available"},
		{"taxi-05", 52.5190, 13.4170, "offline"}, {"taxi-06", 52.5262, 13.4195, "busy"},
		{"taxi-07", 52.5175, 13.4060, "available"}, {"taxi-08", 52.5210, 13.4230, "busy"},
	}
	now := time.Now()
	for i, c := range cars {
		for seq := range uint64(3) {
			c2 := c
			c2.lat -= float64(2-seq) * 0.0003
			produce(t, prod, telemetry(c.id, encodeBatch(t, c2, seq, now.Add(time.Duration(int(seq)-3-i)*time.Second))))
		}
	}
	cfg := DefaultConfig()
	cfg.Kafka.Brokers = cluster.ListenAddrs()
	cfg.Listen = "127.0.0.1:0"
	cfg.PublishInterval = 100 * time.Millisecond
	svc, stop := startService(t, cfg)
	defer stop() // before the cluster closes
	eventually(t, "ready", func() error {
		if !svc.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})

	step(t, ctx, chromedp.Navigate(svc.URL()+"/"))
	// The counts by status and the list.
	waitJS(t, ctx, "counts", `(() => { const c = s => { const e = document.querySelector('#chips .chip[data-status="' + s + '"]'); return e ? +e.dataset.count : -1; };
		return c("available") === 4 && c("busy") === 3 && c("offline") === 1 && c("(all)") === 8 && c("(stale)") === 0; })()`)
	waitJS(t, ctx, "list of every taxi", `document.querySelectorAll("#list li[data-id]").length === 8`)
	ids := evalJS[[]string](t, ctx, `[...document.querySelectorAll("#list li[data-id]")].map(li => li.dataset.id)`)
	var want []string
	for _, c := range cars {
		want = append(want, c.id)
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("list = %v, want %v", ids, want)
	}
	if st := evalJS[map[string]any](t, ctx, `fleet.state()`); st["mode"] != "vehicles" {
		t.Fatalf("state = %v, want vehicles mode", st)
	}

	// A vehicle moves: the page follows.
	moved := cars[6]
	moved.lat, moved.lon = 52.5180, 13.4090
	cars[6] = moved
	produce(t, prod, telemetry(moved.id, encodeBatch(t, moved, 9, time.Now())))
	waitJS(t, ctx, "taxi-07 moves", fmt.Sprintf(`(() => { const v = fleet.vehicle("taxi-07"); return !!v && Math.abs(v.lat - %v) < 1e-9 && Math.abs(v.lon - %v) < 1e-9; })()`, moved.lat, moved.lon))

	// Clicking a vehicle on the map shows its details: state, latest
	// signals and its track.
	waitJS(t, ctx, "map drawn", `fleet.state().view !== null`)
	clickAt(t, ctx, cars[1].lat, cars[1].lon)
	waitJS(t, ctx, "details of taxi-02", `!document.getElementById("detail").hidden && document.getElementById("detailId").textContent === "taxi-02"`)
	waitJS(t, ctx, "signals of taxi-02", `(() => { const r = document.querySelector('#signals tr[data-name="speed"]'); return !!r && r.textContent.includes("30"); })()`)
	waitJS(t, ctx, "status of taxi-02", `document.querySelector('#detailState [data-field="status"]').textContent === "available"`)
	waitJS(t, ctx, "track of taxi-02", `/track: 3 points/.test(document.getElementById("trackInfo").textContent)`)

	// A click on empty map asks nearby for available vehicles within 1 km.
	step(t, ctx, chromedp.SetValue(chromedp.ID("status"), "available"))
	qLat, qLon := 52.5225, 13.4110
	clickAt(t, ctx, qLat, qLon)
	type hit struct {
		id string
		d  float64
	}
	var hits []hit
	for _, c := range cars {
		if d := fleetstate.DistanceM(qLat, qLon, c.lat, c.lon); d <= 1000 && c.status == "available" {
			hits = append(hits, hit{c.id, d})
		}
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].d < hits[j].d })
	var wantNear []string
	for _, h := range hits {
		wantNear = append(wantNear, h.id)
	}
	waitJS(t, ctx, "nearby results", fmt.Sprintf(`document.querySelectorAll("#nearbyList li[data-id]").length === %d`, len(wantNear)))
	got := evalJS[[]string](t, ctx, `[...document.querySelectorAll("#nearbyList li[data-id]")].map(li => li.dataset.id)`)
	if !slices.Equal(got, wantNear) || len(got) < 3 {
		t.Fatalf("nearby of a click = %v, want %v (the click at %v,%v may have missed)", got, wantNear, qLat, qLon)
	}
	q := evalJS[map[string]float64](t, ctx, `(() => { const s = fleet.state(); return {lat: s.view.lat, lon: s.view.lon}; })()`)
	if math.IsNaN(q["lat"]) {
		t.Fatal("view lost")
	}

	// The health panel shows this service.
	waitJS(t, ctx, "health panel", `!!document.querySelector('#health .svc[data-name="live-location"][data-up="true"]')`)

	png := step(t, ctx, chromedp.FullScreenshot(100))
	if len(png) < 10_000 {
		t.Fatalf("screenshot of %d bytes", len(png))
	}
	out := filepath.Join(t.ArtifactDir(), "dashboard.png")
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", out)

	// A crowd: past what the page follows one by one, it shows the
	// server's clusters, and the counts stay right.
	rng := rand.New(rand.NewPCG(1, 2))
	var crowd []*kgo.Record
	for i := range 3000 {
		c := car{id: fmt.Sprintf("crowd-%04d", i), lat: 52.47 + rng.Float64()*0.1, lon: 13.35 + rng.Float64()*0.12, status: []string{"available", "busy", "offline"}[i%3]}
		crowd = append(crowd, telemetry(c.id, encodeBatch(t, c, 1, time.Now())))
	}
	produce(t, prod, crowd...)
	step(t, ctx, chromedp.Evaluate[any](`fleet.setView(52.52, 13.41, 11), null`))
	waitJS(t, ctx, "counts of the crowd", `(() => { const e = document.querySelector('#chips .chip[data-status="(all)"]'); return !!e && +e.dataset.count === 3008; })()`)
	waitJS(t, ctx, "clusters mode", `(() => { const s = fleet.state(); return s.mode === "clusters" && s.clusters > 0 && s.vehicles === 0 && s.total === 3008; })()`)
	waitJS(t, ctx, "no list of thousands", `/zoom in/.test(document.getElementById("list").textContent)`)
	png = step(t, ctx, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), "dashboard-clusters.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	// Zoomed in on a street, it follows the vehicles there again.
	step(t, ctx, chromedp.Evaluate[any](`fleet.setView(52.5219, 13.4132, 17), null`))
	waitJS(t, ctx, "vehicles mode when zoomed in", `(() => { const s = fleet.state(); return s.mode === "vehicles" && s.vehicles > 0 && s.vehicles < 200; })()`)
}
