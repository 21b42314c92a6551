package gps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// MaxGPSDLineBytes bounds one gpsd JSON report; longer ones (a SKY with a
// huge satellite list) are counted malformed and skipped.
const MaxGPSDLineBytes = 64 << 10

// gpsdErrorToSigma turns gpsd's error estimates (eph, epx, epy), which gpsd
// documents at 95% confidence (newer releases say "certainty unknown"; its
// own error model still scales DOPs by a 95% range error), into the 1-sigma
// horizontal accuracy wire.Fix carries: for a 2-D normal error 95% is about
// twice the DRMS.
const gpsdErrorToSigma = 0.5

// GPSDSource is a gpsd client. It connects to Config.GPSDAddr, asks for JSON
// reports with ?WATCH={"enable":true,"json":true} (naming Config.Path as the
// device when set) and turns each TPV report with mode 2 (2-D) or 3 (3-D)
// into a fix:
//
//	Time      time (RFC 3339, UTC)          Lat, Lon  lat, lon
//	Alt       altMSL, else alt (mode 3)     Speed     speed (m/s)
//	Heading   track (degrees true)          Accuracy  eph, else √(epx²+epy²), × 0.5
//
// A TPV with mode 0 or 1 is dropped as no_fix, without time or position as
// no_time or no_position, and one repeating the time of the device's
// previous fix as duplicate. Other report classes are counted as ignored.
//
// When the connection fails or gpsd closes it, Run reconnects after a
// jittered exponential backoff between Config.ReconnectMin and
// ReconnectMax (reset once a connection has delivered a fix), counting
// fleet_agent_gps_reconnects_total. Run returns nil when ctx is cancelled,
// closing the connection; it starts no goroutine that outlives it.
type GPSDSource struct {
	cfg Config
	m   *Metrics
	log *slog.Logger
}

// tpv is the part of gpsd's TPV report a fix uses; pointers are nil when
// the field is absent.
type tpv struct {
	Class  string   `json:"class"`
	Device string   `json:"device"`
	Mode   int      `json:"mode"`
	Time   string   `json:"time"`
	Lat    *float64 `json:"lat"`
	Lon    *float64 `json:"lon"`
	AltMSL *float64 `json:"altMSL"`
	Alt    *float64 `json:"alt"`
	Speed  *float64 `json:"speed"`
	Track  *float64 `json:"track"`
	Eph    *float64 `json:"eph"`
	Epx    *float64 `json:"epx"`
	Epy    *float64 `json:"epy"`
}

// gpsdMessage is what the client reads of any report.
type gpsdMessage struct {
	Class   string `json:"class"`
	Release string `json:"release"`
	Message string `json:"message"`
}

// Run reads fixes from gpsd until ctx is cancelled.
func (g *GPSDSource) Run(ctx context.Context, out source.Emit) error {
	emit := fixEmitter(out)
	bo := backoff{min: g.cfg.ReconnectMin, max: g.cfg.ReconnectMax}
	last := map[string]int64{} // device -> time of its last fix
	for first := true; ; first = false {
		if !first {
			g.m.reconnect()
			if !sleep(ctx, bo.next()) {
				return nil
			}
		}
		fixes, err := g.session(ctx, emit, last)
		if ctx.Err() != nil {
			return nil
		}
		if fixes > 0 {
			bo.reset()
		}
		g.log.Warn("gpsd connection ended; reconnecting", "addr", g.cfg.GPSDAddr, "fixes", fixes, "err", err)
	}
}

// session runs one connection and returns how many fixes it delivered.
func (g *GPSDSource) session(ctx context.Context, emit func(wire.Fix), last map[string]int64) (int, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", g.cfg.GPSDAddr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // unblocks the read
	defer stop()

	watch := map[string]any{"enable": true, "json": true}
	if g.cfg.Path != "" {
		watch["device"] = g.cfg.Path
	}
	cmd, _ := json.Marshal(watch)
	if _, err := conn.Write([]byte("?WATCH=" + string(cmd) + ";\n")); err != nil {
		return 0, fmt.Errorf("gpsd: sending WATCH: %w", err)
	}

	lr := newLineReader(conn, MaxGPSDLineBytes)
	fixes := 0
	for {
		line, err := lr.next()
		switch {
		case errors.Is(err, errLineTooLong):
			g.m.sentence(ResultMalformed)
			continue
		case err != nil:
			return fixes, err
		}
		fix, ok := g.report(line, last)
		if ok {
			fixes++
			g.m.fix()
			emit(fix)
		}
	}
}

// report handles one line of gpsd output.
func (g *GPSDSource) report(line []byte, last map[string]int64) (wire.Fix, bool) {
	var msg gpsdMessage
	if err := json.Unmarshal(line, &msg); err != nil {
		g.m.sentence(ResultMalformed)
		return wire.Fix{}, false
	}
	switch msg.Class {
	case "TPV":
	case "VERSION":
		g.log.Info("gpsd connected", "addr", g.cfg.GPSDAddr, "release", msg.Release)
		g.m.sentence(ResultIgnored)
		return wire.Fix{}, false
	case "ERROR":
		g.log.Warn("gpsd error", "message", msg.Message)
		g.m.sentence(ResultIgnored)
		return wire.Fix{}, false
	default:
		g.m.sentence(ResultIgnored)
		return wire.Fix{}, false
	}
	var r tpv
	if err := json.Unmarshal(line, &r); err != nil {
		g.m.sentence(ResultMalformed)
		return wire.Fix{}, false
	}
	g.m.sentence(ResultOK)
	fix, reason := tpvFix(r)
	if lt, seen := last[r.Device]; reason == "" && seen && lt == fix.Time {
		reason = DropDuplicate
	}
	if reason != "" {
		g.m.drop(reason)
		return wire.Fix{}, false
	}
	last[r.Device] = fix.Time
	return fix, true
}

// tpvFix converts a TPV report, or says why it gives no fix.
func tpvFix(r tpv) (wire.Fix, string) {
	if r.Mode < 2 {
		return wire.Fix{}, DropNoFix
	}
	t, err := time.Parse(time.RFC3339Nano, r.Time)
	if err != nil {
		return wire.Fix{}, DropNoTime
	}
	if r.Lat == nil || r.Lon == nil || !(math.Abs(*r.Lat) <= 90) || !(math.Abs(*r.Lon) <= 180) {
		return wire.Fix{}, DropNoPosition
	}
	f := wire.Fix{Time: t.UnixNano(), Lat: *r.Lat, Lon: *r.Lon,
		Alt: math.NaN(), Speed: math.NaN(), Heading: math.NaN(), Accuracy: math.NaN()}
	if r.Mode >= 3 {
		switch {
		case r.AltMSL != nil:
			f.Alt = *r.AltMSL
		case r.Alt != nil: // gpsd before 3.20: MSL
			f.Alt = *r.Alt
		}
	}
	if r.Speed != nil && *r.Speed >= 0 {
		f.Speed = *r.Speed
	}
	if r.Track != nil && *r.Track >= 0 && *r.Track <= 360 {
		f.Heading = *r.Track
	}
	switch {
	case r.Eph != nil && *r.Eph >= 0:
		f.Accuracy = *r.Eph * gpsdErrorToSigma
	case r.Epx != nil && r.Epy != nil && *r.Epx >= 0 && *r.Epy >= 0:
		f.Accuracy = math.Hypot(*r.Epx, *r.Epy) * gpsdErrorToSigma
	}
	return f, ""
}
