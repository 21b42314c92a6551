// Package mqttconn turns the MQTT settings every binary shares (broker URL,
// client ID, credentials, TLS with a client certificate) into paho client
// options, and adapts paho's logging to slog.
package mqttconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Config is how to reach the broker.
type Config struct {
	URL       string // tcp://host:1883, ssl://host:8883, ws://...
	ClientID  string
	Username  string
	Password  string
	CAFile    string // PEM CA bundle that signed the broker's certificate
	CertFile  string // PEM client certificate (one per vehicle in production)
	KeyFile   string // its private key
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt (TCP, TLS, CONNECT
	// until CONNACK). A broker that accepts and never answers — a dying
	// broker, a black-holed cellular path — costs this long, not forever.
	ConnectTimeout time.Duration
}

// DefaultConnectTimeout leaves room for a TLS handshake over a slow
// cellular link, and is half of paho's own default.
const DefaultConnectTimeout = 15 * time.Second

// RegisterFlags declares the mqtt-* flags with the given defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, defaultURL, defaultClientID string) {
	fs.StringVar(&c.URL, "mqtt-url", defaultURL, "MQTT broker URL (tcp://, ssl://, ws://, wss://)")
	fs.StringVar(&c.ClientID, "mqtt-client-id", defaultClientID, "MQTT client ID (unique per connection)")
	fs.StringVar(&c.Username, "mqtt-username", "", "MQTT username")
	fs.StringVar(&c.Password, "mqtt-password", "", "MQTT password")
	fs.StringVar(&c.CAFile, "mqtt-ca-file", "", "PEM file of CAs to trust for the broker's certificate (TLS)")
	fs.StringVar(&c.CertFile, "mqtt-cert-file", "", "PEM client certificate for mutual TLS")
	fs.StringVar(&c.KeyFile, "mqtt-key-file", "", "PEM private key of --mqtt-cert-file")
	fs.DurationVar(&c.KeepAlive, "mqtt-keepalive", 30*time.Second, "MQTT keepalive interval")
	fs.DurationVar(&c.ConnectTimeout, "mqtt-connect-timeout", DefaultConnectTimeout,
		"give up on a connection attempt (TCP, TLS, CONNECT..CONNACK) after this long, and retry")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return cli.FieldError("mqtt-url", "%q is not a broker URL like tcp://host:1883", c.URL)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return cli.FieldError("mqtt-url", "scheme %q: want tcp, ssl, tls, ws or wss", u.Scheme)
	}
	if c.ClientID == "" {
		return cli.FieldError("mqtt-client-id", "must not be empty")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return cli.FieldError("mqtt-cert-file", "--mqtt-cert-file and --mqtt-key-file go together")
	}
	for name, p := range map[string]string{"mqtt-ca-file": c.CAFile, "mqtt-cert-file": c.CertFile, "mqtt-key-file": c.KeyFile} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return cli.FieldError(name, "%v", err)
		}
	}
	if c.KeepAlive < time.Second {
		return cli.FieldError("mqtt-keepalive", "%v is below 1s", c.KeepAlive)
	}
	if c.ConnectTimeout < time.Second {
		return cli.FieldError("mqtt-connect-timeout", "%v is below 1s", c.ConnectTimeout)
	}
	return nil
}

// ClientOptions returns paho options for the broker: clean session off (so
// QoS 1 messages queued while disconnected are delivered), automatic
// reconnect, and TLS when any TLS file is set.
func (c Config) ClientOptions() (*mqtt.ClientOptions, error) {
	o := mqtt.NewClientOptions()
	brokerURL := c.URL
	if strings.HasPrefix(brokerURL, "mqtt://") {
		brokerURL = "tcp://" + strings.TrimPrefix(brokerURL, "mqtt://")
	}
	if strings.HasPrefix(brokerURL, "mqtts://") {
		brokerURL = "ssl://" + strings.TrimPrefix(brokerURL, "mqtts://")
	}
	o.AddBroker(brokerURL)
	o.SetClientID(c.ClientID)
	o.SetUsername(c.Username)
	o.SetPassword(c.Password)
	o.SetKeepAlive(c.KeepAlive)
	if c.ConnectTimeout > 0 {
		o.SetConnectTimeout(c.ConnectTimeout)
	}
	o.SetCleanSession(false)
	o.SetAutoReconnect(true)
	o.SetConnectRetry(true)
	o.SetConnectRetryInterval(time.Second)
	// Cloud services sit next to their broker: after a broker restart they
	// should be back within seconds, not after paho's backoff has grown to
	// half a minute. (The edge agent reconnects itself, with jitter.)
	o.SetMaxReconnectInterval(5 * time.Second)
	if c.CAFile != "" || c.CertFile != "" {
		t, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		o.SetTLSConfig(t)
	}
	return o, nil
}

// TLSConfig is the TLS configuration ClientOptions uses (CA, client
// certificate), or nil when no TLS file is set, for clients other than
// paho.
func (c Config) TLSConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" {
		return nil, nil
	}
	return c.tlsConfig()
}

func (c Config) tlsConfig() (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt: CA file %s holds no PEM certificate", c.CAFile)
		}
		t.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt: client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// UseLogger sends paho's logs to logger. Paho logs through package-level
// variables, so this affects every paho client in the process. Errors stay
// errors; paho's warnings (mostly benign store bookkeeping, such as a
// PUBACK for an ID it already forgot) become debug records; its debug
// chatter is dropped.
func UseLogger(logger *slog.Logger) {
	l := logger.With("component", "paho")
	mqtt.ERROR = slogPrinter{l, slog.LevelError}
	mqtt.CRITICAL = slogPrinter{l, slog.LevelError}
	mqtt.WARN = slogPrinter{l, slog.LevelDebug}
}

type slogPrinter struct {
	l     *slog.Logger
	level slog.Level
}

// Println and Printf format only what the logger will keep: paho's
// warnings come on the hot path (a PUBACK for a forgotten ID, say) and are
// debug records here.
func (p slogPrinter) Println(v ...any) {
	if p.l.Enabled(context.Background(), p.level) {
		p.l.Log(context.Background(), p.level, strings.TrimSpace(fmt.Sprintln(v...)))
	}
}

func (p slogPrinter) Printf(format string, v ...any) {
	if p.l.Enabled(context.Background(), p.level) {
		p.l.Log(context.Background(), p.level, strings.TrimSpace(fmt.Sprintf(format, v...)))
	}
}
