package gps

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// fakeGPSD is an in-process peer speaking gpsd's JSON protocol (as gpsd 3.25
// does): a VERSION banner on connect, DEVICES and WATCH answers to ?WATCH,
// then whatever reports the test sends.
type fakeGPSD struct {
	t  *testing.T
	ln net.Listener
}

func newFakeGPSD(t *testing.T) *fakeGPSD {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &fakeGPSD{t: t, ln: ln}
}

type gpsdConn struct {
	t *testing.T
	net.Conn
	r *bufio.Reader
}

// accept takes the client's next connection and answers its ?WATCH,
// returning the command the client sent.
func (s *fakeGPSD) accept() (*gpsdConn, string) {
	s.t.Helper()
	s.ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := s.ln.Accept()
	if err != nil {
		s.t.Fatalf("the client did not (re)connect: %v", err)
	}
	s.t.Cleanup(func() { conn.Close() })
	c := &gpsdConn{t: s.t, Conn: conn, r: bufio.NewReader(conn)}
	c.send(`{"class":"VERSION","release":"3.25","rev":"3.25","proto_major":3,"proto_minor":15}`)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	watch, err := c.r.ReadString('\n')
	if err != nil {
		s.t.Fatalf("reading the client's command: %v", err)
	}
	c.send(`{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/ttyUSB0","driver":"NMEA0183","activated":"2025-05-01T10:00:00.000Z","flags":1,"native":0,"bps":9600,"parity":"N","stopbits":1,"cycle":1.00}]}`,
		`{"class":"WATCH","enable":true,"json":true,"nmea":false,"raw":0,"scaled":false,"timing":false,"split24":false,"pps":false}`)
	return c, strings.TrimSpace(watch)
}

func (c *gpsdConn) send(lines ...string) {
	c.t.Helper()
	for _, l := range lines {
		if _, err := c.Write([]byte(l + "\r\n")); err != nil {
			c.t.Fatalf("fake gpsd write: %v", err)
		}
	}
}

// runGPSD starts a gpsd source against addr; stop cancels it and checks it
// returned nil.
func runGPSD(t *testing.T, addr, device string) (fixes <-chan wire.Fix, reg *prometheus.Registry, stop func()) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Kind, cfg.GPSDAddr, cfg.Path = KindGPSD, addr, device
	cfg.ReconnectMin, cfg.ReconnectMax = 10*time.Millisecond, 50*time.Millisecond
	reg = prometheus.NewRegistry()
	src, err := New(cfg, Deps{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan wire.Fix, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, emitFixes(func(f wire.Fix) { ch <- f })) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return ch, reg, stop
}

func nextFix(t *testing.T, ch <-chan wire.Fix) wire.Fix {
	t.Helper()
	select {
	case f := <-ch:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no fix from the gpsd source")
		return wire.Fix{}
	}
}

// TPV reports as gpsd 3.25 writes them when replaying nl2008u and sl869.
const (
	tpvNoFix = `{"class":"TPV","device":"/dev/ttyUSB0","mode":1}`
	tpv3D    = `{"class":"TPV","device":"/dev/ttyUSB0","status":1,"mode":3,"time":"2015-10-10T09:15:07.000Z","leapseconds":17,"ept":0.005,"lat":48.217345000,"lon":8.414475000,"altHAE":813.8000,"altMSL":766.4000,"alt":766.4000,"epx":4.200,"epy":5.100,"epv":11.500,"track":187.7400,"magtrack":189.1000,"magvar":1.4,"speed":5.191,"climb":0.000,"eps":10.20,"eph":7.000,"sep":47.400,"geoidSep":47.400}`
	tpv3Dold = `{"class":"TPV","device":"/dev/ttyUSB0","mode":3,"time":"2015-10-10T09:15:08.000Z","lat":48.217300000,"lon":8.414466000,"alt":766.5,"epx":3.000,"epy":4.000,"track":188.0,"speed":5.0}`
	tpv2D    = `{"class":"TPV","device":"/dev/ttyUSB0","mode":2,"time":"2012-11-25T10:21:43.990Z","ept":0.005,"lat":-33.679588333,"lon":151.290791667,"altMSL":63.79,"track":155.8000,"speed":3.447}`
	sky      = `{"class":"SKY","device":"/dev/ttyUSB0","xdop":0.57,"ydop":0.64,"vdop":1.10,"hdop":0.70,"pdop":1.30,"nSat":24,"uSat":16,"satellites":[{"PRN":18,"el":39.0,"az":129.0,"ss":41.0,"used":true,"gnssid":0,"svid":18}]}`
)

func TestGPSDReports(t *testing.T) {
	srv := newFakeGPSD(t)
	fixes, reg, stop := runGPSD(t, srv.ln.Addr().String(), "")
	c, watch := srv.accept()
	if watch != `?WATCH={"enable":true,"json":true};` {
		t.Fatalf("client sent %q", watch)
	}
	c.send(tpvNoFix, sky, tpv3D, tpv3D /* repeated epoch */, `{"class":"TPV","mode":3,"time":"bad"}`, "{not json", tpv3Dold, tpv2D)

	checkFix(t, "3-D TPV", nextFix(t, fixes), wantFix{"2015-10-10T09:15:07Z", 48.217345, 8.414475, 766.4, 5.191, 187.74, 7.0 / 2})
	// gpsd before 3.20: alt is MSL; no eph, so √(3²+4²)/2
	checkFix(t, "old gpsd TPV", nextFix(t, fixes), wantFix{"2015-10-10T09:15:08Z", 48.2173, 8.414466, 766.5, 5.0, 188.0, 2.5})
	// 2-D: altitude is not a measurement, no error estimates
	checkFix(t, "2-D TPV", nextFix(t, fixes), wantFix{"2012-11-25T10:21:43.99Z", -33.679588333, 151.290791667, nan, 3.447, 155.8, nan})

	stop()
	for _, c := range []struct {
		name  string
		label []string
		want  float64
	}{
		{"fleet_agent_gps_fixes_total", nil, 3},
		{"fleet_agent_gps_sentences_total", []string{"result", ResultOK}, 6},
		{"fleet_agent_gps_sentences_total", []string{"result", ResultIgnored}, 4}, // VERSION, DEVICES, WATCH, SKY
		{"fleet_agent_gps_sentences_total", []string{"result", ResultMalformed}, 1},
		{"fleet_agent_gps_epochs_dropped_total", []string{"reason", DropNoFix}, 1},
		{"fleet_agent_gps_epochs_dropped_total", []string{"reason", DropDuplicate}, 1},
		{"fleet_agent_gps_epochs_dropped_total", []string{"reason", DropNoTime}, 1},
		{"fleet_agent_gps_reconnects_total", nil, 0},
	} {
		if got := metric(t, reg, c.name, c.label...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.label, got, c.want)
		}
	}
}

func TestGPSDReconnects(t *testing.T) {
	srv := newFakeGPSD(t)
	fixes, reg, stop := runGPSD(t, srv.ln.Addr().String(), "/dev/ttyUSB0")

	// gpsd restarts mid-stream: the first connection dies after one fix.
	c1, watch := srv.accept()
	if watch != `?WATCH={"device":"/dev/ttyUSB0","enable":true,"json":true};` {
		t.Fatalf("client sent %q", watch)
	}
	c1.send(tpv3D)
	checkFix(t, "before", nextFix(t, fixes), wantFix{"2015-10-10T09:15:07Z", 48.217345, 8.414475, 766.4, 5.191, 187.74, 3.5})
	c1.Close()

	// A second connection that gpsd drops before saying anything.
	srv.ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c2, err := srv.ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()

	// The third works. The client remembers the last fix's time across
	// connections, so gpsd repeating it (tpv3D) is dropped as a duplicate.
	c3, _ := srv.accept()
	c3.send(tpv3D, tpv3Dold)
	checkFix(t, "after", nextFix(t, fixes), wantFix{"2015-10-10T09:15:08Z", 48.2173, 8.414466, 766.5, 5.0, 188.0, 2.5})
	stop()

	if got := metric(t, reg, "fleet_agent_gps_reconnects_total"); got != 2 {
		t.Errorf("reconnects = %v, want 2", got)
	}
	if got := metric(t, reg, "fleet_agent_gps_fixes_total"); got != 2 {
		t.Errorf("fixes = %v, want 2", got)
	}
}

// TestGPSDStartsBeforeServer: the agent may start before gpsd; it keeps
// trying until gpsd listens.
func TestGPSDStartsBeforeServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	fixes, reg, stop := runGPSD(t, addr, "")
	deadline := time.Now().Add(10 * time.Second)
	for metric(t, reg, "fleet_agent_gps_reconnects_total") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no reconnect attempts")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	srv := &fakeGPSD{t: t, ln: ln}
	t.Cleanup(func() { ln.Close() })
	c, _ := srv.accept()
	c.send(tpv2D)
	if f := nextFix(t, fixes); f.Time != utc(t, "2012-11-25T10:21:43.99Z") {
		t.Fatalf("%+v", f)
	}
	stop()
}

// TestGPSDCancelWhileBlocked: cancelling Run while it waits on a silent
// connection returns promptly and leaves nothing running (goleak checks).
func TestGPSDCancelWhileBlocked(t *testing.T) {
	srv := newFakeGPSD(t)
	_, _, stop := runGPSD(t, srv.ln.Addr().String(), "")
	c, _ := srv.accept()
	stop()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.r.ReadByte(); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the client did not close its connection: %v", err)
	}
}
