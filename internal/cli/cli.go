// Package cli is the start-up plumbing every binary shares: configuration
// from defaults, a YAML file (--config), environment variables and flags —
// each overriding the one before — a structured logger, and running the
// program until SIGINT or SIGTERM.
//
// A binary's configuration is one typed struct that registers its flags
// (with their defaults and help) and validates itself, naming the flag of the
// first bad field. Every flag FOO-BAR can also be set as PREFIX_FOO_BAR in the
// environment or as `foo-bar: value` in the YAML file.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffyaml"
)

// Config is a binary's typed configuration.
type Config interface {
	// RegisterFlags declares every setting as a flag, with its default.
	RegisterFlags(fs *flag.FlagSet)
	// Validate reports the first bad setting, naming its flag.
	Validate() error
}

// Program describes a binary for Parse and Main.
type Program struct {
	Name      string // binary name, e.g. "bridge"
	EnvPrefix string // e.g. "FLEET_BRIDGE"
	Summary   string // one paragraph for --help
}

// flagNames finds the ways ff and the flag package name a flag in their
// errors (flag "linger", flag -linger), so that every configuration error
// names it as --linger, whether it came from a flag, the environment or the
// file.
var flagNames = regexp.MustCompile(`flag "?-?([a-z0-9][a-z0-9.-]*)"?`)

// Logging holds the flags every binary has for its logs.
type Logging struct {
	Level  string
	Format string
}

// Parse fills cfg from args, the environment and an optional --config file,
// then validates it. It returns flag.ErrHelp (after printing help to out)
// when asked for help.
func Parse(p Program, cfg Config, args []string, out io.Writer) (*slog.Logger, error) {
	fs := flag.NewFlagSet(p.Name, flag.ContinueOnError)
	// The flag package would print each error itself; the caller prints
	// the one Parse returns.
	fs.SetOutput(io.Discard)
	fs.String("config", "", "YAML file of settings (keys are flag names); flags and environment override it")
	var lg Logging
	fs.StringVar(&lg.Level, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&lg.Format, "log-format", "text", "log format: text or json")
	cfg.RegisterFlags(fs)
	helpAsked := slices.ContainsFunc(args, func(a string) bool {
		return a == "-h" || a == "--h" || a == "-help" || a == "--help"
	})
	fs.Usage = func() {
		if !helpAsked {
			// A bad flag: the error says which; the whole list would bury it.
			fmt.Fprintf(out, "Run %s --help for the flags.\n", p.Name)
			return
		}
		fmt.Fprintf(out, "Usage: %s [flags]\n\n%s\n\nEvery flag can also be set in the environment as %s_<FLAG> (upper case,\n'-' as '_') or in the --config YAML file as <flag>: value. Flags win over\nthe environment, which wins over the file.\n\nFlags:\n", p.Name, p.Summary, p.EnvPrefix)
		fs.SetOutput(out)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	err := ff.Parse(fs, args,
		ff.WithEnvVarPrefix(p.EnvPrefix),
		ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(ffyaml.Parser))
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("config: %s", flagNames.ReplaceAllString(err.Error(), "flag --$1"))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}
	logger, err := NewLogger(lg, out)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return logger, nil
}

// NewLogger builds the slog logger the flags ask for.
func NewLogger(lg Logging, out io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(lg.Level)); err != nil {
		return nil, fmt.Errorf("config: --log-level: %q is not one of debug, info, warn, error", lg.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(lg.Format) {
	case "text", "":
		return slog.New(slog.NewTextHandler(out, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	}
	return nil, fmt.Errorf("config: --log-format: %q is not text or json", lg.Format)
}

// Main parses the configuration from os.Args and the environment, then runs
// run with a context cancelled on SIGINT or SIGTERM. It exits 2 on a
// configuration error, 1 if run fails, 0 otherwise. A second signal exits at
// once.
func Main(p Program, cfg Config, run func(ctx context.Context, logger *slog.Logger) error) {
	logger, err := Parse(p, cfg, os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", p.Name, err)
		os.Exit(2)
	}
	os.Exit(RunUntilSignal(logger, run))
}

// RunUntilSignal runs run until it returns or a signal arrives, and returns
// the process exit code.
func RunUntilSignal(logger *slog.Logger, run func(ctx context.Context, logger *slog.Logger) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal now kills the process the default way
		logger.Info("shutting down; signal again to exit at once")
	}()
	if err := run(ctx, logger); err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("exiting", "err", err)
		return 1
	}
	return 0
}

// StringList is a flag holding a comma-separated list.
type StringList []string

func (l *StringList) String() string { return strings.Join(*l, ",") }

// Set splits s on commas, dropping empty items.
func (l *StringList) Set(s string) error {
	*l = (*l)[:0]
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// FieldError is a validation error naming the flag of the bad setting.
func FieldError(flagName, format string, args ...any) error {
	return fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, args...))
}

// MinLevel returns a logger that drops records below min, for chatty
// libraries.
func MinLevel(l *slog.Logger, min slog.Level) *slog.Logger {
	return slog.New(levelFilter{l.Handler(), min})
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.Handler.Enabled(ctx, l)
}

func (f levelFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(as), f.min}
}

func (f levelFilter) WithGroup(name string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(name), f.min}
}
