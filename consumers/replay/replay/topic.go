package replay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
)

// HeaderReplayedFrom is the header a replay adds to every record it
// re-publishes: where the record was read, as "topic/partition/offset".
const HeaderReplayedFrom = "replayed_from"

// topicTarget re-publishes records unchanged (key, value, headers and
// timestamp, plus HeaderReplayedFrom) to another topic, keyed by vehicle
// and partitioned with Kafka's murmur2 as the bridge does.
//
// Exactly once: it produces with a transactional (so idempotent) producer
// whose transactional ID belongs to the replay, and each Commit ends a
// transaction that holds both the records since the last one and, with
// --resume, the replay's state record. The records and the progress that
// says they were written therefore become visible together or not at all.
// A resumed replay starts by initialising the same transactional ID, which
// fences the killed run and aborts its open transaction, then continues
// from the last committed state. Consumers see every record once when they
// read committed (isolation.level=read_committed); a read-uncommitted
// consumer also sees the aborted records of a killed run, which carry the
// same batches, so a consumer that drops batches by identity
// (parquet-sink) writes the same rows either way.
type topicTarget struct {
	cl    *kgo.Client
	topic string
	src   string // the source topic, for HeaderReplayedFrom

	inTxn bool
	mu    sync.Mutex
	err   error // the first failed produce of the open transaction
}

// transactionalID is the producer's transactional ID for a replay.
func transactionalID(name string) string { return "fleet-replay-" + name }

func openTopic(ctx context.Context, env TargetEnv) (Target, error) {
	if env.Producer == nil {
		return nil, errors.New("replay: the topic target needs a transactional producer")
	}
	if err := ensureTargetTopic(ctx, env.Producer, env.Dest, env.Plan.Topic, env.Plan.Partitions, env.Logger); err != nil {
		return nil, err
	}
	return &topicTarget{cl: env.Producer, topic: env.Dest, src: env.Plan.Topic}, nil
}

// producerOpts are the options of the topic target's producer: as the
// bridge's (acks=all, murmur2 keys, small linger, no compression over
// payloads that are compressed already), transactional.
func producerOpts(txnID string, cfg Config) []kgo.Opt {
	return []kgo.Opt{
		kgo.TransactionalID(txnID),
		kgo.TransactionTimeout(max(time.Minute, 3*cfg.CommitInterval)),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytes(1 << 20), // the broker default message.max.bytes (a batch is one message)
		kgo.MaxBufferedBytes(256 << 20),
	}
}

// ensureTargetTopic creates the target topic when it does not exist, with
// the source's partition count and retention.ms: the copies keep the
// records' timestamps, so Kafka deletes them by time when it would have
// deleted the originals (with a shorter retention, at once).
func ensureTargetTopic(ctx context.Context, cl *kgo.Client, topic, source string, partitions int32, logger *slog.Logger) error {
	adm := kadm.NewClient(cl)
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("kafka: metadata of %s: %w", topic, err)
	}
	if td, ok := details[topic]; ok && td.Err == nil {
		return nil
	} else if ok && !errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return cli.FieldError("to-topic", "%s: %v", topic, td.Err)
	}
	spec := kafkaio.TopicSpec{Name: topic, Partitions: partitions, Replication: -1, Configs: map[string]*string{}}
	if rcs, err := adm.DescribeTopicConfigs(ctx, source); err == nil {
		if rc, err := rcs.On(source, nil); err == nil {
			for _, c := range rc.Configs {
				if c.Key == "retention.ms" && c.Value != nil {
					spec.Configs["retention.ms"] = c.Value
				}
			}
		}
	}
	if err := kafkaio.EnsureTopics(ctx, cl, spec); err != nil {
		return cli.FieldError("to-topic", "%v", err)
	}
	logger.Info("created the target topic", "topic", topic, "partitions", partitions, "retention_ms", spec.Configs["retention.ms"])
	return nil
}

// OpenRange reads every range from where the replay's state says: that
// state commits in the same transactions as the records.
func (t *topicTarget) OpenRange(_ context.Context, _ int, from int64) (int64, error) {
	return from, nil
}

func (t *topicTarget) Write(ctx context.Context, rec Record) error {
	if err := t.begin(); err != nil {
		return err
	}
	headers := append(rec.Headers[:len(rec.Headers):len(rec.Headers)], kgo.RecordHeader{
		Key: HeaderReplayedFrom, Value: []byte(rec.Topic + "/" + strconv.Itoa(int(rec.Partition)) + "/" + strconv.FormatInt(rec.Offset, 10)),
	})
	out := &kgo.Record{Topic: t.topic, Key: rec.Key, Value: rec.Value, Headers: headers, Timestamp: rec.Timestamp}
	t.cl.Produce(ctx, out, t.produced)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

func (t *topicTarget) produced(_ *kgo.Record, err error) {
	if err == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = fmt.Errorf("--to-topic %s: %w", t.topic, err)
	}
}

func (t *topicTarget) begin() error {
	if t.inTxn {
		return nil
	}
	if err := t.cl.BeginTransaction(); err != nil {
		return fmt.Errorf("--to-topic %s: begin transaction: %w", t.topic, err)
	}
	t.inTxn = true
	return nil
}

// Commit flushes the records, adds the state (save) to the transaction and
// commits it. On any failure the transaction is aborted: the records since
// the last commit are not part of the output, and a resumed replay writes
// them again.
func (t *topicTarget) Commit(ctx context.Context, pos Position, _ bool, save SaveFunc) error {
	if err := t.begin(); err != nil {
		return err
	}
	err := t.cl.Flush(ctx)
	t.mu.Lock()
	if err == nil {
		err = t.err
	}
	t.mu.Unlock()
	if err == nil {
		err = save(ctx, pos, nil)
	}
	if err == nil {
		err = t.cl.EndTransaction(ctx, kgo.TryCommit)
		if err != nil {
			err = fmt.Errorf("--to-topic %s: commit transaction: %w", t.topic, err)
		}
	}
	if err != nil {
		t.abort()
		return err
	}
	t.inTxn = false
	return nil
}

// abort ends the open transaction without committing it.
func (t *topicTarget) abort() {
	if !t.inTxn {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = t.cl.AbortBufferedRecords(ctx)
	_ = t.cl.EndTransaction(ctx, kgo.TryAbort)
	t.inTxn = false
	t.mu.Lock()
	t.err = nil
	t.mu.Unlock()
}

// Close aborts the transaction left open since the last Commit.
func (t *topicTarget) Close() error {
	t.abort()
	return nil
}
