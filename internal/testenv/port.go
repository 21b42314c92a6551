package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"
)

// FreeAddr returns a loopback address (127.0.0.1:PORT) for a program the
// test starts later, which binds it itself. The port is free now and
// lies below the kernel's ephemeral range: a listener on port 0 or an
// outgoing connection anywhere on the machine (other tests run at the
// same time) never takes it in the meantime, as it could a port that
// "127.0.0.1:0" handed out and the test closed again.
func FreeAddr(t testing.TB) string {
	t.Helper()
	lo := 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, b int
		if _, err := fmt.Sscan(string(data), &a, &b); err == nil && a > 0 {
			lo = a
		}
	}
	// From 22000: clear of the compose/ services' ports (11883,
	// 19000-19093) under any port offset up to 2900.
	const from = 22000
	if lo-from >= 1000 {
		for range 100 {
			addr := fmt.Sprintf("127.0.0.1:%d", from+rand.IntN(lo-from))
			if ln, err := net.Listen("tcp", addr); err == nil {
				ln.Close()
				return addr
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
