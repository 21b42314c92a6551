// Package topics names the MQTT topics of the fleet contract
// (ARCHITECTURE.md, "MQTT contract") and the Kafka topic defaults.
package topics

import "strings"

// Kafka topic defaults; every binary lets the user rename them.
const (
	KafkaTelemetry = "fleet.telemetry.v1"
	KafkaDLQ       = "fleet.telemetry.dlq.v1"
	KafkaLocation  = "fleet.location.v1"
	// KafkaCatalog is the log-compacted topic of registered signal
	// catalogs, keyed by catalog id in hex.
	KafkaCatalog = "fleet.catalog.v1"
)

const root = "fleet/v1/"

// TelemetryFilter matches every vehicle's telemetry topic.
const TelemetryFilter = root + "+/telemetry"

// Telemetry is where a vehicle publishes its batches (QoS 1).
func Telemetry(vehicleID string) string { return root + vehicleID + "/telemetry" }

// Status is a vehicle's retained online/offline topic, also its will.
func Status(vehicleID string) string { return root + vehicleID + "/status" }

// Ack is where the cloud tells a vehicle which batches Kafka holds.
func Ack(vehicleID string) string { return root + vehicleID + "/ack" }

// Catalog is where a vehicle registers its signal catalog (QoS 1).
func Catalog(vehicleID string) string { return root + vehicleID + "/catalog" }

// CatalogFilter matches every vehicle's catalog topic.
const CatalogFilter = root + "+/catalog"

// SharedCatalogFilter is CatalogFilter as an MQTT shared subscription.
func SharedCatalogFilter(group string) string { return "$share/" + group + "/" + CatalogFilter }

// VehicleFromCatalog returns the vehicle ID in a catalog topic.
func VehicleFromCatalog(topic string) (string, bool) { return vehicleFrom(topic, "/catalog") }

// SharedTelemetryFilter is TelemetryFilter as an MQTT shared subscription,
// so the replicas of one group split the vehicles between them.
func SharedTelemetryFilter(group string) string { return "$share/" + group + "/" + TelemetryFilter }

// VehicleFromTelemetry returns the vehicle ID in a telemetry topic.
func VehicleFromTelemetry(topic string) (string, bool) { return vehicleFrom(topic, "/telemetry") }

func vehicleFrom(topic, suffix string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, root)
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, suffix)
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}
