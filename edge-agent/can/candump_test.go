package can

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ecan "go.einride.tech/can"
)

func TestParseCandumpLine(t *testing.T) {
	data := func(b ...byte) (d ecan.Data) { copy(d[:], b); return d }
	for _, tc := range []struct {
		line string
		want LogFrame
	}{
		{"(1436509052.249713) can0 123#DEADBEEF", LogFrame{Time: 1436509052_249713000, Interface: "can0",
			Frame: ecan.Frame{ID: 0x123, Length: 4, Data: data(0xDE, 0xAD, 0xBE, 0xEF)}}},
		{"(1436509052.249713) can0 123#deadbeef\r\n", LogFrame{Time: 1436509052_249713000, Interface: "can0",
			Frame: ecan.Frame{ID: 0x123, Length: 4, Data: data(0xDE, 0xAD, 0xBE, 0xEF)}}},
		{"(1674148739.212264) can0 112#FF0015", LogFrame{Time: 1674148739_212264000, Interface: "can0",
			Frame: ecan.Frame{ID: 0x112, Length: 3, Data: data(0xFF, 0x00, 0x15)}}},
		{"(1.5) vcan1 000#", LogFrame{Time: 1_500000000, Interface: "vcan1", Frame: ecan.Frame{ID: 0}}},
		{"(1.000000001) can0 7FF#00", LogFrame{Time: 1_000000001, Interface: "can0", Frame: ecan.Frame{ID: 0x7FF, Length: 1}}},
		{"(12) can0 18FEF100#0102030405060708", LogFrame{Time: 12e9, Interface: "can0",
			Frame: ecan.Frame{ID: 0x18FEF100, IsExtended: true, Length: 8, Data: data(1, 2, 3, 4, 5, 6, 7, 8)}}},
		{"(12) can0 00000123#01", LogFrame{Time: 12e9, Interface: "can0",
			Frame: ecan.Frame{ID: 0x123, IsExtended: true, Length: 1, Data: data(1)}}},
		{"(1) can0 123#R", LogFrame{Time: 1e9, Interface: "can0", Frame: ecan.Frame{ID: 0x123, IsRemote: true}}},
		{"(1) can0 123#R3", LogFrame{Time: 1e9, Interface: "can0", Frame: ecan.Frame{ID: 0x123, IsRemote: true, Length: 3}}},
		{"(1) can0 123##1DEADBEEF", LogFrame{Time: 1e9, Interface: "can0", Frame: ecan.Frame{ID: 0x123}, FD: true, FDLength: 4}},
		{"(1) can0 20000004#0000080000000000", LogFrame{Time: 1e9, Interface: "can0",
			Frame: ecan.Frame{ID: 4, Length: 8, Data: data(0, 0, 8)}, Error: true}},
		{"(1) can0 123#11.22.33", LogFrame{Time: 1e9, Interface: "can0", Frame: ecan.Frame{ID: 0x123, Length: 3, Data: data(0x11, 0x22, 0x33)}}},
		{"(1) can0 123#1122334455667788_C", LogFrame{Time: 1e9, Interface: "can0",
			Frame: ecan.Frame{ID: 0x123, Length: 8, Data: data(0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88)}}},
		{"(1) can0 123#01 R", LogFrame{Time: 1e9, Interface: "can0", Frame: ecan.Frame{ID: 0x123, Length: 1, Data: data(1)}}},
		{"\t(1)\tcan0\t123#01\t", LogFrame{Time: 1e9, Interface: "can0", Frame: ecan.Frame{ID: 0x123, Length: 1, Data: data(1)}}},
	} {
		got, err := ParseCandumpLine([]byte(tc.line))
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.line, got, tc.want)
		}
	}
}

func TestParseCandumpLineErrors(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"", "blank line"},
		{"   \r\n", "blank line"},
		{"garbage", "want \"(seconds.micros) interface ID#DATA\""},
		{"(1) can0", "want \"(seconds.micros) interface ID#DATA\""},
		{"1436509052.249713 can0 123#00", "timestamp"},
		{"(1436509052.) can0 123#00", "empty fraction"},
		{"(-1.5) can0 123#00", "not a decimal number"},
		{"(1.0000000001) can0 123#00", "9 of fraction"},
		{"(99999999999.0) can0 123#00", "10 digits of seconds"},
		{"(1) can0 123", "no '#'"},
		{"(1) can0 800#00", "standard ID above 0x7FF"},
		{"(1) can0 1234#00", "3- or 8-digit"},
		{"(1) can0 40000000#00", "extended ID above 0x1FFFFFFF"},
		{"(1) can0 12G#00", "ID is not hex"},
		{"(1) can0 123#ABC", "odd number of hex digits"},
		{"(1) can0 123#ZZ", "data is not hex"},
		{"(1) can0 123#112233445566778899", "more than 8 data bytes"},
		{"(1) can0 123#R9", "bad remote frame length"},
		{"(1) can0 123##", "CAN FD frame without flags"},
		{"(1) can0 123##1ABC", "odd number"},
		{"(1) can0 123#00 X", "unexpected field"},
		{"(1) can0 123#00 R R", "unexpected fields"},
		{"(1) can0 123#0011_C", "raw DLC only after 8 data bytes"},
	} {
		_, err := ParseCandumpLine([]byte(tc.line))
		if !errors.Is(err, ErrBadLine) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want ErrBadLine mentioning %q", tc.line, err, tc.want)
		}
	}
}

func TestCandumpReader(t *testing.T) {
	long := "(1) can0 123#" + strings.Repeat("00", maxLine)
	in := "(1.000001) can0 123#01\n\ngarbage\n" + long + "\n(2) can1 456#02\n(3) can1 456#03"
	r := NewCandumpReader(strings.NewReader(in))
	type result struct {
		line  int
		iface string
		id    uint32
		bad   bool
	}
	var got []result
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, ErrBadLine) {
			t.Fatal(err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "line ") {
			t.Errorf("bad line error %q does not name the line", err)
		}
		got = append(got, result{r.Line(), f.Interface, f.Frame.ID, err != nil})
	}
	want := []result{{1, "can0", 0x123, false}, {2, "", 0, true}, {3, "", 0, true}, {4, "", 0, true},
		{5, "can1", 0x456, false}, {6, "can1", 0x456, false}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// seedLines are the fuzz seeds: testdata/can/candump_seeds.txt and the
// fixture log.
func seedLines(t testing.TB) []string {
	var lines []string
	for _, name := range []string{"candump_seeds.txt", "test.candump.log"} {
		f, err := os.Open(filepath.Join(fixtureDir(), name))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		f.Close()
	}
	return lines
}

// FuzzCandumpLine checks that the parser never panics, that what it accepts
// is a well-formed frame, and that formatting an accepted classic frame and
// parsing it again gives the same frame.
func FuzzCandumpLine(f *testing.F) {
	for _, l := range seedLines(f) {
		f.Add(l)
	}
	f.Fuzz(func(t *testing.T, line string) {
		got, err := ParseCandumpLine([]byte(line))
		if err != nil {
			if !errors.Is(err, ErrBadLine) {
				t.Fatalf("error %v does not wrap ErrBadLine", err)
			}
			return
		}
		if got.Time < 0 || got.Interface == "" {
			t.Fatalf("accepted %q as %+v", line, got)
		}
		valid := got.Frame.Validate() == nil
		if got.Error { // the ID holds error class bits
			valid = got.Frame.ID <= ecan.MaxExtendedID && !got.Frame.IsExtended && !got.Frame.IsRemote
		}
		if !valid || got.Frame.Length > 8 || (got.FD && got.FDLength > 64) {
			t.Fatalf("accepted %q as invalid frame %+v", line, got)
		}
		if got.FD {
			return
		}
		again, err := ParseCandumpLine([]byte(got.String()))
		if err != nil {
			t.Fatalf("%q formats as %q, which does not parse: %v", line, got.String(), err)
		}
		if again != got {
			t.Fatalf("%q -> %+v -> %q -> %+v", line, got, got.String(), again)
		}
	})
}
