package replay

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// ResetGroupCommand is the subcommand that moves a consumer group.
const ResetGroupCommand = "reset-group"

// ResetGroupProgram is the reset-group subcommand's name and help.
var ResetGroupProgram = cli.Program{Name: "replay reset-group", EnvPrefix: "FLEET_REPLAY", Summary: `replay reset-group moves a consumer group's committed offsets on one topic to
the first record at or after a time, for operators who do want a group to
re-read (or skip) data. Without --execute it only prints, per partition, the
group's offset now, the offset it would move to and the difference. It
refuses while the group has members: stop every consumer of the group first
(the broker would refuse the commit anyway). With --execute it checks again,
commits exactly the offsets it printed, and reads them back.

  replay reset-group --group fleet-live-location --to-time 2025-06-01T08:00:00Z
  replay reset-group --group fleet-live-location --to-time 2025-06-01T08:00:00Z --execute

Note that parquet-sink resumes from its checkpoints on S3, not from its
group's offsets: moving its group changes nothing it writes. To rewrite a
time range as Parquet, use replay --to-parquet.`}

// ResetGroupConfig is the reset-group subcommand's configuration.
type ResetGroupConfig struct {
	Kafka   kafkaio.Config
	Group   string
	Topic   string
	ToTime  string // RFC 3339
	Execute bool
}

// RegisterFlags declares the subcommand's flags.
func (c *ResetGroupConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Kafka.RegisterFlags(fs, "fleet-replay")
	fs.StringVar(&c.Group, "group", "", "the consumer group to move (required)")
	fs.StringVar(&c.Topic, "topic", topics.KafkaTelemetry, "the topic whose offsets move")
	fs.StringVar(&c.ToTime, "to-time", "", "RFC 3339 time: each partition moves to its first record at or after it (the end, if none is)")
	fs.BoolVar(&c.Execute, "execute", false, "commit the new offsets (default: print what would change and change nothing)")
}

// Validate names the first bad flag.
func (c ResetGroupConfig) Validate() error {
	if err := c.Kafka.Validate(); err != nil {
		return err
	}
	switch {
	case c.Group == "":
		return cli.FieldError("group", "must be set")
	case c.Topic == "":
		return cli.FieldError("topic", "must not be empty")
	case c.ToTime == "":
		return cli.FieldError("to-time", "must be set (RFC 3339, like 2025-06-01T08:00:00Z)")
	}
	if _, err := time.Parse(time.RFC3339Nano, c.ToTime); err != nil {
		return cli.FieldError("to-time", "%q is not an RFC 3339 time (like 2025-06-01T08:00:00Z)", c.ToTime)
	}
	return nil
}

// ResetGroupMain runs the subcommand with args (after "reset-group") and
// exits.
func ResetGroupMain(args []string) {
	var cfg ResetGroupConfig
	logger, err := cli.Parse(ResetGroupProgram, &cfg, args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ResetGroupProgram.Name, err)
		os.Exit(2)
	}
	os.Exit(cli.RunUntilSignal(logger, func(ctx context.Context, logger *slog.Logger) error {
		return ResetGroup(ctx, cfg, logger, os.Stdout)
	}))
}

// GroupMove is one partition of a reset-group plan.
type GroupMove struct {
	Partition int32
	Current   int64 // the committed offset now; -1 if none
	New       int64
}

// ErrGroupActive is returned (wrapped) when the group has live members.
var ErrGroupActive = errors.New("the group has live members")

// ResetGroup plans moving cfg.Group on cfg.Topic to cfg.ToTime, prints the
// plan on out, and with cfg.Execute commits it. It never changes a group
// that has members.
func ResetGroup(ctx context.Context, cfg ResetGroupConfig, logger *slog.Logger, out io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	opts, err := cfg.Kafka.Opts(logger, nil)
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	if err := checkIdle(ctx, adm, cfg.Group); err != nil {
		return err
	}
	moves, err := planMoves(ctx, adm, cfg)
	if err != nil {
		return err
	}
	mode := "dry run: nothing changes; add --execute to apply"
	if cfg.Execute {
		mode = "executing"
	}
	fmt.Fprintf(out, "reset-group: group %s, topic %s, to %s (%s)\n", cfg.Group, cfg.Topic, cfg.ToTime, mode)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "partition\tcurrent offset\tnew offset\tchange\t")
	for _, m := range moves {
		cur, change := "none", "set"
		if m.Current >= 0 {
			cur = fmt.Sprint(m.Current)
			switch d := m.New - m.Current; {
			case d < 0:
				change = fmt.Sprintf("%d (re-reads %d)", d, -d)
			case d > 0:
				change = fmt.Sprintf("+%d (skips %d)", d, d)
			default:
				change = "0"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t\n", m.Partition, cur, m.New, change)
	}
	tw.Flush()
	if !cfg.Execute {
		return nil
	}

	// The group may have come back to life while we planned.
	if err := checkIdle(ctx, adm, cfg.Group); err != nil {
		return err
	}
	var offsets kadm.Offsets
	for _, m := range moves {
		offsets.Add(kadm.Offset{Topic: cfg.Topic, Partition: m.Partition, At: m.New, LeaderEpoch: -1})
	}
	resp, err := adm.CommitOffsets(ctx, cfg.Group, offsets)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		if errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.RebalanceInProgress) ||
			errors.Is(err, kerr.StaleMemberEpoch) {
			return fmt.Errorf("--group: %s: the broker refused the commit because the group is active again (%w): stop its consumers and retry", cfg.Group, ErrGroupActive)
		}
		return fmt.Errorf("kafka: committing offsets of group %s: %w", cfg.Group, err)
	}
	// Read back what the group holds now.
	got, err := adm.FetchOffsetsForTopics(ctx, cfg.Group, cfg.Topic)
	if err != nil {
		return fmt.Errorf("kafka: reading back the offsets of group %s: %w", cfg.Group, err)
	}
	for _, m := range moves {
		o, ok := got.Lookup(cfg.Topic, m.Partition)
		if !ok || o.Err != nil || o.At != m.New {
			return fmt.Errorf("group %s partition %d holds offset %d after the commit, not %d: another client changed it", cfg.Group, m.Partition, o.At, m.New)
		}
	}
	fmt.Fprintf(out, "moved group %s on %s: %d partitions committed as shown\n", cfg.Group, cfg.Topic, len(moves))
	return nil
}

// checkIdle fails when the group does not exist or has members, under
// either group protocol.
func checkIdle(ctx context.Context, adm *kadm.Client, group string) error {
	described, err := adm.DescribeGroups(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return fmt.Errorf("kafka: describing group %s: %w", group, err)
	}
	var members []string
	exists := false
	if g, ok := described[group]; ok && g.Err == nil && g.State != "Dead" {
		exists = true
		for _, m := range g.Members {
			members = append(members, fmt.Sprintf("%s (client %s on %s)", m.MemberID, m.ClientID, m.ClientHost))
		}
	}
	// Groups of the new consumer protocol (KIP-848) have their own API; a
	// broker without it answers with an error we can ignore.
	if cgs, err := adm.DescribeConsumerGroups(ctx, group); err == nil {
		if g, ok := cgs[group]; ok && g.Err == nil && g.State != "Dead" {
			exists = true
			for _, m := range g.Members {
				id := fmt.Sprintf("%s (client %s on %s)", m.MemberID, m.ClientID, m.ClientHost)
				if !slices.Contains(members, id) {
					members = append(members, id)
				}
			}
		}
	}
	if !exists {
		return cli.FieldError("group", "group %q does not exist (no members, no committed offsets)", group)
	}
	if len(members) > 0 {
		return fmt.Errorf("--group: refusing to move %s: %w (%d): %s; stop them first", group, ErrGroupActive, len(members), strings.Join(members, ", "))
	}
	return nil
}

// planMoves lists, per partition of the topic, the group's committed offset
// and the first offset at or after the time.
func planMoves(ctx context.Context, adm *kadm.Client, cfg ResetGroupConfig) ([]GroupMove, error) {
	t, _ := time.Parse(time.RFC3339Nano, cfg.ToTime)
	details, err := adm.ListTopics(ctx, cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("kafka: metadata of %s: %w", cfg.Topic, err)
	}
	if td, ok := details[cfg.Topic]; !ok || td.Err != nil {
		return nil, cli.FieldError("topic", "topic %q does not exist", cfg.Topic)
	}
	at, err := listed(adm.ListOffsetsAfterMilli(ctx, millisCeil(t), cfg.Topic))
	if err != nil {
		return nil, fmt.Errorf("kafka: offsets of %s at %s: %w", cfg.Topic, cfg.ToTime, err)
	}
	committed, err := adm.FetchOffsetsForTopics(ctx, cfg.Group, cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("kafka: offsets of group %s: %w", cfg.Group, err)
	}
	var moves []GroupMove
	at.Each(func(o kadm.ListedOffset) {
		m := GroupMove{Partition: o.Partition, Current: -1, New: o.Offset}
		if c, ok := committed.Lookup(cfg.Topic, o.Partition); ok && c.Err == nil && c.At >= 0 {
			m.Current = c.At
		}
		moves = append(moves, m)
	})
	slices.SortFunc(moves, func(a, b GroupMove) int { return int(a.Partition - b.Partition) })
	return moves, nil
}
