// Package costing prices requests in dollars and energy, and records every
// request that ran.
package costing

import "time"

// Outcome is how a request ended. Every request ends in exactly one.
type Outcome uint8

const (
	// OutcomeServed: answered in full by the tier the router chose.
	OutcomeServed Outcome = iota
	// OutcomeFallbackUp: answered in full by a more capable tier than the
	// router chose, because the chosen tier had no endpoint available.
	OutcomeFallbackUp
	// OutcomeDegradedDown: answered in full by a cheaper tier than the
	// router chose, because the chosen tier had no endpoint available.
	OutcomeDegradedDown
	// OutcomeClientCancelled: the client went away before the answer ended.
	OutcomeClientCancelled
	// OutcomeTimeout: a backend did not answer, or stalled, within the
	// configured timeouts.
	OutcomeTimeout
	// OutcomeUpstreamError: the backends failed (connection errors, 5xx,
	// a stream that broke off).
	OutcomeUpstreamError
	// OutcomeClientError: a backend refused the request as the client's
	// fault (4xx other than 429).
	OutcomeClientError
	// OutcomeInvalidResponse: a backend answered 2xx with something that
	// is not a valid answer.
	OutcomeInvalidResponse
	// OutcomeRejected: the gateway refused the request before any backend
	// saw it (invalid request, unknown model, context too long).
	OutcomeRejected
	// OutcomeShutdown: the gateway shut down before the answer ended.
	OutcomeShutdown
	numOutcomes
)

// NumOutcomes is the number of outcomes, for tables indexed by Outcome.
const NumOutcomes = int(numOutcomes)

var outcomeNames = [...]string{"served", "fallback_up", "degraded_down", "client_cancelled", "timeout",
	"upstream_error", "client_error", "invalid_response", "rejected", "shutdown"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// OK reports whether the client got a complete answer.
func (o Outcome) OK() bool { return o <= OutcomeDegradedDown }

// Failed reports whether the outcome is a failure of the gateway or its
// backends (what error rates and alerts count): not the client's doing.
func (o Outcome) Failed() bool {
	switch o {
	case OutcomeTimeout, OutcomeUpstreamError, OutcomeInvalidResponse, OutcomeShutdown:
		return true
	}
	return false
}

// Move says whether a request was served on another tier than the router
// chose, because its tier had no endpoint available. It is kept apart from
// escalation, which counts only the router's decisions.
type Move uint8

const (
	MoveNone Move = iota
	MoveUp        // fallback to a more capable tier
	MoveDown      // degraded to a cheaper tier
)

var moveNames = [...]string{"", "up", "down"}

func (m Move) String() string {
	if int(m) < len(moveNames) {
		return moveNames[m]
	}
	return "unknown"
}

// Record is what Cascade keeps of one request. It holds plain values only
// and is passed by value.
type Record struct {
	Time      time.Time
	RequestID string
	TraceID   string
	KeyID     string // who called: a hash or name of the API key, "" if none

	// Tier, Model and Endpoint are what served the request or, when it
	// failed, the last that was tried ("" when none was).
	Tier     string
	Model    string // upstream model
	Endpoint string // upstream base URL
	Stream   bool

	// Escalated is true when the router sent the request to a more capable
	// tier than the cheapest (score, alias, header, confidence). A fallback
	// is not an escalation: see Move.
	Escalated bool
	Reason    string // why it was escalated: "score", "alias", "header", "confidence"
	Score     float64
	Move      Move

	InputTokens  int
	OutputTokens int
	// Estimated is true when the backend reported no usage and the token
	// counts were estimated from text length.
	Estimated bool

	CostMicroUSD     int64 // what it cost
	BaselineMicroUSD int64 // what it would have cost on the largest tier
	EnergyMilliWh    int64

	TTFT    time.Duration // to the first byte relayed to the client
	Latency time.Duration // whole request
	Outcome Outcome

	// Cascaded is true when the cheapest tier's answer was judged by the
	// verifier before it reached the client; Verifier is the verifier's
	// score (the estimated chance it was wrong) and Hold how long the answer
	// was held back for it. An answer the verifier doubted is Escalated
	// with Reason "confidence" and kept in Discarded.
	Cascaded bool
	Verifier float64
	Hold     time.Duration
	// Discarded is the cheap attempt whose answer was thrown away on a
	// confidence escalation (zero when none). Its cost is part of
	// CostMicroUSD and is also WastedMicroUSD.
	Discarded      Attempt
	WastedMicroUSD int64
}

// Attempt is one backend call's share of a request: who answered, the tokens
// it processed and what they cost.
type Attempt struct {
	Tier, Model, Endpoint string
	InputTokens           int
	OutputTokens          int
	Estimated             bool // token counts estimated from text length
	CostMicroUSD          int64
	EnergyMilliWh         int64
}

// Recorder takes records off the request path. Record never blocks and never
// fails a request.
type Recorder interface {
	Record(r Record)
}

// Nop discards records.
type Nop struct{}

// Record implements Recorder.
func (Nop) Record(Record) {}
