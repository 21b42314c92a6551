package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/internal/gotune"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// heapRowGroupRows is parquet-sink's default row group size.
const heapRowGroupRows = 1_000_000

// heapRun writes, in this process, one window per partition with the
// sink's writer (internal/parquetlog) to S3, all partitions at once, each
// window's readings object growing to o.heapObjectMB before its window ends
// by --max-file-bytes, and reports the Go heap at its peak: the bytes in
// use (what the runtime holds, garbage not yet collected included) and the
// live bytes after each collection. The readings are random (8 bytes of
// Parquet each, about), so the objects are large in few rows.
func heapRun(o options) error {
	ctx := context.Background()
	bucket := "bench-heap-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	st, err := objstore.New(ctx, objstore.Config{Endpoint: o.s3, Bucket: bucket, AccessKey: o.s3Key, SecretKey: o.s3Secret, PathStyle: true}, objstore.Deps{})
	if err != nil {
		return err
	}
	if err := st.EnsureBucket(ctx); err != nil {
		return err
	}
	// The parquet-sink binary's default soft memory limit for this many
	// partitions (GOMEMLIMIT wins, as in the binary).
	limit := "GOMEMLIMIT=" + os.Getenv("GOMEMLIMIT")
	if l := sink.MemoryLimitFor(int(o.partitions), heapRowGroupRows); gotune.SetMemoryLimit(l) {
		limit = fmt.Sprintf("%d MiB, the sink's default for %d partitions", l>>20, o.partitions)
	}
	var peakInUse, peakLive atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}, {Name: "/gc/heap/live:bytes"}}
		for {
			metrics.Read(s)
			inUse := s[0].Value.Uint64() + s[1].Value.Uint64()
			if inUse > peakInUse.Load() {
				peakInUse.Store(inUse)
			}
			if l := s[2].Value.Uint64(); l > peakLive.Load() {
				peakLive.Store(l)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	if o.profile != "" {
		go func() {
			time.Sleep(4 * time.Second)
			f, err := os.Create(o.profile)
			if err == nil {
				runtime.GC()
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}()
	}
	var wg sync.WaitGroup
	errs := make(chan error, o.partitions)
	var rows atomic.Int64
	for p := range o.partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := heapPartition(ctx, st, p, int64(o.heapObjectMB)<<20)
			rows.Add(n)
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	files, size, err := totalObjects(ctx, st)
	if err != nil {
		return err
	}
	fmt.Printf("| partitions written at once, one window each | %d (%d rows, %.1f s, GOMAXPROCS %d) |\n", o.partitions, rows.Load(), time.Since(start).Seconds(), runtime.GOMAXPROCS(0))
	fmt.Printf("| objects | %d, %.0f MB in all, readings objects of %d MiB and more |\n", files, float64(size)/1e6, o.heapObjectMB)
	fmt.Printf("| peak Go heap in use (sampled every 20 ms, garbage included) | %.0f MB |\n", float64(peakInUse.Load())/1e6)
	fmt.Printf("| peak live heap (after a collection) | %.0f MB |\n", float64(peakLive.Load())/1e6)
	fmt.Printf("| Go soft memory limit | %s |\n", limit)
	return nil
}

// heapPartition feeds one partition's writer batches of 1,000 random
// readings until its first window has closed by size.
func heapPartition(ctx context.Context, st *objstore.Store, partition int32, maxBytes int64) (int64, error) {
	files := parquetout.DefaultOptions
	files.RowGroupRows = heapRowGroupRows
	w, err := parquetlog.Claim(ctx, parquetlog.Config{
		Topic: "bench.heap", Partition: partition, Writer: "sinkload", Start: 0,
		Rules: parquetlog.Rules{MaxRows: math.MaxInt64, MaxBytes: maxBytes, MaxAge: time.Hour, QuietMargin: time.Minute},
		Dedup: parquetlog.DefaultDedup, Files: files,
	}, parquetlog.Deps{Store: st})
	if err != nil {
		return 0, err
	}
	defer w.Abandon(ctx)
	rng := rand.New(rand.NewPCG(uint64(partition), 1))
	t0 := time.Now()
	var rows int64
	b := &wire.Batch{}
	for off := int64(0); w.Committed() <= 0; off++ {
		*b = wire.Batch{Identity: wire.Identity{VehicleID: "veh-" + strconv.Itoa(int(off%1000)), Epoch: 1, Seq: uint64(off)}, BaseTime: t0.UnixNano(), Readings: b.Readings[:0]}
		at := t0.Add(time.Duration(off) * time.Millisecond).UnixNano()
		for i := range 1000 {
			b.Readings = append(b.Readings, wire.Reading{Signal: "s" + strconv.Itoa(i%8), Unit: "u", Time: at + int64(i), Value: wire.Float(rng.NormFloat64())})
		}
		if err := w.Add(ctx, parquetlog.Record{Offset: off, Timestamp: t0.Add(time.Duration(off) * time.Microsecond), Batch: b}); err != nil {
			return rows, err
		}
		rows += 1000
	}
	return rows, nil
}
