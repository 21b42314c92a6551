package main

import (
	"math"
	"testing"
)

func TestQuantilesOfTheMeasuredWindow(t *testing.T) {
	before := []bucket{{0.001, 100}, {0.002, 100}, {0.004, 100}, {math.Inf(1), 100}}
	// In the window: 50 under 1 ms, 40 in (1, 2] ms, 9 in (2, 4] ms, 1 above.
	after := []bucket{{0.001, 150}, {0.002, 190}, {0.004, 199}, {math.Inf(1), 200}}
	p50, p99 := quantiles(before, after)
	if p50 != 1 {
		t.Errorf("p50 %v ms, want 1 (the 50th of 100 is the last under 1 ms)", p50)
	}
	if p99 != 4 {
		t.Errorf("p99 %v ms, want 4", p99)
	}
	// 40 under 1 ms, 20 in (1, 2]: the 50th of 100 sits halfway through.
	if p50, _ := quantiles(before, []bucket{{0.001, 140}, {0.002, 160}, {0.004, 199}, {math.Inf(1), 200}}); p50 != 1.5 {
		t.Errorf("p50 %v ms, want 1.5 (interpolated)", p50)
	}
	if p50, p99 := quantiles(before, before); p50 != 0 || p99 != 0 {
		t.Errorf("an empty window gives %v / %v", p50, p99)
	}
}
