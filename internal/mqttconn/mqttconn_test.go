package mqttconn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// pki is a throwaway CA with a broker certificate for 127.0.0.1 and a
// vehicle's client certificate, written as PEM files.
type pki struct {
	dir                       string
	caFile, certFile, keyFile string
	serverCert                tls.Certificate
	pool                      *x509.CertPool
	otherCAFile               string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir}
	caKey, caCert, caDER := selfSigned(t, "fleet test CA")
	p.caFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(caCert)
	serverKey, serverDER := issue(t, caKey, caCert, "broker", []net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	p.serverCert = tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}
	clientKey, clientDER := issue(t, caKey, caCert, "car-0001", nil, x509.ExtKeyUsageClientAuth)
	p.certFile = writePEM(t, dir, "car.pem", "CERTIFICATE", clientDER)
	keyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	p.keyFile = writePEM(t, dir, "car.key", "EC PRIVATE KEY", keyDER)
	_, _, otherDER := selfSigned(t, "some other CA")
	p.otherCAFile = writePEM(t, dir, "other-ca.pem", "CERTIFICATE", otherDER)
	return p
}

func selfSigned(t *testing.T, cn string) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, der
}

func issue(t *testing.T, caKey *ecdsa.PrivateKey, ca *x509.Certificate, cn string, ips []net.IP, usage x509.ExtKeyUsage) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startTLSBroker runs a mochi broker that requires a client certificate
// signed by the test CA, as production brokers do for vehicles.
func startTLSBroker(t *testing.T, p *pki) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{p.serverCert}, ClientCAs: p.pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(listeners.NewNet("tls", tlsLn)); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return "ssl://" + ln.Addr().String()
}

func connectWith(t *testing.T, cfg Config) error {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	opts, err := cfg.ClientOptions()
	if err != nil {
		t.Fatal(err)
	}
	opts.SetConnectRetry(false).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect did not finish")
	}
	if tok.Error() == nil {
		c.Disconnect(100)
	}
	return tok.Error()
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	url := startTLSBroker(t, p)
	base := Config{URL: url, ClientID: "car-0001", KeepAlive: 30 * time.Second, ConnectTimeout: 5 * time.Second}

	good := base
	good.CAFile, good.CertFile, good.KeyFile = p.caFile, p.certFile, p.keyFile
	if err := connectWith(t, good); err != nil {
		t.Fatalf("a vehicle with its certificate and the CA could not connect: %v", err)
	}

	noCert := base
	noCert.CAFile = p.caFile
	if err := connectWith(t, noCert); err == nil {
		t.Error("connected without a client certificate to a broker that requires one")
	}

	wrongCA := good
	wrongCA.CAFile = p.otherCAFile
	if err := connectWith(t, wrongCA); err == nil {
		t.Error("connected while trusting a CA that did not sign the broker's certificate")
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	p := newPKI(t)
	ok := Config{URL: "ssl://broker:8883", ClientID: "car", KeepAlive: 30 * time.Second, ConnectTimeout: DefaultConnectTimeout}
	for want, c := range map[string]Config{
		"--mqtt-url":             {URL: "broker:8883", ClientID: "car", KeepAlive: time.Minute},
		"--mqtt-client-id":       {URL: ok.URL, KeepAlive: time.Minute},
		"--mqtt-cert-file":       {URL: ok.URL, ClientID: "car", KeepAlive: time.Minute, CertFile: p.certFile},
		"--mqtt-ca-file":         {URL: ok.URL, ClientID: "car", KeepAlive: time.Minute, CAFile: filepath.Join(p.dir, "missing.pem")},
		"--mqtt-keepalive":       {URL: ok.URL, ClientID: "car"},
		"--mqtt-connect-timeout": {URL: ok.URL, ClientID: "car", KeepAlive: time.Minute, ConnectTimeout: 100 * time.Millisecond},
	} {
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want an error naming %s", err, want)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}
