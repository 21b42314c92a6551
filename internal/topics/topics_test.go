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

func TestVehicleFromCatalog(t *testing.T) {
	for topic, want := range map[string]string{
		Catalog("veh-1"):          "veh-1",
		Telemetry("veh-1"):        "",
		"fleet/v1/a/b/catalog":    "",
		"fleet/v1/veh-1/catalogx": "",
	} {
		got, ok := VehicleFromCatalog(topic)
		if got != want || ok != (want != "") {
			t.Errorf("VehicleFromCatalog(%q) = %q, %v; want %q", topic, got, ok, want)
		}
	}
	if got := SharedCatalogFilter("bridge"); got != "$share/bridge/fleet/v1/+/catalog" {
		t.Errorf("SharedCatalogFilter = %q", got)
	}
}
