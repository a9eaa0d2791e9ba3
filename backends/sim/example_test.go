package sim_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/cascade-gateway/cascade/backends/sim"
)

func Example() {
	s := sim.New(sim.Config{Model: "small", MinTokens: 4, MaxTokens: 8})
	ts := httptest.NewServer(s)
	defer ts.Close()

	resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"small","messages":[{"role":"user","content":"Say hello."}],"max_tokens":3}`))
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, strings.Contains(string(body), `"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}`))

	st := s.Stats()
	fmt.Println(st.Requests, st.Completed, st.GenerationTokens)
	// Output:
	// 200 true
	// 1 1 3
}
