// Package kafkaio holds what the cloud services share about Kafka: the
// connection settings (brokers, TLS, SASL) as flags, franz-go client options
// built from them with slog logging and Prometheus metrics, and topic
// creation.
package kafkaio

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/plugin/kprom"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Config is how to reach the Kafka cluster.
type Config struct {
	Brokers       cli.StringList
	ClientID      string
	TLS           bool
	CAFile        string
	CertFile      string
	KeyFile       string
	SASLMechanism string // "", plain, scram-sha-256, scram-sha-512
	SASLUser      string
	SASLPassword  string
}

// RegisterFlags declares the kafka-* flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet, defaultClientID string) {
	c.Brokers = cli.StringList{"127.0.0.1:9092"}
	fs.Var(&c.Brokers, "kafka-brokers", "comma-separated Kafka seed brokers (host:port)")
	fs.StringVar(&c.ClientID, "kafka-client-id", defaultClientID, "Kafka client ID")
	fs.BoolVar(&c.TLS, "kafka-tls", false, "connect to Kafka over TLS")
	fs.StringVar(&c.CAFile, "kafka-ca-file", "", "PEM CAs to trust for Kafka's certificates (implies --kafka-tls)")
	fs.StringVar(&c.CertFile, "kafka-cert-file", "", "PEM client certificate for Kafka mutual TLS")
	fs.StringVar(&c.KeyFile, "kafka-key-file", "", "PEM private key of --kafka-cert-file")
	fs.StringVar(&c.SASLMechanism, "kafka-sasl-mechanism", "", "SASL mechanism: plain, scram-sha-256, scram-sha-512 (empty: none)")
	fs.StringVar(&c.SASLUser, "kafka-sasl-user", "", "SASL user")
	fs.StringVar(&c.SASLPassword, "kafka-sasl-password", "", "SASL password")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return cli.FieldError("kafka-brokers", "must list at least one broker")
	}
	for _, b := range c.Brokers {
		if !strings.Contains(b, ":") {
			return cli.FieldError("kafka-brokers", "%q has no port", b)
		}
	}
	switch c.SASLMechanism {
	case "", "plain", "scram-sha-256", "scram-sha-512":
	default:
		return cli.FieldError("kafka-sasl-mechanism", "%q: want plain, scram-sha-256 or scram-sha-512", c.SASLMechanism)
	}
	if c.SASLMechanism != "" && c.SASLUser == "" {
		return cli.FieldError("kafka-sasl-user", "must be set with --kafka-sasl-mechanism")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return cli.FieldError("kafka-cert-file", "--kafka-cert-file and --kafka-key-file go together")
	}
	return nil
}

// Opts returns franz-go options for the cluster: seed brokers, client ID,
// TLS/SASL, logs to logger and client metrics registered on reg (namespace
// "fleet_kafka", labelled by the registerer's constant labels).
func (c Config) Opts(logger *slog.Logger, reg prometheus.Registerer) ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(c.ClientID),
		// franz-go logs every metadata refresh at info; keep its warnings.
		kgo.WithLogger(kslog.New(cli.MinLevel(logger.With("component", "franz-go"), slog.LevelWarn))),
	}
	if reg != nil {
		m := kprom.NewMetrics("fleet_kafka", kprom.Registerer(reg))
		opts = append(opts, kgo.WithHooks(m))
	}
	if c.TLS || c.CAFile != "" || c.CertFile != "" {
		t := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("kafka: CA file: %w", err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("kafka: CA file %s holds no PEM certificate", c.CAFile)
			}
		}
		if c.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("kafka: client certificate: %w", err)
			}
			t.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(t))
	}
	switch c.SASLMechanism {
	case "plain":
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsMechanism()))
	case "scram-sha-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsSha256Mechanism()))
	case "scram-sha-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsSha512Mechanism()))
	}
	return opts, nil
}

// TopicSpec describes a topic to create if it is missing.
type TopicSpec struct {
	Name        string
	Partitions  int32 // -1: the broker's default
	Replication int16 // -1: the broker's default
	Configs     map[string]*string
}

// EnsureTopics creates the topics that do not exist yet. Existing topics are
// left as they are (their partition count is not changed).
func EnsureTopics(ctx context.Context, cl *kgo.Client, specs ...TopicSpec) error {
	adm := kadm.NewClient(cl)
	for _, s := range specs {
		resp, err := adm.CreateTopic(ctx, s.Partitions, s.Replication, s.Configs, s.Name)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("kafka: create topic %s: %w", s.Name, err)
		}
	}
	return nil
}

// CheckCompacted returns an error naming the setting if topic's
// cleanup.policy is not exactly "compact": a topic whose records must stay
// for good (the catalogs) must not also be deleted by time or size.
//
// A topic created a moment ago may not be known yet to the broker asked;
// CheckCompacted asks again for up to 5 seconds before it reports that.
func CheckCompacted(ctx context.Context, cl *kgo.Client, topic string) error {
	var rc kadm.ResourceConfig
	for deadline := time.Now().Add(5 * time.Second); ; {
		rcs, err := kadm.NewClient(cl).DescribeTopicConfigs(ctx, topic)
		if err == nil {
			rc, err = rcs.On(topic, nil)
		}
		if err == nil {
			err = rc.Err
		}
		if err == nil {
			break
		}
		if !errors.Is(err, kerr.UnknownTopicOrPartition) || time.Now().After(deadline) {
			return fmt.Errorf("kafka: describe %s: %w", topic, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka: describe %s: %w", topic, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" {
			if c.Value != nil && *c.Value == "compact" {
				return nil
			}
			v := "(hidden)"
			if c.Value != nil {
				v = *c.Value
			}
			return fmt.Errorf("topic %s has cleanup.policy=%s: its records will expire; set cleanup.policy=compact", topic, v)
		}
	}
	return fmt.Errorf("topic %s reports no cleanup.policy (the broker default, delete): set cleanup.policy=compact", topic)
}

// Headers the bridge puts on every record of the telemetry and DLQ topics.
const (
	HeaderSourceTopic = "source_topic" // the MQTT topic the batch came on
	HeaderReceivedAt  = "received_at"  // RFC 3339 (nanoseconds) time the bridge received it
	HeaderBridgeID    = "bridge_id"    // which bridge replica produced it
	HeaderError       = "error"        // DLQ only: why the batch was rejected
	HeaderReason      = "reason"       // DLQ only: the reason's code (corrupt, too_large, ...)
	HeaderTimeFlag    = "time_flag"    // telemetry: "future" or "past" when the batch's times are implausible
)
