package gateway

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind. Idle
// keep-alive connections of the shared default HTTP client used by test
// clients are not leaks, nor is fasthttp's worker-pool cleaner, which exits
// on its own up to 10s after the server stopped, nor its process-wide Date
// header ticker.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" { // a gateway process for memory_test.go
		runGatewayChild()
		return
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}
