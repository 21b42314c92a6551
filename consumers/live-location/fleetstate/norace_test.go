//go:build !race

package fleetstate

// race is true when the race detector is on.
const race = false
