//go:build !unix

package router

func cpuTime() int64 { return 0 }
