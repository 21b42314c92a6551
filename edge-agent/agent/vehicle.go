package agent

import (
	"fmt"

	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/edge-agent/uplink"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// vehicle is one car's spool, uplink and batching.
type vehicle struct {
	id      string
	spool   *spool.Spool
	uplink  *uplink.Uplink
	catalog *wire.Catalog // nil: batches always name their signals
	// catalogAcked reports whether the cloud holds the catalog, so
	// batches may refer to it (the uplink's CatalogRegistered).
	catalogAcked func() bool
	// linkUp reports whether the uplink is connected (its Connected).
	linkUp func() bool
}

// openVehicle opens the vehicle's spool in dir and builds its uplink.
func (a *Agent) openVehicle(id, dir string) (*vehicle, error) {
	sc := a.cfg.Spool
	sc.Dir = dir
	sp, err := spool.Open(sc, spool.Deps{Logger: a.logger.With("vehicle", id), Registerer: a.deps.Registerer})
	if err != nil {
		return nil, fmt.Errorf("%s: spool: %w", id, err)
	}
	mc := a.cfg.MQTT
	if _, fleet := a.cfg.fleet(); fleet || mc.ClientID == "" || mc.ClientID == defaultClientID {
		mc.ClientID = id
	}
	uc := uplink.Config{
		VehicleID: id, AgentVersion: Version, MQTT: mc, AckTimeout: a.cfg.AckTimeout,
		MaxInflight: a.cfg.MaxInflight, BacklogRate: a.cfg.BacklogRate,
		ReconnectMin: a.cfg.ReconnectMin, ReconnectMax: a.cfg.ReconnectMax,
	}
	cat := a.catalog
	if cat != nil {
		uc.Catalog, uc.CatalogID = cat.Bytes(), cat.ID()
	}
	u, err := uplink.New(uc, sp, uplink.Deps{Logger: a.logger, Metrics: a.upm})
	if err != nil {
		sp.Close()
		return nil, err
	}
	if st := sp.Stats(); st.Records > 0 || st.Recovery.CorruptRecords > 0 {
		a.logger.Info("spool recovered", "vehicle", id, "epoch", fmt.Sprintf("%016x", st.Epoch), "pending_batches", st.Records,
			"corrupt_records", st.Recovery.CorruptRecords, "new_epoch", st.Recovery.NewEpoch)
	}
	return &vehicle{id: id, spool: sp, uplink: u, catalog: cat, catalogAcked: u.CatalogRegistered, linkUp: u.Connected}, nil
}
