package can

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// EnvCantoolsPython names a python3 that can import cantools (PyPI), the
// independent DBC decoder the decoding is checked against, e.g.
//
//	python3 -m venv /tmp/venv && /tmp/venv/bin/pip install cantools
//	FLEET_TEST_CANTOOLS_PYTHON=/tmp/venv/bin/python go test ./edge-agent/can/
const EnvCantoolsPython = "FLEET_TEST_CANTOOLS_PYTHON"

// ctRecord is one line of testdata/can/decode_cantools.py's output.
type ctRecord struct {
	Line   int                        `json:"line"`
	TS     string                     `json:"ts"`
	ID     uint32                     `json:"id"`
	Ext    bool                       `json:"ext"`
	Result string                     `json:"result"`
	Phys   map[string]json.RawMessage `json:"phys"`
	Raw    map[string]json.RawMessage `json:"raw"`
}

// goLine is what the Go side made of one log line.
type goLine struct {
	time   int64
	result FrameResult
	values []Decoded
}

func decodeLinesGo(t *testing.T, d *Decoder, logPath string) map[int]goLine {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := NewCandumpReader(f)
	out := map[int]goLine{}
	for {
		lf, err := r.Next()
		switch {
		case errors.Is(err, io.EOF):
			return out
		case errors.Is(err, ErrBadLine):
			out[r.Line()] = goLine{result: ResultBadLine}
			continue
		case err != nil:
			t.Fatal(err)
		}
		gl := goLine{time: lf.Time}
		switch {
		case lf.Error:
			gl.result = ResultErrorFrame
		case lf.FD:
			gl.result = ResultCANFD
		default:
			gl.values, gl.result = d.Decode(lf.Frame, nil)
		}
		out[r.Line()] = gl
	}
}

func runCantools(t *testing.T, python, dbcPath, logPath string) []ctRecord {
	t.Helper()
	cmd := exec.Command(python, fixture("decode_cantools.py"), dbcPath, logPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("decode_cantools.py: %v: %s", err, stderr.String())
	}
	var recs []ctRecord
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r ctRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("cantools output %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// compareWithCantools decodes a log with the Go decoder and with cantools
// and requires the same result for every line and, for every decoded
// frame, the same signals with bit-identical physical values and equal raw
// values. It returns the frames and values compared.
func compareWithCantools(t *testing.T, python, dbcPath, logPath string) (frames, values, muxRefused int) {
	d, err := LoadDBC(dbcPath)
	if err != nil {
		t.Fatal(err)
	}
	goLines := decodeLinesGo(t, d, logPath)
	recs := runCantools(t, python, dbcPath, logPath)
	if len(recs) != len(goLines) {
		t.Fatalf("cantools reports %d lines, Go %d", len(recs), len(goLines))
	}
	fails := 0
	fail := func(format string, a ...any) {
		if fails++; fails <= 20 {
			t.Errorf(format, a...)
		}
	}
	for _, ct := range recs {
		g, ok := goLines[ct.Line]
		if !ok {
			t.Fatalf("line %d: not seen by Go", ct.Line)
		}
		if ct.TS != "" && fmt.Sprintf("%d.%06d", g.time/1e9, g.time%1e9/1e3) != ct.TS {
			fail("line %d: Go time %d, cantools %s", ct.Line, g.time, ct.TS)
		}
		switch {
		case ct.Result == "skipped":
			if g.result != ResultBadLine && g.result != ResultRemote && g.result != ResultCANFD {
				fail("line %d: cantools skipped it, Go: %s", ct.Line, g.result)
			}
		case ct.Result == "unknown_id" && ct.Ext && ct.ID&canErrFlag != 0:
			if g.result != ResultErrorFrame {
				fail("line %d: error frame, Go: %s", ct.Line, g.result)
			}
		case ct.Result == "unknown_id" || ct.Result == "dlc_mismatch":
			if string(g.result) != ct.Result {
				fail("line %d: cantools %s, Go %s", ct.Line, ct.Result, g.result)
			}
		case strings.HasPrefix(ct.Result, "error: expected multiplexer id"):
			// A multiplexer value with no multiplexed signals: cantools
			// refuses the frame; Go keeps the switch and the plain signals.
			muxRefused++
			for _, v := range g.values {
				if v.Signal.Multiplexed {
					fail("line %d: %s decoded for an unknown multiplexer value", ct.Line, v.Signal.FullName)
				}
			}
			if g.result != ResultDecoded {
				fail("line %d: Go %s", ct.Line, g.result)
			}
		case ct.Result == "decoded":
			if g.result != ResultDecoded {
				fail("line %d: cantools decoded it, Go: %s", ct.Line, g.result)
				continue
			}
			frames++
			if len(g.values) != len(ct.Phys) {
				fail("line %d: Go %d signals, cantools %d", ct.Line, len(g.values), len(ct.Phys))
			}
			for _, v := range g.values {
				values++
				name := v.Signal.Name
				phys, err1 := strconv.ParseFloat(string(ct.Phys[name]), 64)
				if err1 != nil || v.Physical != phys {
					fail("line %d: %s = %v (raw %d), cantools %s", ct.Line, v.Signal.FullName, v.Physical, v.Raw, ct.Phys[name])
				}
				rawText := string(ct.Raw[name])
				var rawOK bool
				switch v.Signal.Type {
				case ValueFloat32:
					f, err := strconv.ParseFloat(rawText, 64)
					rawOK = err == nil && f == float64(math.Float32frombits(uint32(v.Raw)))
				case ValueFloat64:
					f, err := strconv.ParseFloat(rawText, 64)
					rawOK = err == nil && f == math.Float64frombits(uint64(v.Raw))
				default:
					n, err := strconv.ParseInt(rawText, 10, 64)
					rawOK = err == nil && n == v.Raw
				}
				if !rawOK {
					fail("line %d: %s raw %d, cantools %s", ct.Line, v.Signal.FullName, v.Raw, rawText)
				}
			}
		default:
			fail("line %d: cantools: %s", ct.Line, ct.Result)
		}
	}
	return frames, values, muxRefused
}

// TestAgainstCantools checks the decoder against cantools on the real
// pairs and on the project's own fixture.
func TestAgainstCantools(t *testing.T) {
	python := os.Getenv(EnvCantoolsPython)
	if python == "" {
		t.Skip("independent decoder not available: " + EnvCantoolsPython + " is not set (a python3 with cantools from PyPI: " +
			"python3 -m venv /tmp/venv && /tmp/venv/bin/pip install cantools)")
	}
	for _, tc := range []struct {
		name, dbc, log         string
		frames, values, refuse int
	}{
		{"fixture", fixture(fixtureDBC), fixture(fixtureLog), 8, 32, 1},
		{"civic", testenv.SharedData(t, civicDBC), testenv.SharedData(t, civicLog), 16032, 100207, 0},
		{"kona", testenv.SharedData(t, konaDBC), testenv.SharedData(t, konaLog), 14250, 156041, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frames, values, refused := compareWithCantools(t, python, tc.dbc, tc.log)
			t.Logf("%s: %d frames, %d values bit-identical to cantools (raw and physical); %d frames cantools refuses", tc.name, frames, values, refused)
			if frames != tc.frames || values != tc.values || refused != tc.refuse {
				t.Errorf("compared %d frames, %d values, %d refused; want %d, %d, %d", frames, values, refused, tc.frames, tc.values, tc.refuse)
			}
		})
	}
}
