// Package compose holds the ways the stack starts (ARCHITECTURE.md, "How
// the stack starts"). This file checks docker-compose.yml without Docker:
// the CI machine has no Docker engine, so the file is validated, not run.
package compose

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fleetpipe/fleetpipe/bridge/relay"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/livelocation"
	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/consumers/replay/replay"
	"github.com/fleetpipe/fleetpipe/edge-agent/agent"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// binaries maps each of our Dockerfiles (from the repository root) to the
// program it builds and that program's configuration, whose flags are what
// the environment variables must name.
var binaries = map[string]struct {
	program cli.Program
	cfg     cli.Config
}{
	"edge-agent/Dockerfile":              {agent.Program, &agent.Config{}},
	"bridge/Dockerfile":                  {relay.Program, &relay.Config{}},
	"consumers/parquet-sink/Dockerfile":  {sink.Program, &sink.Config{}},
	"consumers/live-location/Dockerfile": {livelocation.Program, &livelocation.Config{}},
	"consumers/replay/Dockerfile":        {replay.Program, &replay.Config{}},
}

// prefixes maps each Dockerfile to its binary's environment prefix.
var prefixes = func() map[string]string {
	m := map[string]string{}
	for df, b := range binaries {
		m[df] = b.program.EnvPrefix
	}
	return m
}()

// flagOf returns the flag an environment variable sets, as ff reads it
// (PREFIX_ then the flag name upper-cased with '-' as '_'), or "" if none.
func flagOf(dockerfile, env string) string {
	b := binaries[dockerfile]
	fs := flag.NewFlagSet(b.program.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	// The flags cli.Parse adds to every binary.
	fs.String("config", "", "")
	fs.String("log-level", "", "")
	fs.String("log-format", "", "")
	b.cfg.RegisterFlags(fs)
	var found string
	fs.VisitAll(func(f *flag.Flag) {
		if b.program.EnvPrefix+"_"+strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(f.Name)) == env {
			found = f.Name
		}
	})
	return found
}

type composeFile struct {
	Name     string             `yaml:"name"`
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
	Networks map[string]any     `yaml:"networks"`
	Ext      map[string]any     `yaml:",inline"` // x-* extension fields only
}

// service lists the Compose service keys this project uses or may; decoding
// with KnownFields rejects a misspelt key that Docker would reject too.
type service struct {
	Image       string    `yaml:"image"`
	Build       yaml.Node `yaml:"build"`
	Command     any       `yaml:"command"`
	Entrypoint  any       `yaml:"entrypoint"`
	Environment yaml.Node `yaml:"environment"`
	Ports       []any     `yaml:"ports"`
	Expose      []any     `yaml:"expose"`
	Volumes     []any     `yaml:"volumes"`
	DependsOn   yaml.Node `yaml:"depends_on"`
	Healthcheck *struct {
		Test          any    `yaml:"test"`
		Interval      string `yaml:"interval"`
		Timeout       string `yaml:"timeout"`
		Retries       int    `yaml:"retries"`
		StartPeriod   string `yaml:"start_period"`
		StartInterval string `yaml:"start_interval"`
		Disable       bool   `yaml:"disable"`
	} `yaml:"healthcheck"`
	Restart         string         `yaml:"restart"`
	Profiles        []string       `yaml:"profiles"`
	User            string         `yaml:"user"`
	WorkingDir      string         `yaml:"working_dir"`
	Networks        any            `yaml:"networks"`
	Labels          any            `yaml:"labels"`
	StopGracePeriod string         `yaml:"stop_grace_period"`
	Init            bool           `yaml:"init"`
	Tmpfs           any            `yaml:"tmpfs"`
	ReadOnly        bool           `yaml:"read_only"`
	Deploy          map[string]any `yaml:"deploy"`
	Logging         map[string]any `yaml:"logging"`
	Ext             map[string]any `yaml:",inline"` // x-* only
}

func load(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if len(f.Services) == 0 {
		t.Fatal("docker-compose.yml defines no services")
	}
	for k := range f.Ext {
		if !strings.HasPrefix(k, "x-") {
			t.Errorf("unknown top-level key %q", k)
		}
	}
	for name, s := range f.Services {
		for k := range s.Ext {
			if !strings.HasPrefix(k, "x-") {
				t.Errorf("service %s: unknown key %q", name, k)
			}
		}
	}
	return f
}

// dockerfile returns the service's Dockerfile relative to this directory,
// or "" for an image-only service.
func dockerfile(t *testing.T, name string, s service) string {
	t.Helper()
	var context, file string
	switch s.Build.Kind {
	case 0:
		return ""
	case yaml.ScalarNode:
		context = s.Build.Value
	case yaml.MappingNode:
		var b struct {
			Context    string            `yaml:"context"`
			Dockerfile string            `yaml:"dockerfile"`
			Args       map[string]string `yaml:"args"`
			Target     string            `yaml:"target"`
		}
		if err := s.Build.Decode(&b); err != nil {
			t.Fatalf("service %s: build: %v", name, err)
		}
		context, file = b.Context, b.Dockerfile
	default:
		t.Fatalf("service %s: build is neither a path nor a mapping", name)
	}
	if context == "" {
		context = "."
	}
	if file == "" {
		file = "Dockerfile"
	}
	return filepath.Join(context, file)
}

// repoRel returns a path relative to this directory as a path from the
// repository root (this directory's parent), slash-separated.
func repoRel(t *testing.T, p string) string {
	t.Helper()
	rel, err := filepath.Rel("..", p)
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("%s is outside the repository", p)
	}
	return filepath.ToSlash(rel)
}

func mustExist(t *testing.T, what, p string) {
	t.Helper()
	if _, err := os.Stat(p); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func TestServicesHaveImageOrBuild(t *testing.T) {
	f := load(t)
	built := map[string]string{} // Dockerfile from the repo root -> service
	for name, s := range f.Services {
		df := dockerfile(t, name, s)
		switch {
		case s.Image == "" && df == "":
			t.Errorf("service %s has neither image nor build", name)
		case df != "":
			mustExist(t, "service "+name+": Dockerfile", df)
			built[repoRel(t, df)] = name
		}
	}
	for df := range prefixes {
		if built[df] == "" {
			t.Errorf("no service builds %s", df)
		}
	}
	for df, name := range built {
		if prefixes[df] == "" {
			t.Errorf("service %s builds %s, which is not one of our binaries' Dockerfiles", name, df)
		}
	}
}

func TestDependsOnDefinedServices(t *testing.T) {
	f := load(t)
	for name, s := range f.Services {
		deps := map[string]string{} // service -> condition
		switch s.DependsOn.Kind {
		case 0:
			continue
		case yaml.SequenceNode:
			var list []string
			if err := s.DependsOn.Decode(&list); err != nil {
				t.Fatalf("service %s: depends_on: %v", name, err)
			}
			for _, d := range list {
				deps[d] = "service_started"
			}
		case yaml.MappingNode:
			var m map[string]struct {
				Condition string `yaml:"condition"`
				Restart   bool   `yaml:"restart"`
				Required  *bool  `yaml:"required"`
			}
			if err := s.DependsOn.Decode(&m); err != nil {
				t.Fatalf("service %s: depends_on: %v", name, err)
			}
			for d, c := range m {
				deps[d] = c.Condition
			}
		default:
			t.Fatalf("service %s: depends_on is neither a list nor a mapping", name)
		}
		for d, cond := range deps {
			dep, ok := f.Services[d]
			switch {
			case !ok:
				t.Errorf("service %s depends on %q, which is not defined", name, d)
			case d == name:
				t.Errorf("service %s depends on itself", name)
			case cond == "service_healthy" && (dep.Healthcheck == nil || dep.Healthcheck.Test == nil):
				t.Errorf("service %s waits for %s to be healthy, but %s has no healthcheck", name, d, d)
			case cond != "" && cond != "service_started" && cond != "service_healthy" && cond != "service_completed_successfully":
				t.Errorf("service %s: depends_on %s: unknown condition %q", name, d, cond)
			}
			if len(dep.Profiles) > 0 && !slices.ContainsFunc(s.Profiles, func(p string) bool { return slices.Contains(dep.Profiles, p) }) {
				t.Errorf("service %s depends on %s, which only starts with profiles %v", name, d, dep.Profiles)
			}
		}
	}
}

// hostPort returns the published host port of a port entry, or "" when
// the entry publishes none (a container port only, given a random one).
func hostPort(t *testing.T, service string, p any) []string {
	t.Helper()
	switch v := p.(type) {
	case int:
		return nil
	case string:
		spec, _, _ := strings.Cut(v, "/") // drop /tcp, /udp
		parts := strings.Split(spec, ":")
		switch len(parts) {
		case 1:
			return nil
		case 2, 3:
			host := parts[len(parts)-2]
			if lo, hi, ok := strings.Cut(host, "-"); ok { // a range
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if err1 != nil || err2 != nil || b < a {
					t.Errorf("service %s: bad port range %q", service, v)
					return nil
				}
				var out []string
				for i := a; i <= b; i++ {
					out = append(out, strconv.Itoa(i))
				}
				return out
			}
			if _, err := strconv.Atoi(host); err != nil {
				t.Errorf("service %s: bad host port in %q", service, v)
			}
			return []string{host}
		}
		t.Errorf("service %s: bad port %q", service, v)
	case map[string]any:
		if pub, ok := v["published"]; ok {
			return []string{fmt.Sprint(pub)}
		}
		return nil
	default:
		t.Errorf("service %s: bad port entry %v", service, p)
	}
	return nil
}

func TestPublishedPortsUnique(t *testing.T) {
	f := load(t)
	owner := map[string]string{}
	for name, s := range f.Services {
		for _, p := range s.Ports {
			for _, hp := range hostPort(t, name, p) {
				if o, dup := owner[hp]; dup {
					t.Errorf("host port %s is published by both %s and %s", hp, o, name)
				}
				owner[hp] = name
			}
		}
	}
	// What the docs promise users: the dashboard and the MinIO console.
	if owner["8080"] != "live-location" {
		t.Errorf("host port 8080 is published by %q, want live-location (the dashboard)", owner["8080"])
	}
	if owner["9001"] != "minio" {
		t.Errorf("host port 9001 is published by %q, want minio (its console)", owner["9001"])
	}
}

func environment(t *testing.T, name string, s service) map[string]string {
	t.Helper()
	env := map[string]string{}
	switch s.Environment.Kind {
	case 0:
	case yaml.MappingNode:
		if err := s.Environment.Decode(&env); err != nil {
			t.Fatalf("service %s: environment: %v", name, err)
		}
	case yaml.SequenceNode:
		var list []string
		if err := s.Environment.Decode(&list); err != nil {
			t.Fatalf("service %s: environment: %v", name, err)
		}
		for _, kv := range list {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	default:
		t.Fatalf("service %s: environment is neither a mapping nor a list", name)
	}
	return env
}

var envName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

func TestOurServicesUseTheirEnvPrefix(t *testing.T) {
	f := load(t)
	for name, s := range f.Services {
		df := dockerfile(t, name, s)
		if df == "" {
			continue
		}
		prefix := prefixes[repoRel(t, df)]
		env := environment(t, name, s)
		for k := range env {
			if !strings.HasPrefix(k, prefix+"_") || !envName.MatchString(k) {
				t.Errorf("service %s: environment variable %q does not start with %s_ (the binary reads only %s_<FLAG>)", name, k, prefix, prefix)
				continue
			}
			if flagOf(repoRel(t, df), k) == "" {
				t.Errorf("service %s: environment variable %q names no flag of %s (see its --help)", name, k, binaries[repoRel(t, df)].program.Name)
			}
		}
	}
}

func TestReferencedFilesExist(t *testing.T) {
	f := load(t)
	for name, s := range f.Services {
		for _, v := range s.Volumes {
			var src, typ string
			switch v := v.(type) {
			case string:
				src, _, _ = strings.Cut(v, ":")
				typ = "volume"
				if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") || strings.HasPrefix(src, "~") {
					typ = "bind"
				}
			case map[string]any:
				typ, _ = v["type"].(string)
				src, _ = v["source"].(string)
			default:
				t.Errorf("service %s: bad volume entry %v", name, v)
				continue
			}
			switch typ {
			case "bind":
				if !strings.HasPrefix(src, "./") && !strings.HasPrefix(src, "../") {
					t.Errorf("service %s: bind mount %q is not relative to the compose file", name, src)
					continue
				}
				mustExist(t, "service "+name+": bind mount", src)
			case "volume":
				if _, ok := f.Volumes[src]; src != "" && !ok {
					t.Errorf("service %s: named volume %q is not declared under volumes:", name, src)
				}
			}
		}
	}
}

// TestDockerfiles checks each binary's Dockerfile builds that binary the way
// the project ships them: a golang:1.26 build stage at the repository root,
// CGO off, and a static base image.
func TestDockerfiles(t *testing.T) {
	for df := range prefixes {
		data, err := os.ReadFile(filepath.Join("..", df))
		if err != nil {
			t.Error(err)
			continue
		}
		text := string(data)
		dir := filepath.ToSlash(filepath.Dir(df))
		var froms []string
		for l := range strings.Lines(text) {
			if fields := strings.Fields(l); len(fields) > 1 && strings.EqualFold(fields[0], "FROM") {
				image := fields[1]
				if strings.HasPrefix(image, "--platform") {
					image = fields[2]
				}
				froms = append(froms, image)
			}
		}
		switch {
		case len(froms) < 2:
			t.Errorf("%s: want a multi-stage build, have stages %v", df, froms)
		case froms[0] != "golang:1.26":
			t.Errorf("%s: build stage is %s, want golang:1.26", df, froms[0])
		case !strings.HasPrefix(froms[len(froms)-1], "gcr.io/distroless/static") && !strings.HasPrefix(froms[len(froms)-1], "alpine"):
			t.Errorf("%s: final stage is %s, want gcr.io/distroless/static or alpine", df, froms[len(froms)-1])
		}
		if !strings.Contains(text, "CGO_ENABLED=0") {
			t.Errorf("%s: does not set CGO_ENABLED=0", df)
		}
		if !regexp.MustCompile(`go build [^\n]*\./` + regexp.QuoteMeta(dir) + `(\s|$)`).MatchString(text) {
			t.Errorf("%s: does not go build ./%s", df, dir)
		}
		if !strings.Contains(text, "COPY go.mod go.sum") {
			t.Errorf("%s: does not copy go.mod and go.sum from the repository root", df)
		}
	}
}
