package gateway

import "github.com/gofiber/fiber/v2"

// adminExtraRoutes registers the admin endpoints that build on other parts
// (routing dry runs, stats).
func (g *Gateway) adminExtraRoutes(a fiber.Router) {}
