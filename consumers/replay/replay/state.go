package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
)

// State is what --resume keeps of a replay: the latest record keyed by its
// name in the state topic. It holds the whole plan, so a resumed replay
// reads exactly the ranges the first run planned, whatever the topic holds
// now.
type State struct {
	Name    string    `json:"name"`
	Version int       `json:"version"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	Spec    Spec      `json:"spec"`
	Plan    Plan      `json:"plan"`
	// Next is, per range of the plan, the first offset whose output is not
	// known to be durable in the target.
	Next []int64 `json:"next"`
	// Target is the target's own state at Next (a file's length, say).
	Target json.RawMessage `json:"target,omitempty"`
	Done   bool            `json:"done"`
	Stats  Stats           `json:"stats"`
}

const stateVersion = 1

// Spec is what chose the slice and the target: a resumed replay must be
// given the same, or nothing.
type Spec struct {
	Topic   string   `json:"topic"`
	From    string   `json:"from,omitempty"`
	To      string   `json:"to,omitempty"`
	Offsets string   `json:"offsets,omitempty"`
	Vehicle string   `json:"vehicle,omitempty"`
	Signals []string `json:"signals,omitempty"`
	Target  string   `json:"target"`
	Dest    string   `json:"dest"`
	// Parquet holds a Parquet backfill's settings.
	Parquet *ParquetOptions `json:"parquet,omitempty"`
}

func specOf(c Config) Spec {
	kind, dest := c.targetKind()
	s := Spec{Topic: c.Topic, From: c.From, To: c.To, Offsets: c.Offsets, Vehicle: c.Vehicle,
		Signals: slices.Clone([]string(c.Signals)), Target: kind, Dest: dest}
	if kind == TargetParquet {
		s.Parquet = &c.Parquet
	}
	return s
}

// mismatch names the first flag given now that differs from what the
// replay was started with. Flags left empty take the stored value.
func (s Spec) mismatch(c Config) error {
	now := specOf(c)
	kind := targets()[s.Target]
	differs := func(flag, was, is string) error {
		return fmt.Errorf("--%s: replay %s was started with --%s %q, not %q: give the same, or leave it out", flag, c.Resume, flag, was, is)
	}
	switch {
	case now.Topic != s.Topic:
		return differs("topic", s.Topic, now.Topic)
	case c.sliceGiven() && now.From != s.From:
		return differs("from", s.From, now.From)
	case c.sliceGiven() && now.To != s.To:
		return differs("to", s.To, now.To)
	case c.sliceGiven() && now.Offsets != s.Offsets:
		return differs("offsets", s.Offsets, now.Offsets)
	case now.Vehicle != "" && now.Vehicle != s.Vehicle:
		return differs("vehicle", s.Vehicle, now.Vehicle)
	case len(now.Signals) > 0 && !slices.Equal(now.Signals, s.Signals):
		return differs("signals", fmt.Sprint(s.Signals), fmt.Sprint(now.Signals))
	case c.ToJSONL != "" || c.ToTopic != "" || c.ToParquet != "":
		if now.Target != s.Target || now.Dest != s.Dest {
			return fmt.Errorf("--%s: replay %s was started with --%s %s: give the same target, or none", targets()[now.Target].Flag, c.Resume, kind.Flag, s.Dest)
		}
	}
	if s.Parquet != nil && c.Parquet != DefaultConfig().Parquet {
		if flag, was, is := s.Parquet.diff(c.Parquet); flag != "" {
			return differs(flag, fmt.Sprint(was), fmt.Sprint(is))
		}
	}
	return nil
}

// apply sets the slice and target flags of c from the spec.
func (s Spec) apply(c *Config) {
	c.From, c.To, c.Offsets, c.Vehicle, c.Signals = s.From, s.To, s.Offsets, s.Vehicle, s.Signals
	c.ToJSONL, c.ToTopic, c.ToParquet = "", "", ""
	switch s.Target {
	case TargetJSONL:
		c.ToJSONL = s.Dest
	case TargetTopic:
		c.ToTopic = s.Dest
	case TargetParquet:
		c.ToParquet = s.Dest
		if s.Parquet != nil {
			c.Parquet = *s.Parquet
		}
	}
}

// stateStore reads and writes replay states in the state topic, a
// log-compacted topic keyed by replay name.
type stateStore struct {
	topic string
	name  string
	cl    *kgo.Client
}

// stateTopicSpec is how the state topic is created when missing: one
// partition, compacted, so that it keeps the latest state of every name.
func stateTopicSpec(name string) kafkaio.TopicSpec {
	compact := "compact"
	return kafkaio.TopicSpec{Name: name, Partitions: 1, Replication: -1, Configs: map[string]*string{"cleanup.policy": &compact}}
}

// load returns the latest committed state of the store's name, or nil.
//
// It reads the state topic from its start to its high watermark, as records
// were written, and applies the transactions itself: a replay to a topic
// writes its state inside the transactions that write its output, so a
// state record counts once its transaction's commit marker is read, and
// never if it aborts. (Reading "read committed" instead would stop at the
// last stable offset, which any other replay's open transaction holds back.)
// A replay to a topic has fenced its earlier run's transaction before
// loading, so none of its own is left open.
func (s *stateStore) load(ctx context.Context, opts []kgo.Opt) (*State, error) {
	if err := kafkaio.EnsureTopics(ctx, s.cl, stateTopicSpec(s.topic)); err != nil {
		return nil, fmt.Errorf("--state-topic: %w", err)
	}
	adm := kadm.NewClient(s.cl)
	var ends kadm.ListedOffsets
	var err error
	// A topic created a moment ago may not be known to every broker yet.
	for deadline := time.Now().Add(10 * time.Second); ; {
		ends, err = listed(adm.ListEndOffsets(ctx, s.topic))
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("--state-topic: end offsets of %s: %w", s.topic, err)
	}
	parts := map[int32]kgo.Offset{}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			parts[o.Partition] = kgo.NewOffset().AtStart()
			left[o.Partition] = o.Offset
		}
	})
	if len(parts) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append(slices.Clip(opts),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{s.topic: parts}),
		kgo.KeepControlRecords())...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	var last []byte
	found := false
	pending := map[int64][]byte{} // per producer ID, its open transaction's latest state of ours
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if errs := fs.Errors(); len(errs) > 0 {
			return nil, fmt.Errorf("--state-topic: reading %s: %w", s.topic, errs[0].Err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			end, reading := left[r.Partition]
			if !reading {
				return
			}
			switch {
			case r.Attrs.IsControl():
				v, ok := pending[r.ProducerID]
				if ok && controlCommits(r.Key) {
					last, found = v, true
				}
				delete(pending, r.ProducerID)
			case string(r.Key) != s.name:
			case r.Attrs.IsTransactional():
				pending[r.ProducerID] = r.Value
			default:
				last, found = r.Value, true
			}
			if r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	if !found || len(last) == 0 { // none, or a tombstone
		return nil, nil
	}
	var st State
	if err := json.Unmarshal(last, &st); err != nil {
		return nil, fmt.Errorf("--resume %s: the stored state is unreadable: %w", s.name, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("--resume %s: the stored state is version %d; this replay reads version %d", s.name, st.Version, stateVersion)
	}
	if len(st.Next) != len(st.Plan.Ranges) {
		return nil, errors.New("--resume " + s.name + ": the stored state is inconsistent (progress and plan differ in length)")
	}
	return &st, nil
}

// controlCommits reports whether a control record's key (version int16,
// type int16) is a transaction's commit marker (type 1; 0 is abort).
func controlCommits(key []byte) bool {
	return len(key) >= 4 && key[2] == 0 && key[3] == 1
}

// save writes st as the name's latest state. With a transactional client
// the record is part of the open transaction: it commits or aborts with the
// output.
func (s *stateStore) save(ctx context.Context, st *State) error {
	st.Updated = time.Now().UTC()
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	rec := &kgo.Record{Topic: s.topic, Key: []byte(s.name), Value: data}
	if err := s.cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return fmt.Errorf("saving replay state to %s: %w", s.topic, err)
	}
	return nil
}
