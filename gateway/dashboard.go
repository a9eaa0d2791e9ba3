package gateway

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"

	"github.com/gofiber/fiber/v2"
)

// The dashboard is one HTML page with its stylesheet and script inlined, so
// it needs nothing but the gateway itself: no CDN, no second request. It reads
// the admin API with relative URLs, so it works on whichever listener serves
// it, and a Content-Security-Policy keeps it from talking to anything else.
//
//go:embed dashboard/index.html dashboard/dashboard.css dashboard/dashboard.js
var dashboardFS embed.FS

const (
	dashboardCSSTag = `<link rel="stylesheet" href="dashboard.css">`
	dashboardJSTag  = `<script src="dashboard.js"></script>`
)

// dashboardPage is the assembled page and dashboardCSP its policy, built once.
var dashboardPage, dashboardCSP = mustBuildDashboard()

func mustBuildDashboard() ([]byte, string) {
	page, csp, err := buildDashboard(dashboardFS)
	if err != nil {
		// The assets are compiled in; a broken set is a build mistake that
		// TestDashboardAssets catches.
		panic("gateway: dashboard assets: " + err.Error())
	}
	return page, csp
}

// buildDashboard inlines dashboard.css and dashboard.js into index.html and
// returns the page with a Content-Security-Policy that admits exactly those
// two inline blocks and same-origin fetches.
func buildDashboard(fsys embed.FS) ([]byte, string, error) {
	html, err := fsys.ReadFile("dashboard/index.html")
	if err != nil {
		return nil, "", err
	}
	css, err := fsys.ReadFile("dashboard/dashboard.css")
	if err != nil {
		return nil, "", err
	}
	js, err := fsys.ReadFile("dashboard/dashboard.js")
	if err != nil {
		return nil, "", err
	}
	if bytes.Contains(bytes.ToLower(js), []byte("</script")) || bytes.Contains(bytes.ToLower(css), []byte("</style")) {
		return nil, "", fmt.Errorf("an asset contains a closing tag and cannot be inlined")
	}
	for _, tag := range []string{dashboardCSSTag, dashboardJSTag} {
		if n := bytes.Count(html, []byte(tag)); n != 1 {
			return nil, "", fmt.Errorf("index.html has %d copies of %s, want 1", n, tag)
		}
	}
	style := append(append([]byte("<style>"), css...), "</style>"...)
	script := append(append([]byte("<script>"), js...), "</script>"...)
	page := bytes.Replace(html, []byte(dashboardCSSTag), style, 1)
	page = bytes.Replace(page, []byte(dashboardJSTag), script, 1)

	hash := func(b []byte) string {
		sum := sha256.Sum256(b)
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	csp := "default-src 'none'; script-src " + hash(js) + "; style-src " + hash(css) +
		"; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	return page, csp, nil
}

// serveDashboard answers GET /dashboard. The page holds no data or secrets;
// everything it shows comes from the admin API, which checks the token.
func serveDashboard(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	c.Set(fiber.HeaderContentSecurityPolicy, dashboardCSP)
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderReferrerPolicy, "no-referrer")
	c.Set(fiber.HeaderXFrameOptions, "DENY")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	return c.Send(dashboardPage)
}
