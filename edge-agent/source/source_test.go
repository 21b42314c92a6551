package source

import (
	"flag"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

type nopConfig struct{}

func (nopConfig) RegisterFlags(*flag.FlagSet)         {}
func (nopConfig) Validate() error                     { return nil }
func (nopConfig) Input() Input                        { return Input{Clock: Live} }
func (nopConfig) Signals() ([]wire.SignalSpec, error) { return nil, nil }
func (nopConfig) New(Deps) (Source, error)            { return nil, nil }

func spec(name string) Spec {
	return Spec{Name: name, Summary: name + " things", NewConfig: func() Config { return nopConfig{} }}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry(spec("b"), spec("a"))
	if got := r.Names(); len(got) != 2 || got[0] != "b" || got[1] != "a" {
		t.Errorf("Names = %v, want registration order [b a]", got)
	}
	if s, ok := r.Lookup("a"); !ok || s.Name != "a" {
		t.Errorf("Lookup(a) = %v, %v", s, ok)
	}
	if _, ok := r.Lookup("c"); ok {
		t.Error("Lookup found an unregistered kind")
	}
	if got, want := r.Help(), "b (b things), a (a things)"; got != want {
		t.Errorf("Help = %q, want %q", got, want)
	}
	if cs := r.Configs(); len(cs) != 2 || cs["a"] == nil || cs["b"] == nil {
		t.Errorf("Configs = %v", cs)
	}
}

func TestRegistryRefusesDuplicates(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("a duplicate name was accepted")
		}
	}()
	NewRegistry(spec("a"), spec("a"))
}

func TestItemsLen(t *testing.T) {
	it := Items{Readings: make([]wire.Reading, 2), Unsampled: make([]wire.Reading, 3), Fixes: make([]wire.Fix, 1)}
	if it.Len() != 6 {
		t.Errorf("Len = %d, want 6", it.Len())
	}
}
