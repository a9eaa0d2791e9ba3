//go:build !unix

package gateway

import (
	"context"

	"github.com/gofiber/fiber/v2"
)

// clientWatch does not watch on this platform: there is no portable way to
// peek at a socket through the runtime poller.
type clientWatch struct{}

// watchClient returns nil: nothing is watched.
func watchClient(*fiber.Ctx, context.CancelFunc) *clientWatch { return nil }

// stop reports false: a hang-up is never noticed before the answer.
func (w *clientWatch) stop() bool { return false }
