package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(m.Run()) // the crash test's child: killed, never verified
	}
	goleak.VerifyTestMain(m)
}

// payloadFor is the deterministic payload of seq, 20 to 219 bytes.
func payloadFor(seq uint64) []byte {
	r := rand.New(rand.NewPCG(seq, 0x5eed))
	b := make([]byte, 20+r.IntN(200))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	binary.LittleEndian.PutUint64(b, seq)
	return b
}

func metaFor(seq uint64) Meta {
	c := Bulk
	if seq%5 == 0 {
		c = High
	}
	return Meta{Class: c, Readings: uint32(seq%100) + 1, Time: time.Unix(1_700_000_000+int64(seq), 0)}
}

func mustOpen(t testing.TB, cfg Config, deps ...Deps) *Spool {
	t.Helper()
	var d Deps
	if len(deps) > 0 {
		d = deps[0]
	}
	s, err := Open(cfg, d)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// appendN appends n batches made by payloadFor and metaFor.
func appendN(t testing.TB, s *Spool, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for range n {
		seq, err := s.Reserve()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Append(seq, payloadFor(seq), metaFor(seq)); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

// pending lists the pending seqs, checking every payload and meta.
func pending(t testing.TB, s *Spool, classes ...Class) []uint64 {
	t.Helper()
	var seqs []uint64
	for r, err := range s.Pending(0, classes...) {
		if err != nil {
			t.Fatalf("Pending: %v", err)
		}
		checkRecord(t, r)
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

// pendingSeqs lists the pending seqs without checking payloads.
func pendingSeqs(t testing.TB, s *Spool, classes ...Class) []uint64 {
	t.Helper()
	var seqs []uint64
	for r, err := range s.Pending(0, classes...) {
		if err != nil {
			t.Fatalf("Pending: %v", err)
		}
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

func checkRecord(t testing.TB, r Record) {
	t.Helper()
	m := metaFor(r.Seq)
	if !bytes.Equal(r.Payload, payloadFor(r.Seq)) || r.Meta.Class != m.Class || r.Meta.Readings != m.Readings || !r.Meta.Time.Equal(m.Time) {
		t.Fatalf("record %d read back wrong: class %v readings %d time %v, %d payload bytes", r.Seq, r.Meta.Class, r.Meta.Readings, r.Meta.Time, len(r.Payload))
	}
}

// crash abandons s as a kill -9 would: nothing synced, STATE not
// rewritten, the lock released.
func crash(s *Spool) {
	s.mu.Lock()
	if s.ackTimer != nil {
		s.ackTimer.Stop()
		s.ackTimer = nil
	}
	s.closed = true
	for c := range s.chains {
		for _, g := range s.chains[c] {
			if g.f != nil {
				_ = g.f.Close()
			}
			if g.ack != nil {
				_ = g.ack.Close()
			}
		}
	}
	for _, f := range s.readFile {
		if f != nil {
			_ = f.Close()
		}
	}
	s.mu.Unlock()
	s.m.remove(s)
	_ = unlockDir(s.lk)
}

// segFiles lists the segment files of dir, oldest first.
func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

// diskBytes sums the segment files' sizes.
func diskBytes(t testing.TB, dir string) int64 {
	var n int64
	for _, p := range segFiles(t, dir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// snapshot copies every file of dir.
func snapshot(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = b
	}
	return m
}

func restore(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// gather returns the value of a metric (summed over label sets matching labels).
func gather(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				v += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				v += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return v
}

func without(all, gone []uint64) []uint64 {
	return slices.DeleteFunc(slices.Clone(all), func(x uint64) bool { return slices.Contains(gone, x) })
}

func isErr(err, target error) bool { return errors.Is(err, target) }
