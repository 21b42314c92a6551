package agent

import (
	"flag"
	"strings"
	"testing"
)

// TestRegisteredSourcesKeepTheContract: every source kind in Registry
// declares flags only under its own name, so kinds never collide, and a
// fresh configuration per call, so two agents in one process never share
// one.
func TestRegisteredSourcesKeepTheContract(t *testing.T) {
	if len(Registry.Names()) < 3 {
		t.Fatalf("registry %v lacks the built-in kinds", Registry.Names())
	}
	for _, name := range Registry.Names() {
		spec, _ := Registry.Lookup(name)
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		c1 := spec.NewConfig()
		c1.RegisterFlags(fs)
		n := 0
		fs.VisitAll(func(f *flag.Flag) {
			n++
			if !strings.HasPrefix(f.Name, name+"-") {
				t.Errorf("source %s declares --%s, outside its prefix %s-", name, f.Name, name)
			}
			if f.Usage == "" {
				t.Errorf("source %s: --%s has no help", name, f.Name)
			}
		})
		if n == 0 {
			t.Errorf("source %s declares no flags", name)
		}
		if c2 := spec.NewConfig(); c1 == c2 {
			t.Errorf("source %s: NewConfig returned the same configuration twice", name)
		}
		if !strings.Contains(Registry.Help(), name+" (") {
			t.Errorf("--source help %q does not describe %s", Registry.Help(), name)
		}
	}
}
