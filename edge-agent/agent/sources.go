package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/gps"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Registry is the source kinds the agent knows, by --source name. A new
// kind is a package providing a source.Spec, and one line here.
var Registry = source.NewRegistry(
	can.Spec(),
	gps.Spec(),
	sim.Spec(),
)

// itemBuf is a copy of a source's Items on its way to the collector; the
// collector hands it back for reuse, so emitting allocates nothing once
// the buffers have grown.
type itemBuf struct {
	readings, unsampled []wire.Reading
	fixes               []wire.Fix
	clock               int64
}

func (b *itemBuf) items() source.Items {
	return source.Items{Readings: b.readings, Unsampled: b.unsampled, Fixes: b.fixes, Clock: b.clock}
}

// itemQueue is how many emitted Items may wait for the collector.
const itemQueue = 64

// runVehicle runs the vehicle's sources into one collector until they
// have all ended (a replayed log, a finite simulation), one fails, or ctx
// is cancelled; then it spools what is left.
func (a *Agent) runVehicle(ctx context.Context, v *vehicle, sources []source.Source, live bool) error {
	items := make(chan *itemBuf, itemQueue)
	free := make(chan *itemBuf, itemQueue+len(sources))
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	errc := make(chan error, len(sources))
	var wg sync.WaitGroup
	for _, src := range sources {
		wg.Go(func() {
			errc <- src.Run(srcCtx, func(it source.Items) {
				var b *itemBuf
				select {
				case b = <-free:
				default:
					b = new(itemBuf)
				}
				b.readings = append(b.readings[:0], it.Readings...)
				b.unsampled = append(b.unsampled[:0], it.Unsampled...)
				b.fixes = append(b.fixes[:0], it.Fixes...)
				b.clock = it.Clock
				select {
				case items <- b:
				case <-srcCtx.Done():
				}
			})
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	defer func() { stopSources(); <-done }()

	c, err := a.newCollector(v, live)
	if err != nil {
		return err
	}
	// take collects one emitted Items and hands its buffer back.
	take := func(b *itemBuf) error {
		err := c.add(b.items())
		clear(b.readings) // drop string references
		clear(b.unsampled)
		select {
		case free <- b:
		default:
		}
		return err
	}
	// drain collects what the sources emitted before they stopped.
	drain := func() error {
		for {
			select {
			case b := <-items:
				if err := take(b); err != nil {
					return err
				}
			default:
				return c.finish()
			}
		}
	}
	// A live source's batch (and capture window) closes on the wall clock:
	// the timer is armed for the earliest expiry, and only then.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var armed int64
	for {
		select {
		case b := <-items:
			if err := take(b); err != nil {
				return err
			}
		case now := <-timer.C:
			armed = 0
			if err := c.expire(now); err != nil {
				return err
			}
		case cfg := <-c.reloads:
			c.reload(cfg)
		case err := <-errc:
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
		case <-done:
			return drain()
		case <-ctx.Done():
			return drain()
		}
		if at, ok := c.nextExpiry(); live && ok && at != armed {
			timer.Reset(time.Until(time.Unix(0, at)))
			armed = at
		}
	}
}
