package faults_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a scenario leaves goroutines behind (a
// relay or recorder that never ended). Idle keep-alive connections of test
// clients are not leaks, nor are fasthttp's worker-pool cleaner and Date
// ticker, which outlive a stopped server by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}
