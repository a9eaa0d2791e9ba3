package backends

import (
	"math/rand/v2"
	"slices"
)

// Balancer picks the endpoint for the next request among those not excluded
// and whose breaker is not open. It returns nil when none is left.
// It runs on every request and should be instant.
type Balancer interface {
	Pick(eps []*Endpoint, excluded []*Endpoint) *Endpoint
}

// P2C is "power of two choices" over least outstanding requests: it samples
// two candidates at random and takes the less loaded one, load being
// (in-flight + reported upstream queue) / weight. It spreads load almost as
// well as a full least-loaded scan, without herding every gateway replica onto
// the same endpoint.
type P2C struct{}

var _ Balancer = P2C{}

// NewP2C returns the default balancer.
func NewP2C() P2C { return P2C{} }

// Pick implements Balancer.
func (P2C) Pick(eps []*Endpoint, excluded []*Endpoint) *Endpoint {
	var buf [16]*Endpoint
	cand := buf[:0]
	for _, e := range eps {
		if e.Available() && !slices.Contains(excluded, e) {
			cand = append(cand, e)
		}
	}
	switch len(cand) {
	case 0:
		return nil
	case 1:
		return cand[0]
	}
	i := rand.IntN(len(cand))
	j := rand.IntN(len(cand) - 1)
	if j >= i {
		j++
	}
	a, b := cand[i], cand[j]
	if load(b) < load(a) {
		return b
	}
	return a
}

// load compares endpoints: outstanding work per unit of weight.
func load(e *Endpoint) float64 {
	return float64(e.inflight.Load()+e.queue.Load()) / float64(e.Weight)
}
