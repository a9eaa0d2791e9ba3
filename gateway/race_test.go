//go:build race

package gateway

// raceEnabled: the race detector multiplies memory use (shadow memory).
const raceEnabled = true
