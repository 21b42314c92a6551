package fleetstate

// Sweep does the store's time-driven work, shard by shard (each shard
// locked for one pass over its vehicles): vehicles whose fix has grown
// older than StaleAfter move to the stale class (out of the way of nearby
// queries, and counted stale), and vehicles not heard from for TTL are
// evicted; evicted is called for each one after its shard is unlocked (nil:
// not called). It returns how many went stale and how many were evicted.
// Run it every few seconds.
func (s *Store) Sweep(evicted func(Vehicle)) (staled, removed int) {
	now := s.opts.Now()
	staleCut := now.Add(-s.opts.StaleAfter).UnixNano()
	ttlCut := now.Add(-s.opts.TTL).UnixNano()
	var gone []Vehicle
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, r := range sh.m {
			if r.lastHeard() < ttlCut {
				if evicted != nil {
					gone = append(gone, r.vehicle(&s.statuses))
				}
				s.removeLocked(sh, r)
				removed++
				continue
			}
			if r.class > staleClass && r.fix.Time < staleCut {
				s.statuses.add(r.status, false, -1)
				s.statuses.add(r.status, true, 1)
				s.refile(r, staleClass)
				staled++
			}
			s.tracks.usable(r) // lets go of a track taken back
		}
		sh.mu.Unlock()
		for _, v := range gone {
			evicted(v)
		}
		gone = gone[:0]
	}
	return staled, removed
}

// TakeChanged calls fn with the current state of every vehicle that
// telemetry changed since the last call (each once, however often it
// changed), when Options.Publish is set. fn runs with no lock held.
func (s *Store) TakeChanged(fn func(Vehicle)) int {
	n := 0
	var batch []Vehicle
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, r := range sh.dirty {
			r.dirty = false
			if !r.gone {
				batch = append(batch, r.vehicle(&s.statuses))
			}
		}
		clear(sh.dirty)
		sh.dirty = sh.dirty[:0]
		sh.mu.Unlock()
		for _, v := range batch {
			fn(v)
		}
		n += len(batch)
		batch = batch[:0]
	}
	return n
}
