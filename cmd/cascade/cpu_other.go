//go:build !unix

package main

// selfCPU is 0 where getrusage does not exist: load reports no CPU use for
// its own process there.
func selfCPU() float64 { return 0 }
