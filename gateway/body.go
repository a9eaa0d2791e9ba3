package gateway

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/gofiber/fiber/v2"
)

// requestBody returns the request's body, inflated when it came with a
// Content-Encoding, never longer than maxBytes.
//
// fiber's Ctx.Body inflates without any limit (a 15 KB gzip body can
// become gigabytes), so the raw body is read from fasthttp and inflated
// here: the output is capped while it is produced, and a body that would
// outgrow maxBytes is refused (413) as soon as it does. Supported codings
// are gzip, deflate (zlib, or raw deflate as some clients send it) and br;
// anything else, or a list of several, is 415. The compressed buffer is
// handed back to fasthttp's pool once inflated, so a request holds at most
// the inflated body.
func requestBody(c *fiber.Ctx, maxBytes int) ([]byte, error) {
	raw := c.Request().Body()
	enc := strings.ToLower(strings.TrimSpace(string(c.Request().Header.Peek(fiber.HeaderContentEncoding))))
	if enc == "" || enc == "identity" {
		return raw, nil
	}
	if strings.Contains(enc, ",") {
		return nil, unsupportedEncoding(enc, "only one content coding at a time is supported")
	}
	var r io.Reader
	var err error
	switch enc {
	case "gzip", "x-gzip":
		r, err = gzip.NewReader(bytes.NewReader(raw))
	case "deflate":
		if r, err = zlib.NewReader(bytes.NewReader(raw)); err != nil {
			r, err = flate.NewReader(bytes.NewReader(raw)), nil
		}
	case "br":
		r = brotli.NewReader(bytes.NewReader(raw))
	default:
		return nil, unsupportedEncoding(enc, "the gateway inflates gzip, deflate and br")
	}
	if err != nil {
		return nil, corruptBody(enc, err)
	}
	hint := 4 * len(raw)
	if enc == "gzip" || enc == "x-gzip" {
		// A gzip stream ends with its (last member's) size mod 2^32. It
		// sizes the buffer: one allocation for an honest client; a lie
		// (or a truncated stream) only costs growing, the cap holds.
		hint = int(binary.LittleEndian.Uint32(raw[len(raw)-4:])) + 1
	}
	body, err := readCapped(r, maxBytes, hint)
	if err != nil {
		return nil, err
	}
	if rc, ok := r.(io.Closer); ok {
		rc.Close()
	}
	c.Request().ResetBody() // the compressed copy is no longer needed
	return body, nil
}

// readCapped reads r to its end into one buffer of at most limit bytes,
// starting from a guess of the size. Growing copies, so the transient peak
// is 1.5 × limit.
func readCapped(r io.Reader, limit, guess int) ([]byte, error) {
	buf := make([]byte, 0, min(limit+1, max(guess, 4096)))
	for {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(limit+1, 2*cap(buf)))
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			return nil, tooLarge(limit)
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, corruptBody("", err)
		}
	}
}

func tooLarge(limit int) *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "request_too_large",
		Message: "request body inflates to more than the configured max_body_bytes (" + strconv.Itoa(limit) + " bytes)"}
}

func unsupportedEncoding(enc, why string) *apiError {
	return &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_content_encoding",
		Param:   fiber.HeaderContentEncoding,
		Message: "Content-Encoding " + strconv.Quote(enc) + " is not supported: " + why + "; or send the body uncompressed"}
}

func corruptBody(enc string, err error) *apiError {
	msg := "request body could not be inflated"
	if enc != "" {
		msg += " as " + enc
	}
	return badRequest(fiber.HeaderContentEncoding, "%s: %v", msg, err)
}
