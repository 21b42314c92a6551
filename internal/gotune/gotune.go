// Package gotune sets the Go runtime's knobs (GOGC, the soft memory limit,
// GOMAXPROCS) for a process one of our services owns, each only when its
// environment variable is unset: an operator's GOGC, GOMEMLIMIT or
// GOMAXPROCS always wins over the service's choice.
package gotune

import (
	"os"
	"runtime"
	"runtime/debug"
)

// SetGCPercent sets GOGC to percent unless GOGC is set or percent is not
// positive, and reports whether it did.
func SetGCPercent(percent int) bool {
	if percent <= 0 || os.Getenv("GOGC") != "" {
		return false
	}
	debug.SetGCPercent(percent)
	return true
}

// SetMemoryLimit sets the soft memory limit to bytes unless GOMEMLIMIT is
// set or bytes is not positive, and reports whether it did.
func SetMemoryLimit(bytes int64) bool {
	if bytes <= 0 || os.Getenv("GOMEMLIMIT") != "" {
		return false
	}
	debug.SetMemoryLimit(bytes)
	return true
}

// SetMaxProcs sets GOMAXPROCS to procs unless GOMAXPROCS is set or procs is
// not positive, and returns the GOMAXPROCS in effect.
func SetMaxProcs(procs int) int {
	if procs <= 0 || os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	runtime.GOMAXPROCS(procs)
	return procs
}

// GCPercent is the GOGC in effect.
func GCPercent() int {
	p := debug.SetGCPercent(-1) // reads it, and turns the collector off:
	debug.SetGCPercent(p)       // put it back
	return p
}
