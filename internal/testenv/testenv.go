// Package testenv finds the real services (Mosquitto, Apache Kafka, MinIO)
// that the compose/ scripts start for integration tests, and the shared
// third-party recordings under ../shared/data.
//
// The scripts print the variables this package reads; `make test` exports
// them. Outside `make test` a test that needs a service is skipped with a
// reason naming the variable, except under CI (CI set), where a missing
// service is a failure: CI must never pass by skipping its integration tests.
package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Variables the compose/ scripts export.
const (
	EnvMQTT        = "FLEET_TEST_MQTT_URL"      // e.g. tcp://127.0.0.1:11883
	EnvKafka       = "FLEET_TEST_KAFKA_BROKERS" // e.g. 127.0.0.1:19092
	EnvS3          = "FLEET_TEST_S3_ENDPOINT"   // e.g. http://127.0.0.1:19000
	EnvS3AccessKey = "FLEET_TEST_S3_ACCESS_KEY"
	EnvS3SecretKey = "FLEET_TEST_S3_SECRET_KEY"
	EnvPython      = "FLEET_TEST_PYTHON" // a python3 with duckdb and pyarrow
	EnvSharedData  = "FLEET_SHARED_DATA" // defaults to ../shared/data beside the checkout
)

// need returns the variable's value or skips (fails under CI) the test.
func need(t testing.TB, name, what string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	msg := what + " not available: " + name + " is not set (run `make test`, or `eval $(compose/services.sh env)` after `compose/services.sh start`)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + "; CI must run the integration tests, not skip them")
	}
	t.Skip(msg)
	return ""
}

// MQTT returns the URL of the real Mosquitto broker.
func MQTT(t testing.TB) string { t.Helper(); return need(t, EnvMQTT, "Mosquitto") }

// Kafka returns the seed brokers of the real Apache Kafka cluster.
func Kafka(t testing.TB) string { t.Helper(); return need(t, EnvKafka, "Apache Kafka") }

// EachKafka runs fn as two subtests, "kfake" against an in-process
// franz-go kfake cluster and "kafka" against the real Apache Kafka (which
// Kafka skips, or fails under CI, when it is missing), passing the seed
// brokers. The cluster is shared by everything fn does.
func EachKafka(t *testing.T, fn func(t *testing.T, brokers []string)) {
	t.Helper()
	t.Run("kfake", func(t *testing.T) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		fn(t, c.ListenAddrs())
	})
	t.Run("kafka", func(t *testing.T) { fn(t, []string{Kafka(t)}) })
}

// S3 is how to reach the real S3 server (MinIO).
type S3 struct {
	Endpoint, AccessKey, SecretKey string
}

// MinIO returns the endpoint and credentials of the real MinIO server.
func MinIO(t testing.TB) S3 {
	t.Helper()
	return S3{
		Endpoint:  need(t, EnvS3, "MinIO"),
		AccessKey: need(t, EnvS3AccessKey, "MinIO credentials"),
		SecretKey: need(t, EnvS3SecretKey, "MinIO credentials"),
	}
}

// Python returns a python3 that can import duckdb and pyarrow.
func Python(t testing.TB) string {
	t.Helper()
	return need(t, EnvPython, "python3 with duckdb and pyarrow")
}

// SharedData returns the path of a file under the shared third-party data
// folder, skipping the test (failing under CI) when it is absent.
func SharedData(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv(EnvSharedData)
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "..", "shared", "data")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		msg := "shared recording " + name + " not found at " + p + " (set " + EnvSharedData + " to the folder holding ../shared/data)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// RepoRoot returns the root of this checkout.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}
