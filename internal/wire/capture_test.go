package wire

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// TestCaptureMarkerRoundTrips: a capture window's marker travels in the
// envelope and comes back as it went; live batches carry none.
func TestCaptureMarkerRoundTrips(t *testing.T) {
	b := sampleBatch()
	if got := captureRoundTrip(t, b); got.Capture != nil {
		t.Fatalf("a live batch came back with a capture marker %+v", got.Capture)
	}
	want := Capture{ID: 41, Rule: "harsh_brake", TriggerTime: 1_674_148_759_735_107_000, Part: 3, Final: true}
	b.Capture = &want
	got := captureRoundTrip(t, b)
	if got.Capture == nil || *got.Capture != want {
		t.Fatalf("capture marker %+v came back as %+v", want, got.Capture)
	}
	// A final marker may carry no readings at all.
	empty := &Batch{Identity: Identity{VehicleID: "v1", Epoch: 1, Seq: 9}, BaseTime: t0, Capture: &Capture{ID: 41, Rule: "r", Part: 4, Final: true}}
	if got := captureRoundTrip(t, empty); len(got.Readings)+len(got.Fixes) != 0 || !got.Capture.Final {
		t.Fatalf("an empty final part came back as %+v", got)
	}
}

func captureRoundTrip(t *testing.T, b *Batch) *Batch {
	t.Helper()
	data, err := Encode(b, EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestBadCaptureMarkers: Encode refuses a marker it could not name, and
// Decode reports one from the network as malformed.
func TestBadCaptureMarkers(t *testing.T) {
	for _, c := range []Capture{{ID: 0, Rule: "r"}, {ID: 1, Rule: ""}, {ID: 1, Rule: "has space"}, {ID: 1, Rule: string(make([]byte, 65))}} {
		b := sampleBatch()
		b.Capture = &c
		if _, err := Encode(b, EncodeOptions{}); err == nil {
			t.Errorf("Encode accepted capture %+v", c)
		}
		data, err := Encode(sampleBatch(), EncodeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		env := &pb.Batch{}
		if err := proto.Unmarshal(data, env); err != nil {
			t.Fatal(err)
		}
		env.Capture = &pb.Capture{Id: c.ID, Rule: c.Rule}
		data, err = Seal(env) // a sender that checksums what it got wrong
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(data, Limits{}); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode of capture %+v: %v, want ErrMalformed", c, err)
		}
	}
}
