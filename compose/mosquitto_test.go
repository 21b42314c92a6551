package compose

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/mqttlite"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// pki is a throwaway CA and the certificates it issues.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), caCert: cert, caKey: key, pool: x509.NewCertPool()}
	p.pool.AddCert(cert)
	p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a certificate for cn (a server one when server is set) and
// returns its PEM paths and the tls.Certificate.
func (p *pki) issue(t *testing.T, cn string, server bool) (certPath, keyPath string, cert tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath = p.write(t, cn+".pem", "CERTIFICATE", der)
	keyPath = p.write(t, cn+".key", "EC PRIVATE KEY", keyDER)
	cert, err = tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, cert
}

// mosquittoBin finds the broker, which compose/services.sh installs.
func mosquittoBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	msg := "mosquitto is not installed (run compose/services.sh install)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// startProductionMosquitto runs Mosquitto with compose/mosquitto's
// configuration and ACL, its paths pointed at the test's certificates and a
// free loopback port. It returns the ssl:// URL.
func startProductionMosquitto(t *testing.T, p *pki) string {
	t.Helper()
	bin := mosquittoBin(t)
	brokerCert, brokerKey, _ := p.issue(t, "broker", true)
	conf, err := os.ReadFile(filepath.Join("mosquitto", "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	acl, _ := filepath.Abs(filepath.Join("mosquitto", "acl"))
	s := strings.NewReplacer(
		"listener 8883", "listener "+port+" 127.0.0.1",
		"/mosquitto/certs/ca.pem", filepath.Join(p.dir, "ca.pem"),
		"/mosquitto/certs/broker.pem", brokerCert,
		"/mosquitto/certs/broker.key", brokerKey,
		"/mosquitto/config/acl", acl,
		"/mosquitto/data/", dir+"/",
		"log_dest stdout", "log_dest file "+filepath.Join(dir, "mosquitto.log"),
	).Replace(string(conf))
	s += "\nuser root\n"
	confPath := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", confPath)
	out, _ := os.Create(filepath.Join(dir, "stdout.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "mosquitto.log"))
			t.Logf("mosquitto log:\n%s", log)
		}
	})
	mqtttest.Eventually(t, "mosquitto listening", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return "ssl://" + addr
}

func (p *pki) tlsFor(cert tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// The production Mosquitto configuration enforces device identity: each
// vehicle, authenticated by its client certificate, publishes only under
// its own vehicle ID and reads only its own acks; a client without a
// certificate is refused; the bridge's certificate reads every vehicle.
func TestProductionMosquittoEnforcesDeviceIdentity(t *testing.T) {
	testenv.MQTT(t) // the real-services run; this test starts its own broker
	p := newPKI(t)
	url := startProductionMosquitto(t, p)
	_, _, bridgeCert := p.issue(t, "fleet-bridge", false)
	_, _, vehA := p.issue(t, "veh-a", false)

	var mu sync.Mutex
	var got []string
	bridge, err := mqttlite.New(mqttlite.Config{URL: url, ClientID: "bridge-0", TLS: p.tlsFor(bridgeCert), CleanSession: true,
		Subscriptions: []mqttlite.Subscription{{Filter: "$share/bridges/fleet/v1/+/telemetry", QoS: 1}},
		OnMessage: func(m *mqttlite.Message) {
			mu.Lock()
			got = append(got, m.Topic+" "+string(m.Payload))
			mu.Unlock()
			m.Ack()
		}}, mqttlite.Deps{Logger: mqtttest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = bridge.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	mqtttest.Eventually(t, "the bridge subscribed", func() error {
		if !bridge.Connected() {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	connect := func(id string, tc *tls.Config) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(tc).SetAutoReconnect(false))
		tok := c.Connect()
		if !tok.WaitTimeout(mqtttest.WaitLimit) {
			return nil, fmt.Errorf("timeout")
		}
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(100) })
		}
		return c, tok.Error()
	}
	if _, err := connect("anon", &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}); err == nil {
		t.Error("a client without a certificate was accepted")
	}
	a, err := connect("any-session-id", p.tlsFor(vehA))
	if err != nil {
		t.Fatal(err)
	}
	// veh-a asks for its own acks and veh-b's: Mosquitto may grant the
	// subscription (it does for MQTT 3.1.1), but delivers only veh-a's.
	acks := make(chan string, 10)
	for _, f := range []string{"fleet/v1/veh-b/ack", "fleet/v1/veh-a/ack"} {
		sub := a.Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) { acks <- m.Topic() })
		sub.WaitTimeout(mqtttest.WaitLimit)
	}
	for _, v := range []string{"veh-b", "veh-a"} {
		if err := bridge.Publish("fleet/v1/"+v+"/ack", 1, []byte("ack"), nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case topic := <-acks:
		if topic != "fleet/v1/veh-a/ack" {
			t.Errorf("veh-a received %s", topic)
		}
	case <-time.After(mqtttest.WaitLimit):
		t.Fatal("veh-a got no ack of its own")
	}
	select {
	case topic := <-acks:
		t.Errorf("veh-a also received %s", topic)
	case <-time.After(300 * time.Millisecond):
	}
	for _, m := range []struct{ topic, payload string }{
		{"fleet/v1/veh-b/telemetry", "forged"}, {"fleet/v1/veh-a/telemetry", "own"},
	} {
		if tok := a.Publish(m.topic, 1, false, m.payload); !tok.WaitTimeout(mqtttest.WaitLimit) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", m.topic, tok.Error())
		}
	}
	mqtttest.Eventually(t, "veh-a's own telemetry at the bridge", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return fmt.Errorf("nothing yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "fleet/v1/veh-a/telemetry own" {
		t.Errorf("the bridge got %q, want only veh-a's own telemetry (the broker delivers in order, so the forged one came first if at all)", got)
	}
}
