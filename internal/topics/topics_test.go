package topics

import "testing"

func TestVehicleFromTelemetry(t *testing.T) {
	for topic, want := range map[string]string{
		Telemetry("veh-1"):          "veh-1",
		"fleet/v1/veh-1/status":     "",
		"fleet/v1//telemetry":       "",
		"fleet/v1/a/b/telemetry":    "",
		"other/v1/veh-1/telemetry":  "",
		"fleet/v1/veh-1/telemetryx": "",
	} {
		got, ok := VehicleFromTelemetry(topic)
		if got != want || ok != (want != "") {
			t.Errorf("VehicleFromTelemetry(%q) = %q, %v; want %q", topic, got, ok, want)
		}
	}
	if got := SharedTelemetryFilter("bridge"); got != "$share/bridge/fleet/v1/+/telemetry" {
		t.Errorf("SharedTelemetryFilter = %q", got)
	}
}
