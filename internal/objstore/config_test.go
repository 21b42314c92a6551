package objstore_test

import (
	"bufio"
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
)

// loadConfig decodes a testdata config strictly and validates it.
func loadConfig(path string) (objstore.Config, error) {
	var cfg objstore.Config
	raw, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func TestConfigFiles(t *testing.T) {
	good, _ := filepath.Glob("testdata/config/*.good.yaml")
	bad, _ := filepath.Glob("testdata/config/*.bad.yaml")
	if len(good) == 0 || len(bad) == 0 {
		t.Fatal("no testdata/config files")
	}
	for _, f := range good {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := loadConfig(f); err != nil {
				t.Error(err)
			}
		})
	}
	// A bad file's first line is "# error: <text the error must contain>".
	for _, f := range bad {
		t.Run(filepath.Base(f), func(t *testing.T) {
			fh, err := os.Open(f)
			if err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(fh)
			sc.Scan()
			fh.Close()
			want, ok := strings.CutPrefix(sc.Text(), "# error: ")
			if !ok {
				t.Fatalf("first line %q is not \"# error: ...\"", sc.Text())
			}
			_, err = loadConfig(f)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v, want one containing %q", err, want)
			}
		})
	}
}

func TestRegisterFlags(t *testing.T) {
	var live, backfill objstore.Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	live.RegisterFlags(fs, "")
	backfill.RegisterFlags(fs, "backfill-")
	err := fs.Parse([]string{
		"--s3-endpoint=http://127.0.0.1:9000", "--s3-bucket=fleet", "--s3-prefix=prod",
		"--s3-access-key=k", "--s3-secret-key=s", "--s3-path-style",
		"--backfill-s3-bucket=archive", "--backfill-s3-region=eu-west-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := objstore.Config{Endpoint: "http://127.0.0.1:9000", Region: "us-east-1", Bucket: "fleet", Prefix: "prod", AccessKey: "k", SecretKey: "s", PathStyle: true, MaxAttempts: objstore.DefaultMaxAttempts}
	if live != want {
		t.Errorf("flags gave %+v, want %+v", live, want)
	}
	if want := (objstore.Config{Region: "eu-west-1", Bucket: "archive", MaxAttempts: objstore.DefaultMaxAttempts}); backfill != want {
		t.Errorf("prefixed flags gave %+v, want %+v", backfill, want)
	}
	for _, name := range []string{"s3-endpoint", "s3-region", "s3-bucket", "s3-prefix", "s3-access-key", "s3-secret-key", "s3-path-style", "s3-sse", "s3-sse-kms-key-id", "s3-max-attempts"} {
		if f := fs.Lookup(name); f == nil || f.Usage == "" {
			t.Errorf("flag --%s missing or without help", name)
		}
	}
}
