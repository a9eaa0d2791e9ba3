GO ?= go

.PHONY: demo test bench lint build
build:
	$(GO) build -o bin/cascade ./cmd/cascade

demo:
	$(GO) run ./cmd/cascade demo

test:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) mod tidy -diff
