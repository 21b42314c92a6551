package spool

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkAppend measures Reserve+Append per policy and payload size;
// ns/op is the append latency, MB/s the payload throughput. An acker
// frees everything every 1000 appends so segments roll and are deleted
// as in steady state.
func BenchmarkAppend(b *testing.B) {
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncInterval, FsyncNever} {
		for _, size := range []int{512, 4096} {
			b.Run(fmt.Sprintf("fsync=%s/payload=%d", policy, size), func(b *testing.B) {
				s := mustOpen(b, Config{Dir: b.TempDir(), Fsync: policy, FsyncInterval: 5 * time.Millisecond, MaxBytes: 1 << 30})
				defer s.Close()
				payload := make([]byte, size)
				meta := Meta{Readings: 100}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					seq, err := s.Reserve()
					if err != nil {
						b.Fatal(err)
					}
					if err := s.Append(seq, payload, meta); err != nil {
						b.Fatal(err)
					}
					if i%1000 == 999 {
						if _, err := s.AckRange(0, seq); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}
