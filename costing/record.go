// Package costing prices requests in dollars and energy, and records every
// request that ran.
package costing

import "time"

// Status is how a request ended.
type Status uint8

const (
	StatusOK Status = iota
	StatusClientCancelled
	StatusUpstreamError
	StatusTimeout
)

var statusNames = [...]string{"ok", "client_cancelled", "upstream_error", "timeout"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "unknown"
}

// Record is what Cascade keeps of one request that reached a backend. It holds
// plain values only and is passed by value.
type Record struct {
	Time      time.Time
	RequestID string
	TraceID   string
	KeyID     string // who called: a hash or name of the API key, "" if none

	Tier     string
	Model    string // upstream model that served
	Endpoint string // upstream base URL
	Stream   bool

	Escalated bool
	Reason    string // why it was escalated: "score", "fallback", "pinned", ...
	Score     float64

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
	Status  Status
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
