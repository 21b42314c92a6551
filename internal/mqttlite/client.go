// Package mqttlite is a small MQTT 3.1.1 client for cloud services that
// move many QoS 1 messages: the bridge and the load tools that measure it.
//
// It exists because the general-purpose client (paho) costs about 20 µs of
// CPU per received message with manual acks — reads of a few bytes per
// syscall, one write syscall per PUBACK, formatted store keys on the ack
// path — twice the bridge's whole budget. This client reads through a
// large buffer, writes everything queued (PUBACKs, publishes, pings) in one
// syscall per burst, and lets the application acknowledge each message
// whenever it is done with it, in any order: every broker we know of
// (Mosquitto, mochi, EMQX, HiveMQ, VerneMQ) matches a PUBACK to its
// message by packet identifier, and an application that acknowledges in
// arrival order lets one slow message hold back every later one.
//
// What it does: TCP or TLS (client certificates), CONNECT with credentials,
// clean or persistent sessions, SUBSCRIBE at QoS 0/1, receive PUBLISH at
// QoS 0/1 (QoS 2 is not subscribed to), PUBLISH at QoS 0/1, keepalive, and
// reconnection with backoff. What it does not: MQTT 5, WebSockets, QoS 2,
// re-sending unacknowledged publishes after a reconnect (callers learn of
// the loss through the publish's done callback).
//
// Backpressure: the message handler runs on the connection's reader
// goroutine; while it blocks, the client reads nothing more from that
// connection, TCP's window fills, and the broker queues (or, past its
// limits, drops) further messages for this session. Keepalive pings go on
// meanwhile, and the broker's silence is not held against a connection
// whose reader is held up by its own handler.
package mqttlite

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Subscription is a topic filter and the QoS to receive it at (0 or 1).
type Subscription struct {
	Filter string
	QoS    byte
}

// Config says how to connect and what to subscribe to.
type Config struct {
	// URL is tcp://, mqtt://, ssl://, tls:// or mqtts://host:port.
	URL      string
	ClientID string
	Username string
	Password string
	// TLS is used for ssl/tls/mqtts URLs (nil: the system roots).
	TLS *tls.Config
	// CleanSession asks the broker to forget the session when the
	// connection ends.
	CleanSession bool
	KeepAlive    time.Duration // default 30s
	// ConnectTimeout bounds a connection attempt up to CONNACK; default 15s.
	ConnectTimeout time.Duration
	// Subscriptions are made on every connection.
	Subscriptions []Subscription
	// MaxPayloadBytes bounds the part of a received payload the client
	// holds; default 16 MiB. Larger payloads are delivered truncated.
	MaxPayloadBytes int
	// OnMessage receives every PUBLISH, on the connection's reader
	// goroutine (see the package comment on backpressure). It must call
	// Ack, now or later, for QoS 1 messages.
	OnMessage func(*Message)
	// Coalesce is how long the client lets reads and writes gather before
	// each syscall: a read that found little data waits this long before
	// the next, and queued packets wait this long before they are
	// written, so that at high rates one syscall moves many packets. It
	// adds at most that much latency. Default 200µs; negative: none.
	Coalesce time.Duration
	// OnConnect is called after each successful subscription (on the
	// reader goroutine), OnLost when a connection ends.
	OnConnect func()
	OnLost    func(error)
}

// Deps are the client's dependencies.
type Deps struct {
	Logger *slog.Logger
}

// Errors of Publish and of publish callbacks.
var (
	ErrNotConnected   = errors.New("mqtt: not connected")
	ErrConnectionLost = errors.New("mqtt: connection lost before the broker acknowledged")
	ErrTooManyPending = errors.New("mqtt: too many publishes awaiting acknowledgement")
)

// Client keeps one connection to a broker, reconnecting until Run's
// context ends. It is safe for concurrent use.
type Client struct {
	cfg    Config
	logger *slog.Logger
	cur    atomic.Pointer[session]
	// connects counts successful connections.
	connects atomic.Int64
}

// New checks the configuration; nothing connects until Run.
func New(cfg Config, deps Deps) (*Client, error) {
	if _, _, err := splitURL(cfg.URL); err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		return nil, errors.New("mqtt: empty client ID")
	}
	if cfg.OnMessage == nil && len(cfg.Subscriptions) > 0 {
		return nil, errors.New("mqtt: subscriptions without OnMessage")
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 15 * time.Second
	}
	if cfg.MaxPayloadBytes <= 0 {
		cfg.MaxPayloadBytes = 16 << 20
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = 200 * time.Microsecond
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, logger: logger}, nil
}

func splitURL(raw string) (network, addr string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", "", fmt.Errorf("mqtt: %q is not a broker URL like tcp://host:1883", raw)
	}
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		return "tcp", u.Host, nil
	case "ssl", "tls", "mqtts":
		return "tls", u.Host, nil
	}
	return "", "", fmt.Errorf("mqtt: scheme %q of %q: this client speaks tcp:// and ssl:// (tls://, mqtts://)", u.Scheme, raw)
}

// Connected reports whether a connection is up and subscribed.
func (c *Client) Connected() bool {
	s := c.cur.Load()
	return s != nil && s.ready.Load()
}

// Connects is the number of successful connections so far.
func (c *Client) Connects() int64 { return c.connects.Load() }

// Run connects, and reconnects with backoff (1 s growing to 5 s, with
// jitter) whenever the connection ends, until ctx is cancelled; it then
// sends DISCONNECT and closes the connection. A message whose Ack comes
// after that is left to the broker, which delivers it again to a session
// that is not clean.
func (c *Client) Run(ctx context.Context) error {
	delay := time.Second
	for {
		err := c.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.logger.Warn("mqtt connection ended; reconnecting", "client", c.cfg.ClientID, "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay/2 + rand.N(delay/2)):
		}
		delay = min(delay*2, 5*time.Second)
		if c.Connected() {
			delay = time.Second
		}
	}
}

// Publish queues a PUBLISH on the current connection and returns without
// waiting. For QoS 1, done (if not nil) is called once: with nil when the
// broker acknowledges, or with ErrConnectionLost. For QoS 0, done is not
// called. Publish fails with ErrNotConnected when no connection is up.
func (c *Client) Publish(topic string, qos byte, payload []byte, done func(error)) error {
	s := c.cur.Load()
	if s == nil || !s.ready.Load() {
		return ErrNotConnected
	}
	return s.publish(topic, qos, payload, done)
}

// WaitAcked waits until the broker has answered every QoS 1 publish (and
// unsubscribe) of the current connection, or timeout passes; it reports
// whether it has. A client about to stop calls it so that its last
// publishes are not dropped by a broker that can no longer acknowledge
// them.
func (c *Client) WaitAcked(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s := c.cur.Load()
		if s == nil {
			return true
		}
		s.mu.Lock()
		n, closed := s.nUsed, s.err != nil
		s.mu.Unlock()
		if n == 0 || closed {
			return n == 0
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Unsubscribe asks the broker to stop sending the filters' messages on
// the current connection (the next connection subscribes again). It does
// not wait for the broker's answer.
func (c *Client) Unsubscribe(filters ...string) error {
	s := c.cur.Load()
	if s == nil || !s.ready.Load() {
		return ErrNotConnected
	}
	s.mu.Lock()
	id, ok := s.allocID()
	s.mu.Unlock()
	if !ok {
		return ErrTooManyPending
	}
	if !s.queue(func(b []byte) []byte { return appendUnsubscribe(b, id, filters) }) {
		return ErrNotConnected
	}
	return nil
}

func (c *Client) runOnce(ctx context.Context) error {
	network, addr, _ := splitURL(c.cfg.URL)
	dialCtx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	var conn net.Conn
	var err error
	if network == "tls" {
		d := tls.Dialer{Config: c.cfg.TLS}
		conn, err = d.DialContext(dialCtx, "tcp", addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(dialCtx, "tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("mqtt: dial %s: %w", addr, err)
	}
	s := newSession(c, conn)
	defer s.close(nil)
	if err := s.handshake(c.cfg.ConnectTimeout); err != nil {
		return err
	}
	c.cur.Store(s)
	defer c.cur.CompareAndSwap(s, nil)
	go s.writeLoop()
	go s.pingLoop()
	stop := context.AfterFunc(ctx, func() { s.close(errStopped) })
	defer stop()
	err = s.readLoop()
	s.conn.Close()
	if c.cfg.OnLost != nil {
		c.cfg.OnLost(err)
	}
	return err
}

var errStopped = errors.New("mqtt: client stopped")

// session is one network connection and its state.
type session struct {
	c    *Client
	conn net.Conn
	r    *bufio.Reader

	// writeMu is held while bytes go to the connection, so that the
	// goodbye at shutdown follows everything queued before it.
	writeMu sync.Mutex
	mu      sync.Mutex
	pending []byte // queued for the writer
	spare   []byte
	wake    chan struct{}
	closed  chan struct{}
	err     error
	// Outgoing QoS 1 publishes awaiting PUBACK.
	used  [1 << 16 / 64]uint64
	nUsed int
	next  uint16
	dones map[uint16]func(error)

	ready    atomic.Bool
	busy     atomic.Bool  // the reader is in OnMessage
	lastRead atomic.Int64 // unix nanos of the last packet read
	subID    uint16
}

func newSession(c *Client, conn net.Conn) *session {
	var src io.Reader = conn
	if c.cfg.Coalesce > 0 {
		src = &gatheringReader{conn: conn, wait: c.cfg.Coalesce}
	}
	return &session{c: c, conn: conn, r: bufio.NewReaderSize(src, 256<<10),
		wake: make(chan struct{}, 1), closed: make(chan struct{}), dones: map[uint16]func(error){}}
}

// maxPending bounds bytes queued for a connection that does not drain:
// past it the connection is considered dead.
const maxPending = 32 << 20

func (s *session) queue(add func([]byte) []byte) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return false
	}
	s.pending = add(s.pending)
	over := len(s.pending) > maxPending
	s.mu.Unlock()
	if over {
		s.close(errors.New("mqtt: the broker is not reading; dropping the connection"))
		return false
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

func (s *session) close(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	if err == nil {
		err = errStopped
	}
	s.err = err
	dones := s.dones
	s.dones = nil
	s.mu.Unlock()
	s.ready.Store(false)
	close(s.closed)
	if errors.Is(err, errStopped) {
		// What is queued (acks above all), then a polite goodbye: the
		// broker then drops the will. The connection stays open until
		// the broker closes it, which it does once it has read the
		// DISCONNECT and so everything before it: a client that closed
		// at once could reconnect before the broker read its last acks,
		// and a broker that sees the same client id connect again
		// closes the old connection unread (Mosquitto does), so those
		// messages would come again. The reader waits for that end
		// (and delivers nothing more), which runOnce then closes;
		// closeWait bounds the wait.
		s.writeMu.Lock()
		s.mu.Lock()
		last := append(s.pending, typeDisconnect<<4, 0)
		s.pending = nil
		s.mu.Unlock()
		_ = s.conn.SetWriteDeadline(time.Now().Add(closeWait))
		_, werr := s.conn.Write(last)
		s.writeMu.Unlock()
		if werr == nil {
			time.AfterFunc(closeWait, func() { s.conn.Close() })
		} else {
			s.conn.Close()
		}
	} else {
		s.conn.Close()
	}
	for _, done := range dones {
		done(ErrConnectionLost)
	}
}

// closeWait bounds how long a stopping client waits for the broker to
// read its last packets and close the connection.
const closeWait = 2 * time.Second

// closing reports whether the session has ended or is ending.
func (s *session) closing() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

func (s *session) handshake(timeout time.Duration) error {
	cfg := s.c.cfg
	_ = s.conn.SetDeadline(time.Now().Add(timeout))
	ka := uint16(min(cfg.KeepAlive/time.Second, 65535))
	if _, err := s.conn.Write(appendConnect(nil, cfg.ClientID, cfg.Username, cfg.Password, cfg.CleanSession, ka)); err != nil {
		return fmt.Errorf("mqtt: send CONNECT: %w", err)
	}
	h, err := readHeader(s.r)
	if err != nil {
		return fmt.Errorf("mqtt: read CONNACK: %w", err)
	}
	if h.typ != typeConnack || h.remaining != 2 {
		return protocolError("expected CONNACK, got packet type %d", h.typ)
	}
	var b [2]byte
	if _, err := io.ReadFull(s.r, b[:]); err != nil {
		return fmt.Errorf("mqtt: read CONNACK: %w", err)
	}
	if b[1] != 0 {
		return fmt.Errorf("mqtt: broker refused the connection: %s", connackReason(b[1]))
	}
	_ = s.conn.SetDeadline(time.Time{})
	s.lastRead.Store(time.Now().UnixNano())
	if len(cfg.Subscriptions) == 0 {
		s.c.connects.Add(1)
		s.ready.Store(true)
		if cfg.OnConnect != nil {
			cfg.OnConnect()
		}
		return nil
	}
	s.subID = 1
	s.markUsed(s.subID)
	_ = s.conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := s.conn.Write(appendSubscribe(nil, s.subID, cfg.Subscriptions)); err != nil {
		return fmt.Errorf("mqtt: send SUBSCRIBE: %w", err)
	}
	_ = s.conn.SetWriteDeadline(time.Time{})
	return nil
}

func connackReason(code byte) string {
	switch code {
	case 1:
		return "unacceptable protocol version"
	case 2:
		return "client identifier rejected"
	case 3:
		return "server unavailable"
	case 4:
		return "bad user name or password"
	case 5:
		return "not authorized"
	}
	return fmt.Sprintf("return code %d", code)
}

func (s *session) writeLoop() {
	for {
		select {
		case <-s.closed:
			return
		case <-s.wake:
		}
		if d := s.c.cfg.Coalesce; d > 0 {
			time.Sleep(d) // let more gather
		}
		s.writeMu.Lock()
		s.mu.Lock()
		if s.err != nil {
			// Closing: a graceful close writes what is queued itself.
			s.mu.Unlock()
			s.writeMu.Unlock()
			return
		}
		buf := s.pending
		s.pending = s.spare[:0]
		s.spare = nil
		s.mu.Unlock()
		if len(buf) == 0 {
			s.writeMu.Unlock()
			continue
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.c.cfg.KeepAlive))
		_, err := s.conn.Write(buf)
		s.writeMu.Unlock()
		if err != nil {
			s.close(fmt.Errorf("mqtt: write: %w", err))
			return
		}
		s.mu.Lock()
		if cap(buf) <= 1<<20 {
			s.spare = buf[:0]
		}
		s.mu.Unlock()
	}
}

// pingLoop sends PINGREQ every half keepalive (brokers differ on how much
// grace they give past it) and closes a connection whose
// broker has said nothing for 1.5 keepalives while its reader was free to
// listen.
func (s *session) pingLoop() {
	ka := s.c.cfg.KeepAlive
	t := time.NewTicker(ka / 2)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case now := <-t.C:
			s.queue(func(b []byte) []byte { return append(b, typePingreq<<4, 0) })
			if s.busy.Load() {
				s.lastRead.Store(now.UnixNano()) // held up by its own handler, not by the broker
			} else if silent := now.Sub(time.Unix(0, s.lastRead.Load())); silent > ka*3/2 {
				s.close(fmt.Errorf("mqtt: nothing from the broker for %v", silent.Round(time.Second)))
				return
			}
		}
	}
}

func (s *session) readLoop() error {
	cfg := s.c.cfg
	for {
		h, err := readHeader(s.r)
		if err != nil {
			return s.ended(err)
		}
		if h.remaining > maxRemaining {
			return s.ended(protocolError("remaining length %d", h.remaining))
		}
		s.lastRead.Store(time.Now().UnixNano())
		switch h.typ {
		case typePublish:
			m, err := readPublish(s.r, h, cfg.MaxPayloadBytes)
			if err != nil {
				return s.ended(err)
			}
			if m.QoS == 2 {
				return s.ended(protocolError("a QoS 2 publish, never subscribed to"))
			}
			if s.closing() {
				continue // stopping: not acknowledged, so the broker keeps it
			}
			if m.QoS == 1 {
				m.sess = s
			}
			s.busy.Store(true)
			cfg.OnMessage(m)
			s.busy.Store(false)
		case typePuback, typeSuback, typeUnsuback:
			if h.remaining < 2 {
				return s.ended(protocolError("packet type %d of %d bytes", h.typ, h.remaining))
			}
			var b [2]byte
			if _, err := io.ReadFull(s.r, b[:]); err != nil {
				return s.ended(err)
			}
			id := uint16(b[0])<<8 | uint16(b[1])
			codes := make([]byte, h.remaining-2)
			if _, err := io.ReadFull(s.r, codes); err != nil {
				return s.ended(err)
			}
			if h.typ == typeSuback && id == s.subID {
				if err := s.subscribed(codes); err != nil {
					return s.ended(err)
				}
				continue
			}
			s.acked(id)
		default: // PINGRESP, and anything else a broker should not send us
			if _, err := s.r.Discard(h.remaining); err != nil {
				return s.ended(err)
			}
		}
	}
}

func (s *session) ended(err error) error {
	s.close(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *session) subscribed(codes []byte) error {
	s.acked(s.subID)
	for i, code := range codes {
		if code == 0x80 {
			return fmt.Errorf("mqtt: the broker refused the subscription to %q", s.c.cfg.Subscriptions[i].Filter)
		}
	}
	s.c.connects.Add(1)
	s.ready.Store(true)
	if s.c.cfg.OnConnect != nil {
		s.c.cfg.OnConnect()
	}
	return nil
}

func (s *session) markUsed(id uint16) {
	s.used[id/64] |= 1 << (id % 64)
	s.nUsed++
}

// allocID takes a packet ID no outgoing packet awaits an answer for; s.mu
// is held.
func (s *session) allocID() (uint16, bool) {
	if s.nUsed >= 1<<16-1 {
		return 0, false
	}
	for {
		s.next++
		if s.next != 0 && s.used[s.next/64]&(1<<(s.next%64)) == 0 {
			break
		}
	}
	s.markUsed(s.next)
	return s.next, true
}

func (s *session) acked(id uint16) {
	s.mu.Lock()
	if s.used[id/64]&(1<<(id%64)) == 0 {
		s.mu.Unlock()
		return
	}
	s.used[id/64] &^= 1 << (id % 64)
	s.nUsed--
	done := s.dones[id]
	if done != nil {
		delete(s.dones, id)
	}
	s.mu.Unlock()
	if done != nil {
		done(nil)
	}
}

func (s *session) publish(topic string, qos byte, payload []byte, done func(error)) error {
	if qos > 1 {
		return errors.New("mqtt: this client publishes at QoS 0 or 1")
	}
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return ErrNotConnected
	}
	var id uint16
	if qos == 1 {
		var ok bool
		if id, ok = s.allocID(); !ok {
			s.mu.Unlock()
			return ErrTooManyPending
		}
		if done != nil {
			s.dones[id] = done
		}
	}
	s.pending = appendPublish(s.pending, topic, qos, id, payload)
	over := len(s.pending) > maxPending
	s.mu.Unlock()
	if over {
		s.close(errors.New("mqtt: the broker is not reading; dropping the connection"))
		return ErrNotConnected
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// gatheringReader makes a read that follows a small one wait a little, so
// that at high message rates one syscall returns many packets instead of
// one.
type gatheringReader struct {
	conn  net.Conn
	wait  time.Duration
	small bool
}

// gatherBelow is what counts as a small read.
const gatherBelow = 16 << 10

func (g *gatheringReader) Read(p []byte) (int, error) {
	if g.small {
		time.Sleep(g.wait)
	}
	n, err := g.conn.Read(p)
	g.small = n < gatherBelow && n < len(p)
	return n, err
}
