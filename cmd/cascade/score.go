package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/cascade-gateway/cascade/config"
	"github.com/cascade-gateway/cascade/router"
)

func init() {
	register("score", "score prompts from JSONL on stdin with the configured router", runScore)
}

func runScore(args []string) error {
	if hasAnswers(args) {
		return runScoreAnswers(args)
	}
	fs := flag.NewFlagSet("score", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file whose routing and tiers to apply (default: built-in model, the default threshold, tiers small/large)")
	reasons := fs.Int("reasons", 3, "top contributing features to list per prompt (0: none)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `usage: cascade score [--config FILE] [--reasons N] < in.jsonl > out.jsonl

Each input line is {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]}
(optionally with "tools", "response_format", "max_tokens"). Each output line, in
input order, is {"id": ..., "score": 0.731, "tier": "large", "reasons": [...]},
or {"id": ..., "error": "..."} for a line that cannot be read.`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := scorePolicy(*cfgPath)
	if err != nil {
		return err
	}
	return scoreStream(os.Stdin, os.Stdout, p, *reasons)
}

// scorePolicy compiles the routing of the config at path, or the default
// (built-in model, the default threshold, tiers small and large) when path is "".
func scorePolicy(path string) (*router.Policy, error) {
	routing := config.Default().Routing
	tiers := []config.Tier{{Name: "small"}, {Name: "large"}}
	if path != "" {
		cfg, err := config.LoadFile(path)
		if err != nil {
			return nil, err
		}
		routing, tiers = cfg.Routing, cfg.Tiers
	}
	return router.Compile(routing, tiers, nil)
}

// scoreLine is one input line.
type scoreLine struct {
	ID             json.RawMessage `json:"id"`
	Prompt         *string         `json:"prompt"`
	Messages       []scoreMessage  `json:"messages"`
	Tools          json.RawMessage `json:"tools"`
	ResponseFormat json.RawMessage `json:"response_format"`
	MaxTokens      int             `json:"max_tokens"`
}

type scoreMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type scoreOut struct {
	ID      json.RawMessage `json:"id"`
	Score   float64         `json:"score"`
	Tier    string          `json:"tier"`
	Reasons []router.Reason `json:"reasons,omitempty"`
}

type scoreErr struct {
	ID    json.RawMessage `json:"id"`
	Error string          `json:"error"`
}

type explainer interface {
	Explain(in *router.Input, k int) []router.Reason
}

// scoreStream scores every line of r and writes the results to w in input
// order. Batches of lines are scored in parallel (one worker per CPU, or a
// single one when the policy calibrates online, so that its threshold sees
// the scores in order).
func scoreStream(r io.Reader, w io.Writer, p *router.Policy, k int) error {
	workers := runtime.GOMAXPROCS(0)
	if p.Calibrator() != nil {
		workers = 1
	}
	type job struct {
		lines [][]byte
		out   chan []byte
	}
	jobs := make(chan job, workers*2)
	order := make(chan chan []byte, workers*4)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sc scorer
			sc.init(p, k)
			for j := range jobs {
				j.out <- sc.batch(j.lines)
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(order)
		defer close(jobs)
		br := bufio.NewReaderSize(r, 1<<20)
		const batchLines = 256
		lines := make([][]byte, 0, batchLines)
		flush := func() {
			if len(lines) == 0 {
				return
			}
			out := make(chan []byte, 1)
			order <- out
			jobs <- job{lines: lines, out: out}
			lines = make([][]byte, 0, batchLines)
		}
		for {
			line, err := br.ReadBytes('\n')
			if len(bytes.TrimSpace(line)) > 0 {
				lines = append(lines, line)
				if len(lines) == batchLines {
					flush()
				}
			}
			if err != nil {
				flush()
				if err != io.EOF {
					readErr <- err
				}
				close(readErr)
				return
			}
		}
	}()
	bw := bufio.NewWriterSize(w, 1<<20)
	var werr error
	for out := range order {
		b := <-out
		if werr == nil {
			_, werr = bw.Write(b)
		}
	}
	wg.Wait()
	if err := <-readErr; err != nil {
		return err
	}
	if werr != nil {
		return werr
	}
	return bw.Flush()
}

// scorer is one worker's state.
type scorer struct {
	p    *router.Policy
	k    int
	ex   explainer
	buf  bytes.Buffer
	enc  *json.Encoder
	msgs []router.Message
}

func (s *scorer) init(p *router.Policy, k int) {
	s.p, s.k = p, k
	s.ex, _ = p.Scorer().(explainer)
	s.enc = json.NewEncoder(&s.buf)
	s.enc.SetEscapeHTML(false)
}

func (s *scorer) batch(lines [][]byte) []byte {
	s.buf.Reset()
	for _, line := range lines {
		s.line(line)
	}
	return bytes.Clone(s.buf.Bytes())
}

func (s *scorer) line(line []byte) {
	var l scoreLine
	in, err := decodeScoreLine(line, &l, s.msgs[:0])
	id := l.ID
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	if err != nil {
		s.enc.Encode(scoreErr{ID: id, Error: err.Error()})
		return
	}
	s.msgs = in.Messages
	d, err := s.p.Route("auto", "", &in)
	if err != nil { // fits no tier's context
		s.enc.Encode(scoreErr{ID: id, Error: err.Error()})
		return
	}
	o := scoreOut{ID: id, Score: math.Round(d.Score*1e4) / 1e4, Tier: d.Tier}
	if s.ex != nil && s.k > 0 {
		o.Reasons = s.ex.Explain(&in, s.k)
		for i := range o.Reasons {
			o.Reasons[i].Contribution = math.Round(o.Reasons[i].Contribution*1e4) / 1e4
		}
	}
	s.enc.Encode(o)
}

func decodeScoreLine(line []byte, l *scoreLine, msgs []router.Message) (router.Input, error) {
	var in router.Input
	if err := json.Unmarshal(line, l); err != nil {
		return in, fmt.Errorf("invalid JSON: %v", err)
	}
	switch {
	case l.Prompt != nil:
		msgs = append(msgs, router.Message{Role: "user", Content: *l.Prompt})
	case len(l.Messages) > 0:
		for _, m := range l.Messages {
			text, err := contentText(m.Content)
			if err != nil {
				return in, err
			}
			msgs = append(msgs, router.Message{Role: m.Role, Content: text})
		}
	default:
		return in, errors.New(`line has neither "prompt" nor "messages"`)
	}
	in.Messages = msgs
	in.HasTools = len(l.Tools) > 0 && string(l.Tools) != "null" && string(l.Tools) != "[]"
	in.HasResponseFormat = len(l.ResponseFormat) > 0 && string(l.ResponseFormat) != "null"
	in.MaxTokens = l.MaxTokens
	return in, nil
}

// contentText flattens a chat message's content: a string, or an array of
// parts whose text parts are joined.
func contentText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return "", fmt.Errorf("message content: %v", err)
		}
		var b strings.Builder
		for _, p := range parts {
			if p.Text == "" {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(p.Text)
		}
		return b.String(), nil
	default:
		return "", errors.New("message content must be a string or an array of parts")
	}
}
