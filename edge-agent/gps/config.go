package gps

import (
	"flag"
	"math"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Kinds of GPS input.
const (
	KindNMEA = "nmea" // NMEA 0183 from a file or a serial device
	KindGPSD = "gpsd" // gpsd's JSON protocol over TCP
)

// Defaults.
const (
	DefaultGPSDAddr = "127.0.0.1:2947"
	// DefaultUERE is the user equivalent range error, in metres at one
	// sigma, by which an NMEA source multiplies GGA's HDOP to estimate the
	// horizontal accuracy (DRMS) of a fix. 5 m is a typical single-frequency
	// receiver without differential corrections; gpsd's own error model uses
	// a comparable figure (15 m at 95%).
	DefaultUERE = 5.0
	// MaxPaceWait bounds how long a paced NMEA replay waits between two
	// fixes (in recording time, before Pace divides it), so a recording with
	// hour-long gaps still replays in reasonable time.
	MaxPaceWait = 5 * time.Second
)

// Config chooses and configures the GPS source. The zero value is not valid:
// start from DefaultConfig.
type Config struct {
	// Kind is KindNMEA or KindGPSD.
	Kind string
	// Path is, for KindNMEA, the NMEA log file or the serial device (e.g.
	// /dev/ttyUSB0). For KindGPSD it optionally names the device gpsd should
	// report (empty: all devices).
	Path string
	// GPSDAddr is gpsd's host:port (KindGPSD).
	GPSDAddr string
	// Baud sets the serial device's line speed (KindNMEA on a character
	// device, Linux only); 0 leaves the device as it is.
	Baud int
	// Pace replays an NMEA file at Pace times real time (1: real time);
	// 0 reads it as fast as possible. Ignored for devices and gpsd.
	Pace float64
	// UERE is the range error in metres (1 sigma) that turns HDOP into an
	// accuracy; 0 means DefaultUERE, negative leaves Accuracy NaN.
	UERE float64
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff
	// between reconnects to gpsd or reopens of a serial device.
	ReconnectMin, ReconnectMax time.Duration
}

// DefaultConfig returns the defaults the flags use.
func DefaultConfig() Config {
	var c Config
	c.RegisterFlags(flag.NewFlagSet("defaults", flag.ContinueOnError))
	return c
}

// RegisterFlags declares the GPS flags, all prefixed "gps-".
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Kind, "gps-kind", KindNMEA, "GPS input: nmea (file or serial device) or gpsd")
	fs.StringVar(&c.Path, "gps-path", "", "NMEA file or serial device such as /dev/ttyUSB0; with gps-kind=gpsd, the device gpsd should report (empty: all)")
	fs.StringVar(&c.GPSDAddr, "gps-gpsd-addr", DefaultGPSDAddr, "gpsd host:port")
	fs.IntVar(&c.Baud, "gps-baud", 0, "serial line speed, e.g. 9600 (0: leave the device as it is)")
	fs.Float64Var(&c.Pace, "gps-pace", 0, "replay an NMEA file at this multiple of real time (0: as fast as possible)")
	fs.Float64Var(&c.UERE, "gps-uere", DefaultUERE, "range error in metres (1 sigma) multiplied by HDOP to give accuracy (negative: report no accuracy)")
	fs.DurationVar(&c.ReconnectMin, "gps-reconnect-min", 200*time.Millisecond, "first wait before reconnecting to gpsd or reopening the device")
	fs.DurationVar(&c.ReconnectMax, "gps-reconnect-max", 30*time.Second, "longest wait between reconnects")
}

// Validate names the flag of the first bad field.
func (c Config) Validate() error {
	switch c.Kind {
	case KindNMEA:
		if c.Path == "" {
			return cli.FieldError("gps-path", "empty: an NMEA source needs a file or a serial device")
		}
	case KindGPSD:
		host, port, err := net.SplitHostPort(c.GPSDAddr)
		if err != nil {
			return cli.FieldError("gps-gpsd-addr", "%q: %v", c.GPSDAddr, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return cli.FieldError("gps-gpsd-addr", "%q: port %q is not 1 to 65535", c.GPSDAddr, port)
		}
		_ = host // empty host means localhost, as net.Dial reads it
	default:
		return cli.FieldError("gps-kind", "%q: want %q or %q", c.Kind, KindNMEA, KindGPSD)
	}
	if c.Baud != 0 && !slices.Contains(baudRates, c.Baud) {
		return cli.FieldError("gps-baud", "%d: want 0 or one of 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600", c.Baud)
	}
	if c.Pace < 0 || math.IsNaN(c.Pace) || math.IsInf(c.Pace, 0) {
		return cli.FieldError("gps-pace", "%g: want 0 (as fast as possible) or a positive multiple of real time", c.Pace)
	}
	if math.IsNaN(c.UERE) || math.IsInf(c.UERE, 0) || c.UERE > 1000 {
		return cli.FieldError("gps-uere", "%g: want metres, at most 1000", c.UERE)
	}
	if c.ReconnectMin <= 0 {
		return cli.FieldError("gps-reconnect-min", "%v: must be positive", c.ReconnectMin)
	}
	if c.ReconnectMax < c.ReconnectMin {
		return cli.FieldError("gps-reconnect-max", "%v is below gps-reconnect-min %v", c.ReconnectMax, c.ReconnectMin)
	}
	return nil
}

// uere returns the UERE the decoder uses: NaN when accuracy is off.
func (c Config) uere() float64 {
	switch {
	case c.UERE == 0:
		return DefaultUERE
	case c.UERE < 0:
		return math.NaN()
	}
	return c.UERE
}

// baudRates are the line speeds Baud accepts: the common GNSS receiver rates.
var baudRates = []int{4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600}
