package mqttlite

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadPublish: what a broker sends (and, through it, any device) is
// parsed without panicking, and never yields more than it was given.
func FuzzReadPublish(f *testing.F) {
	f.Add(appendPublish(nil, "fleet/v1/veh-1/telemetry", 1, 7, []byte("payload")))
	f.Add(appendPublish(nil, "t", 0, 0, nil))
	f.Add([]byte{0x32, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		h, err := readHeader(r)
		if err != nil || h.typ != typePublish || h.remaining > maxRemaining {
			return
		}
		m, err := readPublish(r, h, 64)
		if err != nil {
			return
		}
		if len(m.Payload) > 64 || len(m.Topic)+len(m.Payload) > len(data) || (m.Truncated != (m.Size > 64)) {
			t.Fatalf("topic %d bytes, payload %d of %d, truncated %v, from %d bytes", len(m.Topic), len(m.Payload), m.Size, m.Truncated, len(data))
		}
	})
}
