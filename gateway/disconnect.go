package gateway

import "time"

// clientWatchDelay is how long a request waits on its backend before the
// gateway starts watching the client's connection for a hang-up. Answers
// faster than that never pay for the watch; slower ones (every real
// generation) are cancelled within moments of the client leaving.
//
// The watch peeks at the socket (disconnect_unix.go); elsewhere
// (disconnect_other.go) a waiting request notices a hang-up only when its
// answer is written.
var clientWatchDelay = 50 * time.Millisecond
