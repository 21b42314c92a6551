package gps

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test must leave no goroutine behind: the gpsd client and the device
// reader close their connections and files when Run returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
