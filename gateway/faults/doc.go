// Package faults holds the gateway's fault suite and nothing else: tests
// that run a real gateway (gateway.New, Listen, Serve on a loopback port)
// against simulators and small misbehaving backends, record to a real
// Redis, and break things while requests are in flight: a backend killed
// and restarted, a hung backend, garbage 2xx bodies, a stream cut in the
// middle of an event, a stalled body, Redis killed for a while, and a
// shutdown with open streams.
//
// Each scenario checks two things: what the client saw (with the official
// openai-go client, and raw HTTP where the client hides the bytes), and
// that the records in Redis are exactly the requests sent: one stream entry
// per request id, with the outcome the client's view implies, the
// recorder's written count equal to the number sent, and the hourly rollup
// counting each once.
//
// The scenario that kills Redis starts a redis-server of its own (skipped
// when there is none on PATH, failed under CI=true); the others use the
// shared Redis at 127.0.0.1:6379 under a key
// prefix of their own, deleted when they end.
package faults
