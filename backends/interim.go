package backends

import "errors"

// ErrInvalidResponse: a backend answered 2xx with something that is not a
// valid answer.
var ErrInvalidResponse = errors.New("invalid upstream response")

// TriedEndpoint is the endpoint a failed Send tried last, or nil.
func TriedEndpoint(err error) *Endpoint { return nil }
