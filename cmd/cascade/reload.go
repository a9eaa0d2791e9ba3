package main

import (
	"context"

	"github.com/cascade-gateway/cascade/gateway"
)

// watchConfig reloads path into g when it changes or on SIGHUP, until ctx
// ends or the returned stop is called.
func watchConfig(ctx context.Context, g *gateway.Gateway, path string) (stop func()) {
	return func() {}
}
