package replay

import (
	"fmt"
	"strings"
)

// resumeCommand is the command line that continues a stopped replay: with
// --resume, the same command again; without, the same command with the
// slice replaced by --offsets from where the target's output is durable
// (for a target that keeps its own progress, from the first offset of the
// range not done, where it finds that progress again). Secrets given on
// the command line are not repeated.
func (r *Replayer) resumeCommand(ru *session) string {
	args := redactSecrets(r.args)
	if ru.cfg.Resume == "" {
		args = dropFlags(args, "from", "to", "offsets")
		pos := ru.durable
		if ru.kind.KeepsProgress && pos.Range < len(ru.plan.Ranges) && pos.Offset < ru.plan.Ranges[pos.Range].End {
			pos.Offset = ru.plan.Ranges[pos.Range].Start
		}
		args = append(args, "--offsets", remainingOffsets(ru.plan, pos))
	} else if !hasFlag(args, "resume") {
		args = append(args, "--resume", ru.cfg.Resume)
	}
	words := []string{"replay"}
	for _, a := range args {
		words = append(words, shellQuote(a))
	}
	return strings.Join(words, " ")
}

// remainingOffsets is --offsets for what is left of p from pos on.
func remainingOffsets(p Plan, pos Position) string {
	var items []string
	for i := pos.Range; i < len(p.Ranges); i++ {
		rg := p.Ranges[i]
		start := rg.Start
		if i == pos.Range {
			start = pos.Offset
		}
		if start < rg.End {
			items = append(items, OffsetRange{Partition: rg.Partition, Start: start, End: rg.End}.String())
		}
	}
	if len(items) == 0 {
		return "(nothing left)"
	}
	return strings.Join(items, ",")
}

// flagName returns the name of a flag argument ("--from=x" → "from") and
// whether its value is inline.
func flagName(a string) (name string, inline bool) {
	if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
		return "", false
	}
	name = strings.TrimLeft(a, "-")
	name, _, inline = strings.Cut(name, "=")
	return name, inline
}

// boolFlags take no separate value.
var boolFlags = map[string]bool{
	"allow-live-prefix": true, "allow-empty": true, "dry-run": true, "fail-on-bad": true,
	"s3-path-style": true, "kafka-tls": true, "help": true, "h": true,
}

// dropFlags removes the named flags and their values from args.
func dropFlags(args []string, names ...string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		name, inline := flagName(args[i])
		drop := false
		for _, n := range names {
			drop = drop || name == n
		}
		if !drop {
			out = append(out, args[i])
			continue
		}
		if !inline && !boolFlags[name] {
			i++ // its value
		}
	}
	return out
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if n, _ := flagName(a); n == name {
			return true
		}
	}
	return false
}

// redactSecrets replaces the values of secret flags.
func redactSecrets(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		name, inline := flagName(args[i])
		secret := strings.Contains(name, "secret") || strings.Contains(name, "password")
		switch {
		case secret && inline:
			out = append(out, fmt.Sprintf("--%s=...", name))
		case secret && i+1 < len(args):
			out = append(out, args[i], "...")
			i++
		default:
			out = append(out, args[i])
		}
	}
	return out
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,:/+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
