package router

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// PlotCurve is one line of a quality-vs-cost plot.
type PlotCurve struct {
	Name  string
	Color string
	Dash  bool
	// X is the share of strong-model calls, Y the quality at that share.
	X, Y []float64
	// Label is shown in the legend next to the name (e.g. "APGR 0.64").
	Label string
}

// PlotPanel is one source's plot.
type PlotPanel struct {
	Title        string
	Weak, Strong float64
	Curves       []PlotCurve
	// XLabel names the x axis; "" means the share of strong-model calls.
	XLabel string
}

// WriteSVG draws panels side by side: quality (mean correctness) against the
// share of requests sent to the strong model, with the weak and strong
// models' own quality as horizontal guides.
func WriteSVG(w io.Writer, panels []PlotPanel) error {
	const (
		pw, ph       = 420.0, 340.0 // panel size
		ml, mr       = 60.0, 20.0
		mt, mb       = 40.0, 50.0
		legendHeight = 18.0
	)
	width := pw * float64(max(len(panels), 1))
	height := ph + legendHeight*5
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	for pi, p := range panels {
		ox := pw * float64(pi)
		x0, x1 := ox+ml, ox+pw-mr
		y0, y1 := ph-mb, mt // y0 bottom
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, c := range p.Curves {
			for _, v := range c.Y {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		lo, hi = math.Min(lo, p.Weak), math.Max(hi, p.Strong)
		if !(hi > lo) {
			lo, hi = lo-0.5, hi+0.5
		}
		pad := (hi - lo) * 0.05
		lo, hi = lo-pad, hi+pad
		sx := func(x float64) float64 { return x0 + x*(x1-x0) }
		sy := func(y float64) float64 { return y0 - (y-lo)/(hi-lo)*(y0-y1) }
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-weight="bold">%s</text>`+"\n", (x0+x1)/2, mt-15, html.EscapeString(p.Title))
		// Axes and grid.
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", x0, y1, x1-x0, y0-y1)
		for k := 0; k <= 10; k += 2 {
			x := float64(k) / 10
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, sx(x), y0, sx(x), y1)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d%%</text>`+"\n", sx(x), y0+16, k*10)
		}
		for k := 0; k <= 4; k++ {
			v := lo + (hi-lo)*float64(k)/4
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, x0, sy(v), x1, sy(v))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%.3f</text>`+"\n", x0-4, sy(v)+4, v)
		}
		xl := p.XLabel
		if xl == "" {
			xl = "share of strong-model calls"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", (x0+x1)/2, y0+34, html.EscapeString(xl))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">quality (mean correctness)</text>`+"\n", ox+14, (y0+y1)/2, ox+14, (y0+y1)/2)
		for _, g := range []struct {
			v    float64
			name string
		}{{p.Weak, "weak"}, {p.Strong, "strong"}} {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999" stroke-dasharray="2,3"/>`, x0, sy(g.v), x1, sy(g.v))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#777" text-anchor="end">%s</text>`+"\n", x1-3, sy(g.v)-3, g.name)
		}
		for ci, c := range p.Curves {
			var pts strings.Builder
			for k := range c.X {
				if k < len(c.Y) {
					fmt.Fprintf(&pts, "%.1f,%.1f ", sx(c.X[k]), sy(c.Y[k]))
				}
			}
			dash := ""
			if c.Dash {
				dash = ` stroke-dasharray="6,4"`
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.TrimSpace(pts.String()), c.Color, dash)
			ly := ph + legendHeight*float64(ci) + 4
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`, x0, ly, x0+24, ly, c.Color, dash)
			name := c.Name
			if c.Label != "" {
				name += "  " + c.Label
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", x0+30, ly+4, html.EscapeString(name))
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
