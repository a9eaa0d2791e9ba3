package gateway

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/gofiber/fiber/v2"

	"github.com/cascade-gateway/cascade/backends"
)

// apiError is an error with everything OpenAI's error shape needs.
type apiError struct {
	Status  int
	Type    string
	Code    string
	Param   string
	Message string
}

func (e *apiError) Error() string { return e.Message }

func badRequest(param, format string, a ...any) *apiError {
	return &apiError{Status: 400, Type: "invalid_request_error", Code: "invalid_value", Param: param, Message: fmt.Sprintf(format, a...)}
}

// toAPIError is the one mapping from errors to HTTP statuses and OpenAI error
// bodies.
func toAPIError(err error) *apiError {
	var ae *apiError
	var ue *backends.UpstreamError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &ue):
		return &apiError{Status: ue.Status, Type: upstreamType(ue.Status), Code: "upstream_error", Message: upstreamMessage(ue)}
	case errors.Is(err, backends.ErrTimeout):
		return &apiError{Status: http.StatusGatewayTimeout, Type: "timeout_error", Code: "upstream_timeout",
			Message: "the model backend did not answer in time; retry later or raise timeouts in the config"}
	case errors.Is(err, backends.ErrUnavailable):
		return &apiError{Status: http.StatusServiceUnavailable, Type: "service_unavailable", Code: "backend_unavailable",
			Message: "no model backend is available for this request (all endpoints of the tier and its fallback are down or their breakers are open); retry later"}
	case errors.Is(err, fiber.ErrRequestEntityTooLarge):
		return &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "request_too_large",
			Message: "request body is larger than the configured max_body_bytes"}
	}
	var fe *fiber.Error
	if errors.As(err, &fe) {
		return &apiError{Status: fe.Code, Type: "invalid_request_error", Message: fe.Message}
	}
	return &apiError{Status: 500, Type: "server_error", Code: "internal_error", Message: "internal error"}
}

func upstreamType(status int) string {
	if status >= 500 {
		return "upstream_error"
	}
	return "invalid_request_error"
}

// upstreamMessage keeps an upstream OpenAI-shaped error message when there is one.
func upstreamMessage(ue *backends.UpstreamError) string {
	if m := jsonString(ue.Body, "error.message"); m != "" {
		return m
	}
	if m := jsonString(ue.Body, "message"); m != "" {
		return m
	}
	return fmt.Sprintf("model backend answered status %d", ue.Status)
}

func writeError(c *fiber.Ctx, err error) error {
	ae := toAPIError(err)
	c.Status(ae.Status)
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(errorBody(ae))
}

func errorBody(ae *apiError) []byte {
	b := make([]byte, 0, 128+len(ae.Message))
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, ae.Message)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, ae.Type)
	b = append(b, `,"param":`...)
	if ae.Param == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, ae.Param)
	}
	b = append(b, `,"code":`...)
	if ae.Code == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, ae.Code)
	}
	return append(b, "}}"...)
}

// fiberErrorHandler turns errors fiber raises itself (body too large, ...)
// into OpenAI-shaped errors.
func fiberErrorHandler(c *fiber.Ctx, err error) error {
	return writeError(c, err)
}
