package fleetstate

import (
	"slices"
	"sort"
	"sync"
)

// Subscription receives a store's changes. Changes to the same vehicle
// coalesce until taken: a subscriber that falls behind gets each vehicle's
// latest state rather than every intermediate one, so a slow reader never
// blocks the store. It holds at most MaxPending vehicles: past that it
// overflows (see Overflowed) and takes no more changes.
//
// A Subscription is safe for concurrent use.
type Subscription struct {
	store  *Store
	filter func(Change) bool

	mu         sync.Mutex
	pending    map[string]Update
	overflowed bool
	closed     bool
	ready      chan struct{}
}

// Update is a change as a subscription delivers it: the vehicle's latest
// state, or its removal.
type Update struct {
	Vehicle
	Removed bool
}

// MaxPending is how many vehicles' changes a subscription holds untaken
// before it overflows.
const MaxPending = 50_000

// Subscribe returns a subscription to the changes for which filter returns
// true (every change when filter is nil). filter runs with the changed
// vehicle's shard locked: it must be quick and must not call the store.
//
// A snapshot taken after Subscribe returns (InBox, Get) together with the
// changes delivered after it gives every vehicle's latest state: a change
// racing the snapshot is delivered (again).
func (s *Store) Subscribe(filter func(Change) bool) *Subscription {
	sub := &Subscription{store: s, filter: filter, pending: make(map[string]Update), ready: make(chan struct{}, 1)}
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	var next []*Subscription
	if cur := s.subs.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, sub)
	s.subs.Store(&next)
	return sub
}

func (s *Store) hasSubscribers() bool {
	cur := s.subs.Load()
	return cur != nil && len(*cur) > 0
}

func (s *Store) offer(c Change) {
	for _, sub := range *s.subs.Load() {
		sub.offer(c)
	}
}

func (sub *Subscription) offer(c Change) {
	if sub.filter != nil && !sub.filter(c) {
		return
	}
	sub.mu.Lock()
	if sub.overflowed || sub.closed {
		sub.mu.Unlock()
		return
	}
	if _, ok := sub.pending[c.New.ID]; !ok && len(sub.pending) >= MaxPending {
		sub.overflowed = true
		clear(sub.pending)
	} else {
		sub.pending[c.New.ID] = Update{Vehicle: c.New, Removed: c.Removed}
	}
	sub.mu.Unlock()
	select {
	case sub.ready <- struct{}{}:
	default:
	}
}

// Ready receives a value when changes are waiting to be taken.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Overflowed reports whether the subscriber fell more than MaxPending
// vehicles behind; it then gets no more changes and should start over.
func (sub *Subscription) Overflowed() bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.overflowed
}

// Take returns the vehicles changed since the last Take, each in its latest
// state, oldest update first (removals last); nil when nothing changed.
func (sub *Subscription) Take() []Update {
	sub.mu.Lock()
	if len(sub.pending) == 0 {
		sub.mu.Unlock()
		return nil
	}
	out := make([]Update, 0, len(sub.pending))
	for _, u := range sub.pending {
		out = append(out, u)
	}
	clear(sub.pending)
	sub.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Removed != out[j].Removed {
			return out[j].Removed
		}
		if out[i].Fix.Time != out[j].Fix.Time {
			return out[i].Fix.Time < out[j].Fix.Time
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Close ends the subscription; no change is delivered after it returns.
func (sub *Subscription) Close() {
	sub.mu.Lock()
	sub.closed = true
	clear(sub.pending)
	sub.mu.Unlock()
	s := sub.store
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	cur := s.subs.Load()
	if cur == nil {
		return
	}
	next := slices.DeleteFunc(slices.Clone(*cur), func(x *Subscription) bool { return x == sub })
	s.subs.Store(&next)
}

// Subscribers returns the number of open subscriptions.
func (s *Store) Subscribers() int {
	cur := s.subs.Load()
	if cur == nil {
		return 0
	}
	return len(*cur)
}
