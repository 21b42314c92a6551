package uplink

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// fuzzEpoch in a fuzzed ack's range stands for the spool's own epoch,
// which is random: so the fuzzer reaches acks that free records.
const fuzzEpoch = 1

// fuzzCatalog is the catalog id the fuzzed uplink registers.
var fuzzCatalog = bytes.Repeat([]byte{0xCA}, wire.CatalogIDLen)

func ackSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	acks := []*pb.Ack{
		{VehicleId: "veh-1", Ranges: []*pb.SeqRange{{Epoch: fuzzEpoch, First: 2, Last: 4}}},
		{VehicleId: "veh-1", Ranges: []*pb.SeqRange{{Epoch: fuzzEpoch, First: 1, Last: 1}, {Epoch: fuzzEpoch, First: 6, Last: 99}, {Epoch: 7, First: 1, Last: 8}}},
		{VehicleId: "veh-1", Ranges: []*pb.SeqRange{{Epoch: fuzzEpoch, First: 5, Last: 3}}, Catalogs: [][]byte{fuzzCatalog, {1, 2}}},
		{VehicleId: "veh-2", Ranges: []*pb.SeqRange{{Epoch: fuzzEpoch, First: 1, Last: 8}}},
		{VehicleId: "veh-1", Ranges: []*pb.SeqRange{{Epoch: fuzzEpoch, First: 0, Last: ^uint64(0)}}},
	}
	var out [][]byte
	for _, a := range acks {
		data, err := proto.Marshal(a)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

// FuzzAck feeds arbitrary bytes to the agent's ack decoder, which reads
// what arrives on fleet/v1/{vehicle_id}/ack, and applies what it accepts
// to a real spool of eight batches: it never panics, accepts only acks for
// its vehicle, frees exactly the batches the ack's ranges of the spool's
// epoch cover, and registers the catalog only when the ack names it.
func FuzzAck(f *testing.F) {
	for _, s := range ackSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte("garbage"))
	seeds, _ := filepath.Glob(filepath.Join("testdata", "acks", "*.bin"))
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ack, err := decodeAck(data, "veh-1")
		if err != nil {
			return
		}
		if ack.GetVehicleId() != "veh-1" {
			t.Fatalf("accepted an ack for %q", ack.GetVehicleId())
		}
		sp := openSpool(t, t.TempDir())
		for range 8 {
			spoolBatch(t, sp, "veh-1")
		}
		u, err := New(Config{VehicleID: "veh-1", CatalogID: fuzzCatalog, Catalog: []byte{1},
			MQTT: mqttconn.Config{URL: "tcp://127.0.0.1:1", ClientID: "veh-1", KeepAlive: 30 * time.Second, ConnectTimeout: time.Second}},
			sp, Deps{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		epoch := sp.Epoch()
		for _, r := range ack.GetRanges() {
			if r.GetLast() < r.GetFirst() {
				t.Fatalf("an empty range %d..%d was kept", r.GetFirst(), r.GetLast())
			}
			if r.GetEpoch() == fuzzEpoch {
				r.Epoch = epoch
			}
		}
		u.applyAck(ack)
		for seq := uint64(1); seq <= 8; seq++ {
			covered := false
			for _, r := range ack.GetRanges() {
				covered = covered || (r.GetEpoch() == epoch && r.GetFirst() <= seq && seq <= r.GetLast())
			}
			_, err := sp.Get(seq)
			if freed := err != nil; freed != covered {
				t.Fatalf("seq %d: freed %v, covered by the ack %v", seq, freed, covered)
			}
		}
		named := false
		for _, id := range ack.GetCatalogs() {
			named = named || bytes.Equal(id, fuzzCatalog)
		}
		if u.CatalogRegistered() != named {
			t.Fatalf("catalog registered %v, named by the ack %v", u.CatalogRegistered(), named)
		}
	})
}

// TestAckSizeLimit: an ack over MaxAckBytes is refused before it is parsed.
func TestAckSizeLimit(t *testing.T) {
	big, err := proto.Marshal(&pb.Ack{VehicleId: "veh-1", Catalogs: [][]byte{make([]byte, MaxAckBytes)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeAck(big, "veh-1"); err == nil {
		t.Fatalf("an ack of %d bytes was accepted", len(big))
	}
	ok, _ := proto.Marshal(&pb.Ack{VehicleId: "veh-1"})
	if _, err := decodeAck(ok, "veh-1"); err != nil {
		t.Fatal(err)
	}
}
