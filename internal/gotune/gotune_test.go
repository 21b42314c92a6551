package gotune

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// Not parallel: the settings are the process's. t.Setenv("X", "") leaves
// X set, to the empty string, which counts as unset here as for the runtime.
func TestEnvironmentWins(t *testing.T) {
	gogc, limit, procs := GCPercent(), debug.SetMemoryLimit(-1), runtime.GOMAXPROCS(0)
	t.Cleanup(func() { debug.SetGCPercent(gogc); debug.SetMemoryLimit(limit); runtime.GOMAXPROCS(procs) })

	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("GOMAXPROCS", "")
	if !SetGCPercent(300) || GCPercent() != 300 {
		t.Errorf("GOGC unset: GC percent %d, want 300", GCPercent())
	}
	if !SetMemoryLimit(256<<20) || debug.SetMemoryLimit(-1) != 256<<20 {
		t.Errorf("GOMEMLIMIT unset: limit %d, want %d", debug.SetMemoryLimit(-1), 256<<20)
	}
	if got := SetMaxProcs(1); got != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Errorf("GOMAXPROCS unset: %d in effect, want 1", runtime.GOMAXPROCS(0))
	}
	if SetGCPercent(0) || SetGCPercent(-1) || SetMemoryLimit(0) || SetMemoryLimit(-1) || SetMaxProcs(0) != 1 {
		t.Error("a value that is not positive changed a setting")
	}

	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "1GiB")
	t.Setenv("GOMAXPROCS", "2")
	if SetGCPercent(500) || GCPercent() != 300 {
		t.Errorf("GOGC set: GC percent %d, want 300 left alone", GCPercent())
	}
	if SetMemoryLimit(512<<20) || debug.SetMemoryLimit(-1) != 256<<20 {
		t.Errorf("GOMEMLIMIT set: limit %d, want %d left alone", debug.SetMemoryLimit(-1), 256<<20)
	}
	if got := SetMaxProcs(2); got != 1 {
		t.Errorf("GOMAXPROCS set: SetMaxProcs says %d, want the 1 in effect", got)
	}
}
