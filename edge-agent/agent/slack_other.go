//go:build !linux

package agent

import (
	"log/slog"
	"time"
)

// ApplyTimerSlack does nothing off Linux: the timer slack is a Linux
// setting.
func ApplyTimerSlack(time.Duration, *slog.Logger) error { return nil }
