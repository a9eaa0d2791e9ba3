//go:build unix

package gateway

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
)

// clientWatch notices a client that closes its connection while its request
// waits for the backend, before any response byte was written (a stream
// notices later hang-ups itself, when a flush fails).
//
// fasthttp does not tell a handler that its client went away:
// RequestCtx.Done is closed only on server shutdown, and nothing reads the
// connection while the handler runs. So the watch waits for the socket to
// become readable through the runtime poller and peeks at it
// (recv MSG_PEEK|MSG_DONTWAIT, as nginx does for the same purpose): 0 bytes
// means the client closed (FIN), an error means it reset; either cancels the
// upstream request. Bytes waiting (a pipelined next request) are left in
// place and end the watch. Peeking never consumes anything the server will
// read.
//
// A client that half-closes its side after sending the request (shutdown
// SHUT_WR) while still waiting for the answer looks like one that left;
// HTTP clients do not do that. Connections that are not plain sockets (TLS,
// in-memory test connections) are not watched.
type clientWatch struct {
	conn   net.Conn
	rc     syscall.RawConn
	cancel context.CancelFunc
	timer  *time.Timer
	gone   atomic.Bool

	mu      sync.Mutex // guards stopped and started
	stopped bool
	started bool
	done    chan struct{} // closed when the watching goroutine ends
}

// watchClient starts watching c's connection after clientWatchDelay; when
// the client hangs up, cancel is called. stop must be called before the
// handler returns (and before anything else reads the connection).
func watchClient(c *fiber.Ctx, cancel context.CancelFunc) *clientWatch {
	conn := c.Context().Conn()
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &clientWatch{conn: conn, rc: rc, cancel: cancel}
	w.timer = time.AfterFunc(clientWatchDelay, w.start)
	return w
}

func (w *clientWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	w.started = true
	w.done = make(chan struct{})
	// The body's read deadline (server.read_body_timeout) is still set:
	// the watch outlives it.
	w.conn.SetReadDeadline(time.Time{})
	go w.watch()
}

func (w *clientWatch) watch() {
	defer close(w.done)
	var b [1]byte
	// RawConn.Read calls the function again each time the poller reports
	// the socket readable, until it returns true; a read deadline in the
	// past (set by stop) makes it return at once.
	w.rc.Read(func(fd uintptr) bool {
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case errors.Is(err, syscall.EAGAIN):
				return false // nothing yet: wait
			case err != nil || n == 0: // reset, or closed by the client
				w.gone.Store(true)
				w.cancel()
			}
			return true // gone, or bytes of a next request: stop watching
		}
	})
}

// stop ends the watch and reports whether the client hung up. It leaves the
// connection as it found it: no read deadline (fasthttp sets its own before
// it reads the next request). It is safe on a nil watch.
func (w *clientWatch) stop() bool {
	if w == nil {
		return false
	}
	w.timer.Stop()
	w.mu.Lock()
	w.stopped = true
	started := w.started
	w.mu.Unlock()
	if started {
		w.conn.SetReadDeadline(aLongTimeAgo)
		<-w.done
		w.conn.SetReadDeadline(time.Time{})
	}
	return w.gone.Load()
}

var aLongTimeAgo = time.Unix(1, 0)
