package mqttlite

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unsafe"
)

// MQTT 3.1.1 control packet types (high nibble of the fixed header).
const (
	typeConnect     = 1
	typeConnack     = 2
	typePublish     = 3
	typePuback      = 4
	typeSubscribe   = 8
	typeSuback      = 9
	typeUnsubscribe = 10
	typeUnsuback    = 11
	typePingreq     = 12
	typePingresp    = 13
	typeDisconnect  = 14
)

// maxRemaining is the largest remaining length MQTT can express.
const maxRemaining = 268_435_455

var errProtocol = errors.New("mqtt protocol error")

func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errProtocol}, args...)...)
}

// appendRemaining appends MQTT's variable-length remaining length.
func appendRemaining(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// appendConnect appends a CONNECT packet (protocol level 4, MQTT 3.1.1).
func appendConnect(b []byte, clientID, user, pass string, clean bool, keepAliveSecs uint16) []byte {
	var flags byte
	n := 10 + 2 + len(clientID)
	if clean {
		flags |= 0x02
	}
	if user != "" {
		flags |= 0x80
		n += 2 + len(user)
	}
	if pass != "" {
		flags |= 0x40
		n += 2 + len(pass)
	}
	b = append(b, typeConnect<<4)
	b = appendRemaining(b, n)
	b = appendString(b, "MQTT")
	b = append(b, 4, flags)
	b = binary.BigEndian.AppendUint16(b, keepAliveSecs)
	b = appendString(b, clientID)
	if user != "" {
		b = appendString(b, user)
	}
	if pass != "" {
		b = appendString(b, pass)
	}
	return b
}

func appendSubscribe(b []byte, id uint16, filters []Subscription) []byte {
	n := 2
	for _, f := range filters {
		n += 2 + len(f.Filter) + 1
	}
	b = append(b, typeSubscribe<<4|0x02)
	b = appendRemaining(b, n)
	b = binary.BigEndian.AppendUint16(b, id)
	for _, f := range filters {
		b = appendString(b, f.Filter)
		b = append(b, f.QoS)
	}
	return b
}

func appendUnsubscribe(b []byte, id uint16, filters []string) []byte {
	n := 2
	for _, f := range filters {
		n += 2 + len(f)
	}
	b = append(b, typeUnsubscribe<<4|0x02)
	b = appendRemaining(b, n)
	b = binary.BigEndian.AppendUint16(b, id)
	for _, f := range filters {
		b = appendString(b, f)
	}
	return b
}

func appendPublish(b []byte, topic string, qos byte, id uint16, payload []byte) []byte {
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	b = append(b, typePublish<<4|qos<<1)
	b = appendRemaining(b, n)
	b = appendString(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return append(b, payload...)
}

func appendPuback(b []byte, id uint16) []byte {
	return append(b, typePuback<<4, 2, byte(id>>8), byte(id))
}

// header is a packet's fixed header.
type header struct {
	typ, flags byte
	remaining  int
}

func readHeader(r *bufio.Reader) (header, error) {
	first, err := r.ReadByte()
	if err != nil {
		return header{}, err
	}
	h := header{typ: first >> 4, flags: first & 0x0f}
	mult := 1
	for i := 0; ; i++ {
		d, err := r.ReadByte()
		if err != nil {
			return header{}, err
		}
		h.remaining += int(d&0x7f) * mult
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			return header{}, protocolError("remaining length longer than 4 bytes")
		}
		mult *= 128
	}
	return h, nil
}

// Message is a PUBLISH the client received. Topic and Payload share one
// buffer that belongs to the Message; they must not be modified.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Dup     bool
	// Size is the payload's size as sent. When it is larger than the
	// client's MaxPayloadBytes, Payload holds only the first
	// MaxPayloadBytes bytes and Truncated is set: the rest was skipped
	// unread, never held in memory.
	Size      int
	Truncated bool

	id   uint16
	sess *session
	buf  []byte
}

// TopicBytes is Topic as bytes, sharing the message's buffer: read only.
func (m *Message) TopicBytes() []byte { return m.buf[:len(m.Topic)] }

// Ack acknowledges the message (PUBACK) on the connection it came on. If
// that connection is gone the broker has forgotten the delivery (or will
// deliver it again on the session's next connection), so the ack is
// dropped: acknowledging a packet ID on a later connection could free a
// different message. Ack is safe for concurrent use, never blocks, and
// does nothing for QoS 0 messages or when called twice.
func (m *Message) Ack() {
	if m.QoS == 0 || m.sess == nil {
		return
	}
	s := m.sess
	m.sess = nil
	s.queue(func(b []byte) []byte { return appendPuback(b, m.id) })
}

// readPublish reads a PUBLISH's variable header and payload, keeping at
// most maxPayload bytes of the payload and skipping the rest.
func readPublish(r *bufio.Reader, h header, maxPayload int) (*Message, error) {
	qos := (h.flags >> 1) & 3
	if qos > 2 {
		return nil, protocolError("publish with QoS 3")
	}
	var lenBuf [2]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return nil, err
	}
	topicLen := int(binary.BigEndian.Uint16(lenBuf[:]))
	rest := h.remaining - 2 - topicLen
	if qos > 0 {
		rest -= 2
	}
	if rest < 0 {
		return nil, protocolError("publish shorter than its topic")
	}
	keep := min(rest, maxPayload)
	buf := make([]byte, topicLen+keep)
	if _, err := io.ReadFull(r, buf[:topicLen]); err != nil {
		return nil, err
	}
	m := &Message{QoS: qos, Dup: h.flags&0x08 != 0, Size: rest, Truncated: keep < rest}
	if qos > 0 {
		if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
			return nil, err
		}
		m.id = binary.BigEndian.Uint16(lenBuf[:])
	}
	if _, err := io.ReadFull(r, buf[topicLen:]); err != nil {
		return nil, err
	}
	if _, err := r.Discard(rest - keep); err != nil {
		return nil, err
	}
	// The buffer is never written again: the string may share it.
	m.Topic = unsafe.String(unsafe.SliceData(buf), topicLen)
	m.Payload = buf[topicLen:]
	m.buf = buf
	return m, nil
}
