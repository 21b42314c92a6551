package can

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	ecan "go.einride.tech/can"
)

// ErrBadLine is wrapped by the errors CandumpReader.Next and
// ParseCandumpLine return for a line that is not a candump -L frame. Such
// errors are not fatal: reading can go on with the next line.
var ErrBadLine = errors.New("not a candump -L frame")

// Linux CAN ID flag that candump writes into 8-digit error frame IDs.
const canErrFlag = 0x20000000

// LogFrame is one frame of a `candump -L` log.
type LogFrame struct {
	Time      int64  // Unix nanoseconds, exactly as logged (candump writes microseconds)
	Interface string // e.g. "can0"
	// Frame is the classic CAN frame. For a remote frame it holds the ID,
	// IsRemote and the requested length; for an error frame the error
	// class bits in ID; for a CAN FD frame the ID only.
	Frame    ecan.Frame
	Error    bool // an error frame (ID with CAN_ERR_FLAG)
	FD       bool // a CAN FD frame ("ID##F..."): not decodable as classic CAN
	FDLength int  // data bytes of a CAN FD frame
}

// String formats the frame as a candump -L line without the newline. CAN FD
// frames carry no data here and print with zero bytes.
func (f LogFrame) String() string {
	var b strings.Builder
	b.Grow(64)
	sec, ns := f.Time/1e9, f.Time%1e9
	if ns < 0 {
		sec, ns = sec-1, ns+1e9
	}
	frac := fmt.Sprintf("%09d", ns)
	if ns%1000 == 0 {
		frac = frac[:6] // candump's microseconds
	}
	fmt.Fprintf(&b, "(%d.%s) %s ", sec, frac, f.Interface)
	id := f.Frame.ID
	switch {
	case f.Error:
		fmt.Fprintf(&b, "%08X", id|canErrFlag)
	case f.Frame.IsExtended:
		fmt.Fprintf(&b, "%08X", id)
	default:
		fmt.Fprintf(&b, "%03X", id)
	}
	switch {
	case f.FD:
		b.WriteString("##0")
	case f.Frame.IsRemote:
		b.WriteString("#R")
		if f.Frame.Length > 0 {
			b.WriteByte('0' + f.Frame.Length)
		}
	default:
		fmt.Fprintf(&b, "#%X", f.Frame.Data[:f.Frame.Length])
	}
	return b.String()
}

// ParseCandumpLine parses one line of a `candump -L` log:
//
//	(1436509052.249713) can0 123#DEADBEEF
//
// Standard IDs have 3 hex digits, extended IDs 8 (error frames have
// CAN_ERR_FLAG 0x20000000 set). "123#R" and "123#R5" are remote frames,
// "123##1..." CAN FD frames; data bytes may be separated by '.'; a trailing
// "_X" raw DLC and a trailing R/T direction field are accepted and
// ignored. A trailing newline or CR is allowed. Errors wrap ErrBadLine.
func ParseCandumpLine(line []byte) (LogFrame, error) {
	f, iface, err := parseLine(line)
	if err != nil {
		return LogFrame{}, err
	}
	f.Interface = string(iface)
	return f, nil
}

func badLine(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadLine}, a...)...)
}

// parseLine does the work of ParseCandumpLine without allocating (except
// for errors); iface aliases line.
func parseLine(line []byte) (f LogFrame, iface []byte, err error) {
	for n := len(line); n > 0 && (line[n-1] == '\n' || line[n-1] == '\r'); n = len(line) {
		line = line[:n-1]
	}
	rest := line
	next := func() []byte { // the next whitespace-separated field
		for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
			rest = rest[1:]
		}
		i := 0
		for i < len(rest) && rest[i] != ' ' && rest[i] != '\t' {
			i++
		}
		field := rest[:i]
		rest = rest[i:]
		return field
	}
	ts, iface, frame := next(), next(), next()
	if len(ts) == 0 {
		return f, nil, badLine("blank line")
	}
	if len(frame) == 0 {
		return f, nil, badLine("want \"(seconds.micros) interface ID#DATA\", got %.40q", line)
	}
	if dir := next(); len(dir) > 0 && !(len(dir) == 1 && (dir[0] == 'R' || dir[0] == 'T')) {
		return f, nil, badLine("unexpected field %.20q after the frame", dir)
	}
	if len(next()) > 0 {
		return f, nil, badLine("unexpected fields after the frame")
	}
	if f.Time, err = parseTimestamp(ts); err != nil {
		return f, nil, err
	}
	if err := parseFrame(frame, &f); err != nil {
		return f, nil, err
	}
	return f, iface, nil
}

// parseTimestamp turns "(seconds.fraction)" into Unix ns by integer
// arithmetic: no float64 rounding.
func parseTimestamp(ts []byte) (int64, error) {
	if len(ts) < 3 || ts[0] != '(' || ts[len(ts)-1] != ')' {
		return 0, badLine("timestamp %.30q: want (seconds.fraction)", ts)
	}
	ts = ts[1 : len(ts)-1]
	secPart, fracPart := ts, []byte(nil)
	for i, c := range ts {
		if c == '.' {
			secPart, fracPart = ts[:i], ts[i+1:]
			if len(fracPart) == 0 {
				return 0, badLine("timestamp %q: empty fraction", ts)
			}
			break
		}
	}
	if len(secPart) == 0 || len(secPart) > 10 || len(fracPart) > 9 {
		return 0, badLine("timestamp %.30q: want up to 10 digits of seconds and 9 of fraction", ts)
	}
	var sec, frac int64
	for _, c := range secPart {
		if c < '0' || c > '9' {
			return 0, badLine("timestamp %.30q: not a decimal number", ts)
		}
		sec = sec*10 + int64(c-'0')
	}
	for _, c := range fracPart {
		if c < '0' || c > '9' {
			return 0, badLine("timestamp %.30q: not a decimal number", ts)
		}
		frac = frac*10 + int64(c-'0')
	}
	for range 9 - len(fracPart) {
		frac *= 10
	}
	if sec > (math.MaxInt64-frac)/1e9 {
		return 0, badLine("timestamp %.30q: after the year 2262", ts)
	}
	return sec*1e9 + frac, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func parseFrame(s []byte, f *LogFrame) error {
	hash := -1
	for i, c := range s {
		if c == '#' {
			hash = i
			break
		}
	}
	if hash < 0 {
		return badLine("frame %.40q: no '#'", s)
	}
	idPart, data := s[:hash], s[hash+1:]
	var id uint32
	for _, c := range idPart {
		v, ok := unhex(c)
		if !ok {
			return badLine("frame %.40q: ID is not hex", s)
		}
		id = id<<4 | uint32(v)
	}
	switch len(idPart) {
	case 3:
		if id > ecan.MaxID {
			return badLine("frame %.40q: standard ID above 0x7FF", s)
		}
	case 8:
		switch {
		case id&canErrFlag != 0 && id&^canErrFlag <= ecan.MaxExtendedID:
			f.Error = true
			id &^= canErrFlag
		case id > ecan.MaxExtendedID:
			return badLine("frame %.40q: extended ID above 0x1FFFFFFF", s)
		default:
			f.Frame.IsExtended = true
		}
	default:
		return badLine("frame %.40q: want a 3- or 8-digit hex ID", s)
	}
	if f.Error && (len(data) > 0 && (data[0] == 'R' || data[0] == '#')) {
		return badLine("frame %.40q: error frame with remote or FD marker", s)
	}
	f.Frame.ID = id
	switch {
	case len(data) > 0 && data[0] == '#': // CAN FD: ##<flags><data>
		if len(data) < 2 {
			return badLine("frame %.40q: CAN FD frame without flags", s)
		}
		if _, ok := unhex(data[1]); !ok {
			return badLine("frame %.40q: CAN FD flags are not hex", s)
		}
		n, err := countHexBytes(data[2:], 64)
		if err != nil {
			return badLine("frame %.40q: %v", s, err)
		}
		f.FD, f.FDLength = true, n
		return nil
	case len(data) > 0 && data[0] == 'R': // remote: R, R<dlc>, R<dlc>_<raw dlc>
		f.Frame.IsRemote = true
		rest := data[1:]
		if len(rest) > 0 && rest[0] >= '0' && rest[0] <= '8' {
			f.Frame.Length = rest[0] - '0'
			rest = rest[1:]
		}
		if len(rest) == 2 && rest[0] == '_' && f.Frame.Length == 8 {
			if v, ok := unhex(rest[1]); ok && v > 8 {
				rest = nil // raw DLC 9..F of an 8-byte request
			}
		}
		if len(rest) > 0 {
			return badLine("frame %.40q: bad remote frame length", s)
		}
		return nil
	}
	n := 0
	for i := 0; i < len(data); {
		switch {
		case data[i] == '.':
			i++
		case data[i] == '_': // raw DLC 9..F of an 8-byte frame
			if n != 8 || len(data) != i+2 {
				return badLine("frame %.40q: '_' raw DLC only after 8 data bytes", s)
			}
			if v, ok := unhex(data[i+1]); !ok || v <= 8 {
				return badLine("frame %.40q: raw DLC must be 9..F", s)
			}
			i = len(data)
		default:
			if i+1 >= len(data) {
				return badLine("frame %.40q: odd number of hex digits", s)
			}
			hi, ok1 := unhex(data[i])
			lo, ok2 := unhex(data[i+1])
			if !ok1 || !ok2 {
				return badLine("frame %.40q: data is not hex", s)
			}
			if n == ecan.MaxDataLength {
				return badLine("frame %.40q: more than 8 data bytes after '#' (CAN FD uses '##')", s)
			}
			f.Frame.Data[n] = hi<<4 | lo
			n++
			i += 2
		}
	}
	f.Frame.Length = uint8(n)
	return nil
}

func countHexBytes(data []byte, limit int) (int, error) {
	n := 0
	for i := 0; i < len(data); {
		if data[i] == '.' {
			i++
			continue
		}
		if i+1 >= len(data) {
			return 0, errors.New("odd number of hex digits")
		}
		if _, ok := unhex(data[i]); !ok {
			return 0, errors.New("data is not hex")
		}
		if _, ok := unhex(data[i+1]); !ok {
			return 0, errors.New("data is not hex")
		}
		n++
		i += 2
	}
	if n > limit {
		return 0, fmt.Errorf("%d data bytes, more than %d", n, limit)
	}
	return n, nil
}

// maxLine bounds a log line; longer lines are skipped as bad lines.
const maxLine = 4096

// CandumpReader reads frames from a `candump -L` log. It is not safe for
// concurrent use.
type CandumpReader struct {
	r     *bufio.Reader
	line  int
	iface string
}

// NewCandumpReader reads the log from r.
func NewCandumpReader(r io.Reader) *CandumpReader {
	return &CandumpReader{r: bufio.NewReaderSize(r, maxLine)}
}

// Line is the number of the line Next last returned (1-based).
func (c *CandumpReader) Line() int { return c.line }

// Next returns the next frame. At the end of the log it returns io.EOF. A
// line that is not a frame gives an error wrapping ErrBadLine (naming the
// line) and the next call goes on with the following line; any other error
// is the underlying reader's and is final.
func (c *CandumpReader) Next() (LogFrame, error) {
	line, err := c.r.ReadSlice('\n')
	if len(line) == 0 && err != nil {
		return LogFrame{}, err
	}
	c.line++
	if err == bufio.ErrBufferFull {
		for err == bufio.ErrBufferFull {
			_, err = c.r.ReadSlice('\n')
		}
		if err != nil && err != io.EOF {
			return LogFrame{}, err
		}
		return LogFrame{}, fmt.Errorf("line %d: %w: longer than %d bytes", c.line, ErrBadLine, maxLine)
	}
	if err != nil && err != io.EOF {
		return LogFrame{}, err
	}
	f, iface, perr := parseLine(line)
	if perr != nil {
		return LogFrame{}, fmt.Errorf("line %d: %w", c.line, perr)
	}
	if string(iface) != c.iface { // no allocation when equal
		c.iface = string(iface)
	}
	f.Interface = c.iface
	return f, nil
}
