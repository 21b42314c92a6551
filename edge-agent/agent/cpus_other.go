//go:build !linux

package agent

import "log/slog"

// ApplyCPUs does nothing off Linux.
func ApplyCPUs(string, int, *slog.Logger) error { return nil }
