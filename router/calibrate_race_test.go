//go:build race

package router

// raceEnabled trims the longest calibration tests under the race detector,
// which slows every atomic operation; the full runs prove the figures.
const raceEnabled = true
