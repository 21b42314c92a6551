package embedmqtt

import (
	"crypto/subtle"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// The fleet's broker rule (compose/mosquitto/acl for Mosquitto is the same
// rule): a vehicle may publish only its own fleet/v1/{vehicle_id}/
// telemetry, status and catalog, and read only its own
// fleet/v1/{vehicle_id}/ack; the bridge's service account reads every
// vehicle's telemetry and catalogs (shared subscriptions included) and
// writes every vehicle's ack. A vehicle's identity is its MQTT username —
// in production the CN of its client certificate, which Mosquitto makes
// the username (use_identity_as_username) — or, with no username, its
// client ID (the agent's client ID is its vehicle ID). The embedded
// broker has no TLS: it listens on loopback, and checks service
// accounts' passwords.

// fleetACL is a mochi hook enforcing the rule.
type fleetACL struct {
	mqtt.HookBase
	services map[string]string // username -> password
}

func (h *fleetACL) ID() string { return "fleet-acl" }

func (h *fleetACL) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// identity is the client's user name, or its client ID without one.
func identity(cl *mqtt.Client) string {
	if len(cl.Properties.Username) > 0 {
		return string(cl.Properties.Username)
	}
	return cl.ID
}

func (h *fleetACL) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	if want, ok := h.services[user]; ok {
		return subtle.ConstantTimeCompare([]byte(want), pk.Connect.Password) == 1
	}
	id := user
	if id == "" {
		id = pk.Connect.ClientIdentifier
	}
	return wire.ValidVehicleID(id)
}

func (h *fleetACL) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if _, ok := h.services[string(cl.Properties.Username)]; ok && len(cl.Properties.Username) > 0 {
		return serviceAllowed(topic, write)
	}
	return vehicleAllowed(identity(cl), topic, write)
}

// serviceAllowed is the bridge's rule: read telemetry and catalogs of any
// vehicle, write any vehicle's ack.
func serviceAllowed(topic string, write bool) bool {
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		_, topic, ok = strings.Cut(rest, "/")
		if !ok {
			return false
		}
	}
	parts := strings.Split(topic, "/")
	if len(parts) != 4 || parts[0] != "fleet" || parts[1] != "v1" {
		return false
	}
	if write {
		return parts[3] == "ack" && wire.ValidVehicleID(parts[2])
	}
	return (parts[3] == "telemetry" || parts[3] == "catalog") && (parts[2] == "+" || wire.ValidVehicleID(parts[2]))
}

// vehicleAllowed is a vehicle's rule: write its own telemetry, status and
// catalog, read its own ack; nothing with wildcards.
func vehicleAllowed(id, topic string, write bool) bool {
	rest, ok := strings.CutPrefix(topic, "fleet/v1/"+id+"/")
	if !ok || !wire.ValidVehicleID(id) {
		return false
	}
	if write {
		return rest == "telemetry" || rest == "status" || rest == "catalog"
	}
	return rest == "ack"
}
