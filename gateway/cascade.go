package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/cascade-gateway/cascade/backends"
	"github.com/cascade-gateway/cascade/router"
	"github.com/cascade-gateway/cascade/router/verify"
)

// headerConfidence carries, on answers the verifier judged, its confidence
// that the cheap answer is right (1 − the verifier's score).
const headerConfidence = "X-Cascade-Confidence"

// firstAnswer is what the cascade holds of the cheapest tier's answer while
// it is judged: the whole body of a plain answer, or the events of a stream
// read so far (with the scanner positioned after them).
type firstAnswer struct {
	x     *exchange
	resp  *backends.Response
	body  []byte                  // plain answer
	held  []byte                  // stream: the events held back, as received
	sc    *backends.StreamScanner // stream: positioned after held
	strip bool                    // logprobs were asked for by the gateway, not the client
	// keepUsage: the client asked for the usage chunk (else it is not held).
	keepUsage bool
	cut       context.CancelFunc // ends the cheap attempt alone
	col       verify.Collector   // what the verifier reads
	usage     backends.Usage     // plain answer: as reported
	wait      time.Duration      // how long the answer was held
}

// cascadeBody is the client's body for the cheapest tier with the logprobs
// the verifier reads, unless the client asked for logprobs itself (then it
// gets them as it asked). It reports whether it added them.
func cascadeBody(body []byte, chat bool, top int) ([]byte, bool) {
	if gjson.GetBytes(body, "logprobs").Exists() || top <= 0 {
		return body, false
	}
	var err error
	if chat {
		body, err = sjson.SetBytes(body, "logprobs", true)
		if err == nil {
			body, err = sjson.SetBytes(body, "top_logprobs", top)
		}
	} else {
		body, err = sjson.SetBytes(body, "logprobs", top)
	}
	return body, err == nil
}

// stripLogprobs removes the logprobs of every choice of an answer or chunk.
func stripLogprobs(js []byte) []byte {
	n := int(gjson.GetBytes(js, "choices.#").Int())
	for i := 0; i < n; i++ {
		if out, err := sjson.DeleteBytes(js, "choices."+strconv.Itoa(i)+".logprobs"); err == nil {
			js = out
		}
	}
	return js
}

// eventPayload is the JSON object of an SSE "data:" line, or nil.
func eventPayload(line []byte) []byte {
	if !bytes.HasPrefix(line, dataPrefix) {
		return nil
	}
	p := bytes.TrimSpace(line[len(dataPrefix):])
	if len(p) == 0 || p[0] != '{' {
		return nil
	}
	return p
}

// stripEvent rewrites an SSE "data:" line without logprobs.
func stripEvent(line []byte) []byte {
	p := eventPayload(line)
	if p == nil || !bytes.Contains(p, []byte(`"logprobs"`)) {
		return line
	}
	out := make([]byte, 0, len(line))
	out = append(out, "data: "...)
	out = append(out, stripLogprobs(p)...)
	return append(out, '\n')
}

// maxHeldBytes bounds the events held back from one stream, whatever the
// backend sends (events without content, huge logprobs): past it the held
// prefix is judged.
const maxHeldBytes = 1 << 20

// hold reads the cheapest tier's answer for the verifier: a plain answer
// whole, a stream until it completes, hold.max_tokens content chunks were
// read, maxHeldBytes were held, or hold.max_wait passed (checked at each
// event). timeouts.stream_idle
// bounds every wait for the backend.
func (f *firstAnswer) hold() error {
	x := f.x
	h := x.s.cfg.Routing.Cascade.Hold
	start := time.Now() // wall-clock: hold.max_wait is a real wait
	defer func() { f.wait = time.Since(start) }()
	var idled atomic.Bool
	idle := time.AfterFunc(x.s.cfg.Timeouts.StreamIdle, func() { idled.Store(true); f.cut() })
	defer idle.Stop()
	timedOut := func(err error) error {
		if idled.Load() {
			return fmt.Errorf("%w: nothing for longer than timeouts.stream_idle: %w", backends.ErrTimeout, err)
		}
		return err
	}
	if !x.req.Stream {
		data, err := f.resp.ReadAnswer(x.s.cfg.Timeouts.StreamIdle, maxResponseBytes)
		if err != nil {
			return timedOut(err)
		}
		f.body = data
		f.usage = backends.ParseUsage(data)
		f.col.AddBody(data)
		return nil
	}
	f.sc = backends.NewStreamScanner(f.resp.Body)
	for {
		line, err := f.sc.Next()
		if len(line) > 0 {
			idle.Reset(x.s.cfg.Timeouts.StreamIdle)
			if f.keepUsage || !f.sc.UsageOnly {
				f.held = append(f.held, line...)
			}
			if p := eventPayload(line); p != nil {
				f.col.AddChunk(p)
			}
		}
		if err != nil {
			if err == io.EOF && f.sc.Done {
				return nil
			}
			if err == io.EOF {
				err = errStreamBroken
			}
			return timedOut(err)
		}
		if f.sc.Done || f.sc.Chunks >= h.MaxTokens || time.Since(start) >= h.MaxWait || len(f.held) >= maxHeldBytes {
			return nil
		}
	}
}

// discard records the thrown-away cheap answer on the exchange's record and
// ends its attempt (cancelling a stream still running, to free its GPU).
func (f *firstAnswer) discard() {
	x := f.x
	d := &x.rec.Discarded
	e := f.resp.Endpoint
	d.Tier, d.Model, d.Endpoint = e.Tier, e.Model, e.URL
	u := f.usage
	if f.sc != nil {
		u = f.sc.Usage
	}
	if u.Reported {
		d.InputTokens, d.OutputTokens = u.InputTokens, u.OutputTokens
	} else {
		d.Estimated = true
		d.InputTokens = (x.promptChars + 3) / 4
		d.OutputTokens = max(f.col.Chunks(), len(f.col.Answer().Tokens))
	}
	f.resp.RecordUsage(u)
	var result error
	if f.sc != nil && !f.sc.Done {
		result = context.Canceled // abandoned, not failed
	}
	f.cut()
	f.resp.Finish(result)
}

// cascade judges the cheapest tier's answer f and, when the verifier doubts
// it, replaces it with the last tier's answer to large. It returns the
// response to relay: f's with f holding what was read of it, or the last
// tier's (and a nil f). When the last tier cannot answer, the doubted answer
// is served after all (X-Cascade-Degraded: escalation_unavailable).
func (x *exchange) cascade(ctx context.Context, f *firstAnswer, large *backends.Request) (*backends.Response, *firstAnswer, error) {
	s := x.s
	if err := f.hold(); err != nil {
		f.cut()
		f.resp.Finish(err)
		return nil, nil, err
	}
	a := f.col.Answer()
	if f.strip {
		f.resp.Endpoint.SawLogprobs(len(a.Tokens) > 0)
	}
	v := s.policy.Judge(s.verifier.Score(&x.req.Input, &a))
	x.rec.Cascaded, x.rec.Verifier, x.rec.Hold = true, v.Score, f.wait
	if !v.Escalate {
		return f.resp, f, nil
	}
	next, err := x.send(ctx, large, s.policy.Large(), false)
	if err != nil {
		x.escalationLost = true
		return f.resp, f, nil
	}
	f.discard()
	x.dec.Tier, x.dec.Escalated, x.dec.Reason = s.policy.Large(), true, router.ReasonConfidence
	x.rec.Escalated, x.rec.Reason = true, router.ReasonConfidence
	return next, nil, nil
}
