package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets a test run the binary's main in a child process
// (CASCADE_TEST_MAIN=1, arguments after "--"), to see its exit status.
func TestMain(m *testing.M) {
	if os.Getenv("CASCADE_TEST_MAIN") != "" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"cascade"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runMain runs "cascade args..." in a child process and returns its exit
// code and output.
func runMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "CASCADE_TEST_MAIN=1", "OTEL_EXPORTER_OTLP_ENDPOINT=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String()
}

// serve on a port that is taken exits non-zero, says why, and never
// claims to be listening.
func TestServePortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct{ name, extra, want string }{
		{"api", "", "listen: cannot bind " + ln.Addr().String()},
		{"admin", "admin: {listen: \"" + ln.Addr().String() + "\"}\n", "admin.listen: cannot bind " + ln.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen := ln.Addr().String()
			if tc.extra != "" {
				listen = "127.0.0.1:0"
			}
			path := filepath.Join(t.TempDir(), "cascade.yaml")
			cfg := "listen: \"" + listen + "\"\n" + tc.extra + "scrape: {interval: -1s}\n" +
				"tiers: [{name: small, endpoints: [{url: 'http://127.0.0.1:1/v1', model: m}]}]\n"
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			code, out := runMain(t, "serve", "-config", path)
			if code == 0 || !strings.Contains(out, tc.want) || !strings.Contains(out, "address already in use") {
				t.Fatalf("exit %d, output:\n%s\nwant non-zero and %q", code, out, tc.want)
			}
			if strings.Contains(out, "listening") {
				t.Fatalf("logged listening although the bind failed:\n%s", out)
			}
		})
	}
}

func TestCheckConfigListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cascade.yaml")
	os.WriteFile(path, []byte("listen: banana\ntiers: [{name: small, endpoints: [{url: 'http://127.0.0.1:1/v1', model: m}]}]\n"), 0o600)
	code, out := runMain(t, "check-config", path)
	if code == 0 || !strings.Contains(out, `listen: "banana" is not host:port`) {
		t.Fatalf("exit %d: %s", code, out)
	}
}
