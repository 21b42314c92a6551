// Command liveload measures live-location's store and API at city scale:
// it loads N vehicles into a 50 km city (half of them available), then
// measures k-nearest-available queries in process (one and two query
// goroutines, 5 km and 1 km, with and without a paced stream of position
// updates), over HTTP on loopback (open loop at a target query rate while
// absorbing a target update rate; latency counted from when each request
// was due, so a stall is not hidden), updates absorbed alone, and the heap
// bytes per vehicle. It prints markdown table rows.
//
//	liveload --vehicles 1000000 --seconds 5
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/httpapi"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/livelocation"
	"github.com/fleetpipe/fleetpipe/internal/gotune"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	"golang.org/x/sys/unix"
)

// The city: a 50 km square around this centre.
const (
	lat0, lon0 = 52.52, 13.40
	halfSideM  = 25_000
)

var (
	dLat = halfSideM / fleetstate.EarthRadiusM * 180 / math.Pi
	dLon = dLat / math.Cos(lat0*math.Pi/180)
)

func main() {
	n := flag.Int("vehicles", 1_000_000, "vehicles in the city")
	seconds := flag.Float64("seconds", 5, "seconds per measurement")
	httpQPS := flag.Int("http-qps", 5000, "HTTP queries per second to offer")
	httpUpdates := flag.Int("http-updates", 100_000, "position updates per second to absorb during the HTTP measurement")
	inprocUpdates := flag.Int("updates", 100_000, "position updates per second during the in-process measurements with updates")
	only := flag.String("only", "", "run only this measurement: memory, inproc, updates, http")
	flag.StringVar(&queryStatus, "status", "available", "the status the queries ask for (available: half the fleet; charging: 0.5%)")
	flag.Float64Var(&cellDeg, "cell-deg", fleetstate.DefaultCellDeg, "the store's grid cell size in degrees")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measurements to this file")
	flag.StringVar(&traceFile, "trace", "", "write an execution trace of the HTTP measurement to this file (go tool trace)")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	d := time.Duration(*seconds * float64(time.Second))
	if err := run(*n, d, *httpQPS, *httpUpdates, *inprocUpdates, *only); err != nil {
		fmt.Fprintln(os.Stderr, "liveload:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

var (
	cellDeg     float64
	queryStatus string
	traceFile   string
)

type fleet struct {
	store    *fleetstate.Store
	ids      []string
	lat, lon []float64 // each vehicle's position, moved by update
	seq      atomic.Uint64
}

// threadCPU is the CPU time of the calling thread: with the goroutine
// locked to its thread, what the goroutine used, whoever else shares the
// machine.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func randomPoint(rng *rand.Rand) (float64, float64) {
	return lat0 + (rng.Float64()*2-1)*dLat, lon0 + (rng.Float64()*2-1)*dLon
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// load fills a store; statuses alternate available / busy / offline so
// that half are available.
func load(n int) (*fleet, time.Duration, float64) {
	before := heap()
	start := time.Now()
	f := &fleet{store: fleetstate.New(fleetstate.Options{CellDeg: cellDeg}), ids: make([]string, n), lat: make([]float64, n), lon: make([]float64, n)}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UnixNano()
	for i := range n {
		f.ids[i] = fmt.Sprintf("car-%07d", i)
		st := "available"
		if i%2 == 1 {
			st = []string{"busy", "offline"}[i/2%2]
		}
		if i%200 == 1 {
			st = "charging" // a rare status: 0.5% of the fleet
		}
		lat, lon := randomPoint(rng)
		f.lat[i], f.lon[i] = lat, lon
		f.store.ApplyPosition(fleetstate.Position{ID: f.ids[i], Fix: fleetstate.Fix{Time: now - int64(rng.IntN(30))*1e9,
			Lat: lat, Lon: lon, Alt: 35, Speed: 8, Heading: 90, Accuracy: 5}, Status: st})
	}
	took := time.Since(start)
	after := heap()
	// The ids, lat and lon slices are the load tool's, not the store's: 32
	// bytes a vehicle.
	perVehicle := (float64(after) - float64(before) - float64(32*n)) / float64(n)
	return f, took, perVehicle
}

// update moves one random vehicle of those whose index is part mod parts
// by up to 15 m, with a fresh fix and its status, as a telemetry batch
// would.
func (f *fleet) update(rng *rand.Rand, part, parts int) {
	i := rng.IntN(len(f.ids)/parts)*parts + part
	f.lat[i] += (rng.Float64() - 0.5) * 0.0002
	f.lon[i] += (rng.Float64() - 0.5) * 0.0003
	lat, lon := f.lat[i], f.lon[i]
	now := time.Now().UnixNano()
	st := "available"
	if i%2 == 1 {
		st = "busy"
	}
	b := wire.Batch{Identity: wire.Identity{VehicleID: f.ids[i], Epoch: 1, Seq: f.seq.Add(1)},
		Fixes:    []wire.Fix{{Time: now, Lat: lat, Lon: lon, Alt: 35, Speed: 8, Heading: 90, Accuracy: 5}},
		Readings: []wire.Reading{{Signal: "status", Time: now, Value: wire.String(st)}}}
	f.store.ApplyBatch(&b)
}

// pacedUpdates applies rate updates a second until stop is called, which
// returns how many it applied.
func (f *fleet) pacedUpdates(rate int) (stop func() int64) {
	var done atomic.Int64
	if rate <= 0 {
		return func() int64 { return 0 }
	}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		rng := rand.New(rand.NewPCG(7, 8))
		start := time.Now()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			due := int64(time.Since(start).Seconds() * float64(rate))
			for done.Load() < due && ctx.Err() == nil {
				f.update(rng, 0, 1)
				done.Add(1)
			}
		}
	}()
	return func() int64 { cancel(); <-exited; return done.Load() }
}

type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(math.Ceil(p/100*float64(len(l))))-1)]
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d.Nanoseconds())/1e3) }

func query(rng *rand.Rand, radius float64) fleetstate.Query {
	lat, lon := randomPoint(rng)
	return fleetstate.Query{Lat: lat, Lon: lon, RadiusM: radius, Limit: 10, Statuses: []string{queryStatus}}
}

// inproc runs goroutines query loops for d and returns the merged sorted
// latencies, the queries per second, the queries per CPU-second of a query
// goroutine, and the mean vehicles found.
func (f *fleet) inproc(goroutines int, radius float64, d time.Duration) (latencies, float64, float64, float64) {
	var mu sync.Mutex
	var all latencies
	var cpu time.Duration
	var wg sync.WaitGroup
	var found atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			var mine latencies
			c0 := threadCPU()
			for time.Now().Before(deadline) {
				q := query(rng, radius)
				t := time.Now()
				res := f.store.Nearby(q)
				mine = append(mine, time.Since(t))
				found.Add(int64(len(res)))
			}
			c1 := threadCPU()
			mu.Lock()
			all = append(all, mine...)
			cpu += c1 - c0
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	slices.Sort(all)
	return all, float64(len(all)) / el.Seconds(), float64(len(all)) / cpu.Seconds(), float64(found.Load()) / float64(len(all))
}

func run(n int, d time.Duration, httpQPS, httpUpdates, inprocUpdates int, only string) error {
	want := func(name string) bool { return only == "" || only == name }
	// The live-location binary's GOGC (livelocation.TuneProcess); the
	// GOGC variable wins, as in the binary.
	gogc := "GOGC=" + os.Getenv("GOGC")
	if gotune.SetGCPercent(livelocation.DefaultGCPercent) {
		gogc = strconv.Itoa(livelocation.DefaultGCPercent) + ", live-location's default"
	}
	fmt.Printf("| GOGC | %s |\n", gogc)
	fmt.Fprintf(os.Stderr, "liveload: loading %d vehicles\n", n)
	f, took, perVehicle := load(n)
	fmt.Printf("| vehicles loaded (50 km city, half available) | %d in %.1f s |\n", n, took.Seconds())
	if want("memory") {
		fmt.Printf("| heap bytes per vehicle | %.0f B |\n", perVehicle)
	}
	if want("inproc") {
		for _, radius := range []float64{5000, 1000} {
			for _, upd := range []int{0, inprocUpdates} {
				for _, g := range []int{1, 2} {
					stop := f.pacedUpdates(upd)
					t0 := time.Now()
					lat, qps, perCore, avg := f.inproc(g, radius, d)
					ups := float64(stop()) / time.Since(t0).Seconds()
					label := "no updates"
					if upd > 0 {
						label = fmt.Sprintf("%.0f updates/s absorbed", ups)
					}
					fmt.Printf("| in-process k=10 %s within %.0f km, %d query goroutine(s), %s | %.0f queries/s (%.0f per core-second), p50 %s, p99 %s, p99.9 %s (%.1f found) |\n",
						queryStatus, radius/1000, g, label, qps, perCore, us(lat.pct(50)), us(lat.pct(99)), us(lat.pct(99.9)), avg)
				}
			}
		}
	}
	if want("updates") {
		for _, g := range []int{1, 2} {
			var wg sync.WaitGroup
			var total, cpu atomic.Int64
			deadline := time.Now().Add(d)
			start := time.Now()
			for w := range g {
				wg.Add(1)
				go func() {
					defer wg.Done()
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					rng := rand.New(rand.NewPCG(uint64(w), 1234))
					c0 := threadCPU()
					k := 0
					for ; k%256 != 0 || time.Now().Before(deadline); k++ {
						f.update(rng, w, g)
					}
					cpu.Add(int64(threadCPU() - c0))
					total.Add(int64(k))
				}()
			}
			wg.Wait()
			fmt.Printf("| updates absorbed alone (fix + status batch, moves of up to 15 m), %d goroutine(s) | %.0f updates/s (%.0f per core-second) |\n",
				g, float64(total.Load())/time.Since(start).Seconds(), float64(total.Load())/time.Duration(cpu.Load()).Seconds())
		}
	}
	if want("http") {
		if err := httpLoad(f, d, httpQPS, httpUpdates, ""); err != nil {
			return err
		}
		// The same with the garbage collector off, to show its share of the
		// tail (marking a million vehicles' pointers takes the cores).
		old := debug.SetGCPercent(-1)
		err := httpLoad(f, d, httpQPS, httpUpdates, ", garbage collector off")
		debug.SetGCPercent(old)
		if err != nil {
			return err
		}
	}
	return nil
}

func httpLoad(f *fleet, d time.Duration, qps, updates int, note string) error {
	api, err := httpapi.New(f.store, httpapi.Options{}, httpapi.Deps{})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()

	const workers = 128
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}, Timeout: 10 * time.Second}
	// Latency is counted twice: from the job's place in the schedule (an
	// open-loop load: a late pacer counts against the service, as it would
	// for a rider) and from when the pacer handed it to the workers (waiting
	// for a free worker included). The second leaves out the pacer's own
	// lateness: a sub-millisecond sleep can last a millisecond (the runtime's
	// idle poller waits in whole milliseconds), and the pacer shares the
	// process and its two cores with the service.
	type job struct {
		due, sent time.Time
		url       string
	}
	jobs := make(chan job, 100_000)
	var mu sync.Mutex
	var lat, fromSend latencies
	var errs atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine, mineSend latencies
			for j := range jobs {
				resp, err := client.Get(j.url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(j.due))
				mineSend = append(mineSend, time.Since(j.sent))
			}
			mu.Lock()
			lat = append(lat, mine...)
			fromSend = append(fromSend, mineSend...)
			mu.Unlock()
		}()
	}
	if traceFile != "" && note == "" {
		tf, err := os.Create(traceFile)
		if err != nil {
			return err
		}
		defer tf.Close()
		if err := trace.Start(tf); err != nil {
			return err
		}
		defer trace.Stop()
	}
	stop := f.pacedUpdates(updates)
	cpu0 := processCPU()
	rng := rand.New(rand.NewPCG(3, 3))
	start := time.Now()
	sent := 0
	interval := time.Second / time.Duration(qps)
	for time.Since(start) < d {
		due := start.Add(time.Duration(sent) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		q := query(rng, 5000)
		jobs <- job{due: due, sent: time.Now(), url: fmt.Sprintf("%s/v1/vehicles/nearby?lat=%.6f&lon=%.6f&radius_m=5000&limit=10&status=%s", base, q.Lat, q.Lon, queryStatus)}
		sent++
	}
	close(jobs)
	wg.Wait()
	el := time.Since(start)
	ups := float64(stop()) / el.Seconds()
	cores := (processCPU() - cpu0).Seconds() / el.Seconds()
	slices.Sort(lat)
	slices.Sort(fromSend)
	fmt.Printf("| HTTP on loopback (client in the same process), k=10 available within 5 km, %d queries/s and %d updates/s offered%s | %.0f queries/s answered, p50 %s, p99 %s, p99.9 %s from the schedule (p50 %s, p99 %s from the send); %.0f updates/s absorbed; %d errors; %.2f cores busy |\n",
		qps, updates, note, float64(len(lat))/el.Seconds(), us(lat.pct(50)), us(lat.pct(99)), us(lat.pct(99.9)), us(fromSend.pct(50)), us(fromSend.pct(99)), ups, errs.Load(), cores)
	return nil
}
