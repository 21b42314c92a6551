package gps

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"strconv"
	"strings"
	"time"

	nmea "github.com/adrianmo/go-nmea"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// MaxLineBytes is the longest NMEA line the decoder reads; longer lines are
// counted malformed. NMEA 0183 allows 82 bytes; receivers with proprietary
// sentences and tag blocks go beyond, so this is generous.
const MaxLineBytes = 1024

// KnotsToMPS converts knots to metres per second: exactly 1852/3600.
func KnotsToMPS(kn float64) float64 { return kn * 1852 / 3600 }

// dateCarryWindow is how far (forward in time of day) an epoch that carries
// no date of its own — a GGA without RMC or ZDA — may be from the last dated
// epoch and still take that date (the next day's, across midnight). Beyond
// it the date is unknown and the epoch is dropped as no_time.
const dateCarryWindow = 60 * time.Second

const (
	msPerDay = 24 * 60 * 60 * 1000
	noTime   = -1
	maxTypes = 64 // distinct sentence types Stats counts (a noisy line stays bounded)
)

var (
	errNoChecksum  = errors.New("no checksum")
	errBadChecksum = errors.New("checksum mismatch")
	errUnused      = errors.New("sentence type not used")
)

// DecoderOptions configure a Decoder.
type DecoderOptions struct {
	// UERE in metres (1 sigma) turns GGA's HDOP into Accuracy:
	// 0 means DefaultUERE, a negative value leaves Accuracy NaN.
	UERE float64
	// Metrics, if not nil, counts sentences, fixes and dropped epochs.
	Metrics *Metrics
}

// Stats counts what a Decoder read. The maps are copies.
type Stats struct {
	Sentences map[string]int // by result: ResultOK, ResultIgnored, ...
	Types     map[string]int // sentences with a good checksum, by type: "RMC", "GGA", "GSV", ...
	Dropped   map[string]int // epochs without a fix, by reason: DropNoFix, ...
	Fixes     int
}

// Decoder assembles NMEA 0183 sentences, one line at a time, into fixes.
//
// It verifies every checksum (sentences with a wrong or missing one are
// counted and skipped), skips gpsfake's '#' comment lines and blank lines,
// and uses RMC, GGA, VTG and ZDA from any talker (GP, GN, GL, GA, ...);
// everything else is counted as ignored.
//
// Sentences with the same UTC time of day form one epoch, and an epoch
// becomes at most one fix:
//   - RMC gives time, date, position, speed and course, and its status
//     (V, or FAA mode N, means no fix);
//   - GGA gives altitude (metres above mean sea level), fix quality (0 means
//     no fix) and HDOP; Accuracy = HDOP × UERE, NaN without a GGA, with an
//     HDOP of 99 or more (the receivers' "unknown") or with UERE off;
//   - VTG, which carries no time, belongs to the epoch being assembled and
//     fills speed and course where RMC leaves them empty;
//   - ZDA gives the date to an epoch without RMC.
//
// An epoch is complete once it has both RMC and GGA, when a sentence with
// another time arrives, or on Flush; later sentences of a completed epoch are
// not merged. An epoch without a date of its own takes the date of the
// previous dated one if it is at most a minute later in time of day (rolling
// over at midnight). Time is the RMC/GGA UTC time to the millisecond the
// sentence gives (two-digit years are 2000-2079 or 1980-1999); speed is
// knots × 1852/3600. Fields the epoch lacks are NaN.
//
// A Decoder is not safe for concurrent use.
type Decoder struct {
	parser nmea.SentenceParser
	uere   float64
	m      *Metrics
	stats  Stats

	cur       epoch
	closedKey int64 // time of day of the last completed epoch, or noTime

	haveDate bool
	lastDay  time.Time // UTC midnight of the last dated epoch
	lastTOD  int64     // its time of day, ms
}

type epoch struct {
	open bool
	key  int64 // ms since UTC midnight, or noTime
	rmc  *nmea.RMC
	gga  *nmea.GGA
	vtg  *nmea.VTG
	zda  *nmea.ZDA
}

// NewDecoder returns a Decoder.
func NewDecoder(opt DecoderOptions) *Decoder {
	uere := opt.UERE
	switch {
	case uere == 0:
		uere = DefaultUERE
	case uere < 0 || math.IsNaN(uere):
		uere = math.NaN()
	}
	d := &Decoder{
		uere:      uere,
		m:         opt.Metrics,
		closedKey: noTime,
		stats: Stats{
			Sentences: map[string]int{},
			Types:     map[string]int{},
			Dropped:   map[string]int{},
		},
	}
	d.parser = nmea.SentenceParser{
		NaNForEmptyFloat: true,
		CheckCRC: func(s nmea.BaseSentence, fields string) error {
			if s.Checksum == "" {
				return errNoChecksum
			}
			if nmea.Checksum(fields) != s.Checksum {
				return errBadChecksum
			}
			return nil
		},
		OnBaseSentence: func(s *nmea.BaseSentence) error {
			if _, seen := d.stats.Types[s.Type]; seen || len(d.stats.Types) < maxTypes {
				d.stats.Types[s.Type]++
			}
			switch s.Type {
			case nmea.TypeRMC, nmea.TypeGGA, nmea.TypeVTG, nmea.TypeZDA:
				return nil
			}
			return errUnused
		},
	}
	return d
}

// Stats returns what the decoder has read so far.
func (d *Decoder) Stats() Stats {
	return Stats{
		Sentences: maps.Clone(d.stats.Sentences),
		Types:     maps.Clone(d.stats.Types),
		Dropped:   maps.Clone(d.stats.Dropped),
		Fixes:     d.stats.Fixes,
	}
}

func (d *Decoder) count(result string) {
	d.stats.Sentences[result]++
	d.m.sentence(result)
}

func (d *Decoder) drop(reason string) {
	d.stats.Dropped[reason]++
	d.m.drop(reason)
}

// Feed reads one line (with or without its line ending) and calls emit for
// the fix of an epoch the line completes, if any.
func (d *Decoder) Feed(line []byte, emit func(wire.Fix)) {
	s := strings.TrimSpace(string(line))
	if s == "" || s[0] == '#' {
		return
	}
	if len(s) > MaxLineBytes {
		d.count(ResultMalformed)
		return
	}
	// Resynchronise on a sentence start: a serial port opened mid-sentence
	// gives a torn first line (the checksum still has to match).
	if s[0] != '$' && s[0] != '!' && s[0] != '\\' {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			d.count(ResultMalformed)
			return
		}
		s = s[i:]
	}
	sent, err := d.parser.Parse(s)
	switch {
	case err == nil:
	case errors.Is(err, errUnused):
		d.count(ResultIgnored)
		return
	case errors.Is(err, errNoChecksum):
		d.count(ResultNoChecksum)
		return
	case errors.Is(err, errBadChecksum):
		d.count(ResultBadChecksum)
		return
	default:
		var ns *nmea.NotSupportedError
		if errors.As(err, &ns) {
			d.count(ResultIgnored)
			return
		}
		d.count(ResultMalformed)
		return
	}
	if err := check(sent); err != nil {
		d.count(ResultMalformed)
		return
	}
	d.count(ResultOK)

	switch m := sent.(type) {
	case nmea.VTG:
		if d.cur.open && d.cur.vtg == nil {
			d.cur.vtg = &m
		}
	case nmea.RMC:
		d.add(todKey(m.Time), emit, func(e *epoch) bool {
			if e.rmc != nil {
				return false
			}
			e.rmc = &m
			return true
		})
	case nmea.GGA:
		d.add(todKey(m.Time), emit, func(e *epoch) bool {
			if e.gga != nil {
				return false
			}
			e.gga = &m
			return true
		})
	case nmea.ZDA:
		if !m.Time.Valid {
			return // an empty ZDA, as receivers send before they know the time
		}
		d.add(todKey(m.Time), emit, func(e *epoch) bool {
			if e.zda != nil {
				return false
			}
			e.zda = &m
			return true
		})
	}
}

// add merges a timed sentence into the current epoch, or closes that epoch
// and starts a new one. put stores the sentence and reports false when the
// epoch already has one of its type.
func (d *Decoder) add(key int64, emit func(wire.Fix), put func(*epoch) bool) {
	if d.cur.open && d.cur.key == key {
		if put(&d.cur) || key != noTime {
			// Merged, or a second talker's copy of a sentence this
			// epoch already has (GPRMC and GNRMC): keep the first.
			d.completeIfFull(emit)
			return
		}
		// Sentences without a time can only be told apart by repetition.
	}
	if !d.cur.open && key != noTime && key == d.closedKey {
		return // a straggler of the epoch just completed
	}
	d.close(emit)
	d.cur = epoch{open: true, key: key}
	put(&d.cur)
	d.completeIfFull(emit)
}

func (d *Decoder) completeIfFull(emit func(wire.Fix)) {
	if d.cur.rmc != nil && d.cur.gga != nil {
		d.close(emit)
	}
}

// Flush completes the epoch being assembled (at the end of a file, or when a
// device goes away).
func (d *Decoder) Flush(emit func(wire.Fix)) {
	d.close(emit)
	d.closedKey = noTime
}

// malformed counts a line the reader had to reject (too long).
func (d *Decoder) malformed() { d.count(ResultMalformed) }

func (d *Decoder) close(emit func(wire.Fix)) {
	e := d.cur
	d.cur = epoch{}
	if !e.open {
		return
	}
	d.closedKey = e.key
	if e.rmc == nil && e.gga == nil {
		// A ZDA alone: remember its date for epochs that lack one.
		if e.zda != nil {
			if day, ok := zdaDay(e.zda); ok {
				d.haveDate, d.lastDay, d.lastTOD = true, day, e.key
			}
		}
		return
	}
	if (e.rmc != nil && (e.rmc.Validity != nmea.ValidRMC || e.rmc.FFAMode == nmea.FAAModeDataNotValid)) ||
		(e.gga != nil && (e.gga.FixQuality == "" || e.gga.FixQuality == nmea.Invalid)) {
		d.drop(DropNoFix)
		return
	}
	if e.key == noTime {
		d.drop(DropNoTime)
		return
	}

	fix := wire.Fix{Lat: math.NaN(), Lon: math.NaN(), Alt: math.NaN(), Speed: math.NaN(), Heading: math.NaN(), Accuracy: math.NaN()}
	if e.rmc != nil {
		fix.Lat, fix.Lon = position(e.rmc.Fields, 2)
	}
	if (math.IsNaN(fix.Lat) || math.IsNaN(fix.Lon)) && e.gga != nil {
		fix.Lat, fix.Lon = position(e.gga.Fields, 1)
	}
	if math.IsNaN(fix.Lat) || math.IsNaN(fix.Lon) {
		d.drop(DropNoPosition)
		return
	}

	day, ok := d.epochDay(e)
	if !ok {
		d.drop(DropNoTime)
		return
	}
	fix.Time = day.Add(time.Duration(e.key) * time.Millisecond).UnixNano()

	if e.gga != nil {
		fix.Alt = e.gga.Altitude // NaN when empty
		if h := e.gga.HDOP; h > 0 && h < 99 {
			fix.Accuracy = h * d.uere
		}
	}
	if e.rmc != nil {
		fix.Speed = KnotsToMPS(e.rmc.Speed)
		fix.Heading = e.rmc.Course
	}
	if e.vtg != nil {
		if math.IsNaN(fix.Speed) {
			fix.Speed = KnotsToMPS(e.vtg.GroundSpeedKnots)
			if math.IsNaN(fix.Speed) {
				fix.Speed = e.vtg.GroundSpeedKPH / 3.6
			}
		}
		if math.IsNaN(fix.Heading) {
			fix.Heading = e.vtg.TrueTrack
		}
	}
	if fix.Speed < 0 || math.IsInf(fix.Speed, 0) {
		fix.Speed = math.NaN()
	}
	if fix.Heading < 0 || fix.Heading > 360 {
		fix.Heading = math.NaN()
	}
	if math.IsInf(fix.Alt, 0) {
		fix.Alt = math.NaN()
	}

	d.haveDate, d.lastDay, d.lastTOD = true, day, e.key
	d.stats.Fixes++
	d.m.fix()
	emit(fix)
}

// epochDay returns the UTC midnight the epoch's time of day counts from.
func (d *Decoder) epochDay(e epoch) (time.Time, bool) {
	if e.rmc != nil && e.rmc.Date.Valid {
		return rmcDay(e.rmc.Date), true
	}
	if e.zda != nil {
		if day, ok := zdaDay(e.zda); ok {
			return day, true
		}
	}
	if !d.haveDate {
		return time.Time{}, false
	}
	window := dateCarryWindow.Milliseconds()
	switch delta := e.key - d.lastTOD; {
	case delta >= 0 && delta <= window:
		return d.lastDay, true
	case delta < 0 && delta+msPerDay <= window:
		return d.lastDay.AddDate(0, 0, 1), true
	}
	return time.Time{}, false
}

func rmcDay(dt nmea.Date) time.Time {
	return time.Date(rmcYear(dt.YY), time.Month(dt.MM), dt.DD, 0, 0, 0, 0, time.UTC)
}

// rmcYear reads RMC's two-digit year as 1980-2079 (GPS time starts in 1980).
func rmcYear(yy int) int {
	if yy >= 80 {
		return 1900 + yy
	}
	return 2000 + yy
}

func zdaDay(z *nmea.ZDA) (time.Time, bool) {
	if !validDate(int(z.Year), int(z.Month), int(z.Day)) {
		return time.Time{}, false
	}
	return time.Date(int(z.Year), time.Month(z.Month), int(z.Day), 0, 0, 0, 0, time.UTC), true
}

func validDate(y, m, d int) bool {
	if y < 1980 || y > 2200 || m < 1 || m > 12 || d < 1 || d > 31 {
		return false
	}
	t := time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC)
	return t.Day() == d // 31 February and the like
}

// todKey is the time of day in milliseconds, or noTime for an empty field.
func todKey(t nmea.Time) int64 {
	if !t.Valid {
		return noTime
	}
	return ((int64(t.Hour)*60+int64(t.Minute))*60+int64(t.Second))*1000 + int64(t.Millisecond)
}

// check rejects values go-nmea accepts but a fix cannot use.
func check(s nmea.Sentence) error {
	var t nmea.Time
	switch m := s.(type) {
	case nmea.RMC:
		t = m.Time
		if m.Date.Valid && !validDate(rmcYear(m.Date.YY), m.Date.MM, m.Date.DD) {
			return fmt.Errorf("date %v", m.Date)
		}
		if _, _, err := coordinates(m.Fields, 2); err != nil {
			return err
		}
	case nmea.GGA:
		t = m.Time
		if _, _, err := coordinates(m.Fields, 1); err != nil {
			return err
		}
	case nmea.ZDA:
		t = m.Time
	}
	if t.Valid && (t.Hour > 23 || t.Minute > 59 || t.Second > 60) {
		return fmt.Errorf("time %v", t)
	}
	return nil
}

// position returns the latitude and longitude in fields[i:i+4], NaN when
// either is empty or bad.
func position(fields []string, i int) (lat, lon float64) {
	lat, lon, err := coordinates(fields, i)
	if err != nil {
		return math.NaN(), math.NaN()
	}
	return lat, lon
}

func coordinates(fields []string, i int) (lat, lon float64, err error) {
	if len(fields) < i+4 {
		return math.NaN(), math.NaN(), errors.New("too few fields")
	}
	if lat, err = coordinate(fields[i], fields[i+1], "N", "S", 90); err != nil {
		return math.NaN(), math.NaN(), err
	}
	if lon, err = coordinate(fields[i+2], fields[i+3], "E", "W", 180); err != nil {
		return math.NaN(), math.NaN(), err
	}
	return lat, lon, nil
}

// coordinate converts NMEA's [d]ddmm.mmmm and hemisphere to signed degrees
// (NaN when both fields are empty). It parses the minutes from the text
// rather than taking the number apart, so the result is the hand
// computation degrees + minutes/60 rounded once.
func coordinate(v, hemi, pos, neg string, limit float64) (float64, error) {
	if v == "" && hemi == "" {
		return math.NaN(), nil
	}
	intPart, _, _ := strings.Cut(v, ".")
	if len(intPart) < 3 || len(intPart) > 5 {
		return 0, fmt.Errorf("coordinate %q", v)
	}
	for _, c := range intPart {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("coordinate %q", v)
		}
	}
	deg, err := strconv.Atoi(intPart[:len(intPart)-2])
	if err != nil {
		return 0, fmt.Errorf("coordinate %q", v)
	}
	mins, err := strconv.ParseFloat(v[len(intPart)-2:], 64)
	if err != nil || mins < 0 || mins >= 60 || strings.ContainsAny(v[len(intPart)-2:], "eE+-_xXpP") {
		return 0, fmt.Errorf("coordinate %q", v)
	}
	x := float64(deg) + mins/60
	if x > limit {
		return 0, fmt.Errorf("coordinate %q beyond %g", v, limit)
	}
	switch hemi {
	case pos:
		return x, nil
	case neg:
		return -x, nil
	}
	return 0, fmt.Errorf("hemisphere %q", hemi)
}
