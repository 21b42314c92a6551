package spool

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	crashChildEnv = "FLEETPIPE_SPOOL_CRASH_DIR"
	crashSeedEnv  = "FLEETPIPE_SPOOL_CRASH_SEED"
)

func crashConfig(dir string) Config {
	return Config{Dir: dir, Fsync: FsyncAlways, SegmentBytes: 2048, MaxBytes: 64 << 20, MaxAge: -1, AckSyncInterval: 3 * time.Millisecond}
}

// TestCrashChild is the process TestCrashConsistency kills: it appends in a
// loop, printing each seq once Append has returned (durable), and acks
// ranges, printing "a" before and "A" after.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("the child process of TestCrashConsistency")
	}
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	w := os.Stdout // unbuffered: each line is one write(2), out before the next append
	fail := func(err error) {
		fmt.Fprintf(w, "E %v\n", err)
		os.Exit(3)
	}
	s, err := Open(crashConfig(dir), Deps{})
	if err != nil {
		fail(err)
	}
	fmt.Fprintf(w, "O %d %d\n", s.Epoch(), s.Stats().NextSeq)
	var pend []uint64
	for r, err := range s.Pending(0) {
		if err != nil {
			fail(err)
		}
		pend = append(pend, r.Seq)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
		seq, err := s.Reserve()
		if err != nil {
			fail(err)
		}
		if err := s.Append(seq, payloadFor(seq), metaFor(seq)); err != nil {
			fail(err)
		}
		fmt.Fprintf(w, "D %d\n", seq)
		pend = append(pend, seq)
		if len(pend) > 4 && rng.IntN(3) == 0 {
			k := 1 + rng.IntN(len(pend)-2)
			first, last := pend[0], pend[k-1]
			fmt.Fprintf(w, "a %d %d\n", first, last)
			if _, err := s.AckRange(first, last); err != nil {
				fail(err)
			}
			fmt.Fprintf(w, "A %d %d\n", first, last)
			pend = pend[k:]
		}
	}
	fail(fmt.Errorf("not killed"))
}

// TestCrashConsistency kills a process appending with fsync=always 100
// times at random moments (some while it is still recovering), and after
// a third of the kills cuts the newest segment at a random offset past
// the last record reported durable, sometimes adding garbage, as a power
// cut would. After each, the spool must open; every seq reported durable
// must be pending or have had an ack started; no ack reported done may be
// undone; payloads read back intact; no seq is ever reported twice; the
// corrupt count is what the damage implies.
func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: 100 child processes")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	cfg := crashConfig(dir)

	durable := map[uint64]bool{}
	var intents, dones [][2]uint64
	var maxDurable, epoch uint64
	var kills, early, cuts, garbage, corrupt, maxPending int
	start := time.Now()
	for i := range 100 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashSeedEnv+"="+strconv.Itoa(i))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		var got []string
		var timer <-chan time.Time
		if rng.IntN(5) == 0 {
			early++ // often before or during recovery
			timer = time.After(time.Duration(rng.IntN(60)) * time.Millisecond)
		}
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("run %d: child exited by itself: %v\n%s\n%s", i, cmd.Wait(), strings.Join(got, "\n"), stderr.String())
				}
				got = append(got, l)
				if strings.HasPrefix(l, "O ") && timer == nil {
					timer = time.After(time.Duration(rng.IntN(40)) * time.Millisecond)
				}
			case <-timer:
				break wait
			}
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		for l := range lines {
			got = append(got, l) // everything it printed before dying counts
		}
		_ = cmd.Wait()
		kills++

		for _, l := range got {
			f := strings.Fields(l)
			a, _ := strconv.ParseUint(f[1], 10, 64)
			var b uint64
			if len(f) > 2 {
				b, _ = strconv.ParseUint(f[2], 10, 64)
			}
			switch f[0] {
			case "O":
				if epoch != 0 && a != epoch {
					t.Fatalf("run %d: epoch changed from %x to %x", i, epoch, a)
				}
				epoch = a
				if b <= maxDurable {
					t.Fatalf("run %d: child opened with next seq %d, but %d was durable", i, b, maxDurable)
				}
			case "D":
				if a <= maxDurable {
					t.Fatalf("run %d: seq %d reported durable again (or out of order): after %d", i, a, maxDurable)
				}
				durable[a], maxDurable = true, a
			case "a":
				intents = append(intents, [2]uint64{a, b})
			case "A":
				dones = append(dones, [2]uint64{a, b})
			case "E":
				t.Fatalf("run %d: child failed: %s", i, l)
			}
		}

		wantCorrupt := -1
		if rng.IntN(3) == 0 {
			cuts++
			wantCorrupt = powerCut(t, rng, dir, durable, &garbage)
		}

		s, err := Open(cfg, Deps{})
		if err != nil {
			t.Fatalf("run %d: spool does not open: %v", i, err)
		}
		st := s.Stats()
		if epoch != 0 && st.Epoch != epoch {
			t.Fatalf("run %d: epoch %x, want %x", i, st.Epoch, epoch)
		}
		epoch = st.Epoch
		if st.NextSeq <= maxDurable {
			t.Fatalf("run %d: next seq %d would reuse durable seq %d", i, st.NextSeq, maxDurable)
		}
		corrupt += st.Recovery.CorruptRecords
		if wantCorrupt >= 0 && st.Recovery.CorruptRecords != wantCorrupt {
			t.Fatalf("run %d: %d corrupt records after the power cut, want %d (%+v)", i, st.Recovery.CorruptRecords, wantCorrupt, st.Recovery)
		}
		if wantCorrupt < 0 && st.Recovery.CorruptRecords > 1 {
			t.Fatalf("run %d: a kill left %d corrupt records", i, st.Recovery.CorruptRecords)
		}
		live := map[uint64]bool{}
		for _, q := range pending(t, s) {
			live[q] = true
		}
		maxPending = max(maxPending, len(live))
		for q := range durable {
			if !live[q] && !covers(intents, q) {
				t.Fatalf("run %d: durable seq %d lost (not pending, never acked)", i, q)
			}
		}
		for q := range live {
			if covers(dones, q) {
				t.Fatalf("run %d: seq %d acked before the kill is pending again", i, q)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d kills (%d early, during start-up or recovery) in %v: %d seqs reported durable, %d ack ranges done; %d power cuts (%d with garbage), %d corrupt records cut out; at most %d pending",
		kills, early, time.Since(start).Round(time.Millisecond), len(durable), len(dones), cuts, garbage, corrupt, maxPending)
}

func covers(ranges [][2]uint64, q uint64) bool {
	for _, r := range ranges {
		if r[0] <= q && q <= r[1] {
			return true
		}
	}
	return false
}

// powerCut truncates the newest segment at a random offset past its last
// durable record, maybe appending garbage, and returns the number of
// corrupt records the next Open should count.
func powerCut(t *testing.T, rng *rand.Rand, dir string, durable map[uint64]bool, garbage *int) int {
	segs := segFiles(t, dir)
	if len(segs) == 0 {
		return 0
	}
	path := segs[len(segs)-1]
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []recInfo
	if len(data) >= segHeaderSize {
		recs, _ = scanRecords(data[segHeaderSize:], segHeaderSize, 0)
	}
	cutMin := int64(0)
	ends := map[int64]bool{segHeaderSize: true}
	for _, r := range recs {
		ends[r.off+r.size] = true
		if durable[r.seq] {
			cutMin = r.off + r.size
		}
	}
	cut := cutMin + rng.Int64N(int64(len(data))-cutMin+1)
	data = data[:cut]
	if cut < segHeaderSize {
		// A header never completed: the file is removed, nothing counted.
		return writeOrFail(t, path, data, 0)
	}
	last := cut
	for !ends[last] {
		last--
	}
	tail := cut - last
	if rng.IntN(2) == 0 {
		*garbage++
		g := make([]byte, 1+rng.IntN(300))
		if rng.IntN(2) == 0 {
			for i := range g {
				g[i] = byte(rng.Uint32())
			}
		}
		data = append(data, g...)
		tail += int64(len(g))
	}
	want := 0
	if tail > 0 {
		want = 1
	}
	return writeOrFail(t, path, data, want)
}

func writeOrFail(t *testing.T, path string, data []byte, want int) int {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return want
}
