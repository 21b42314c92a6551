package fleetstate

import (
	"sort"
	"sync"
)

// Subscription receives a store's changes. Changes to the same vehicle
// coalesce until taken: a subscriber that falls behind gets each vehicle's
// latest state rather than every intermediate one, so a slow reader never
// blocks the store and never needs more memory than one state per vehicle.
//
// A Subscription is safe for concurrent use.
type Subscription struct {
	store  *Store
	filter func(Change) bool

	mu      sync.Mutex
	pending map[string]Vehicle
	ready   chan struct{}
}

// Subscribe returns a subscription to the changes for which filter returns
// true (every change when filter is nil). filter runs with the store locked:
// it must be quick and must not call the store.
//
// When snapshot is not nil, Subscribe also returns, ordered by ID, the
// current vehicles for which snapshot returns true, taken atomically with
// the subscription: no change falls between the snapshot and the first
// change delivered.
func (s *Store) Subscribe(filter func(Change) bool, snapshot func(Vehicle) bool) (*Subscription, []Vehicle) {
	sub := &Subscription{store: s, filter: filter, pending: make(map[string]Vehicle), ready: make(chan struct{}, 1)}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	var snap []Vehicle
	if snapshot != nil {
		for _, e := range s.vehicles {
			if snapshot(e.v) {
				snap = append(snap, e.v)
			}
		}
	}
	s.mu.Unlock()
	sort.Slice(snap, func(i, j int) bool { return snap[i].ID < snap[j].ID })
	return sub, snap
}

func (sub *Subscription) offer(c Change) {
	if sub.filter != nil && !sub.filter(c) {
		return
	}
	sub.mu.Lock()
	sub.pending[c.New.ID] = c.New
	sub.mu.Unlock()
	select {
	case sub.ready <- struct{}{}:
	default:
	}
}

// Ready receives a value when changes are waiting to be taken.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Take returns the vehicles changed since the last Take, each in its latest
// state, oldest update first; nil when nothing changed.
func (sub *Subscription) Take() []Vehicle {
	sub.mu.Lock()
	if len(sub.pending) == 0 {
		sub.mu.Unlock()
		return nil
	}
	out := make([]Vehicle, 0, len(sub.pending))
	for _, v := range sub.pending {
		out = append(out, v)
	}
	clear(sub.pending)
	sub.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Fix.Time != out[j].Fix.Time {
			return out[i].Fix.Time < out[j].Fix.Time
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Close ends the subscription; no change is delivered after it returns.
func (sub *Subscription) Close() {
	sub.store.mu.Lock()
	delete(sub.store.subs, sub)
	sub.store.mu.Unlock()
}

// Subscribers returns the number of open subscriptions.
func (s *Store) Subscribers() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.subs)
}
