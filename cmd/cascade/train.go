package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cascade-gateway/cascade/router"
)

func init() {
	register("train", "train the router's learned scorer on labelled JSONL", runTrain)
}

// stringsFlag collects a repeatable string flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

func runTrain(args []string) error {
	if hasAnswers(args) {
		return runTrainAnswers(args)
	}
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	var data stringsFlag
	fs.Var(&data, "data", "labelled JSONL file (repeatable): {id, source, domain, prompt, weak, strong}")
	out := fs.String("out", "model.json", "where to write the model")
	seed := fs.Int64("seed", 1, "seed of the train/validation split (by prompt)")
	label := fs.String("label", router.LabelGain, "training target: gain, weak_wrong, escalate or hard (gain, with prompts both models fail counted as partly worth escalating)")
	free := fs.Bool("unconstrained", false, "train without the sign constraints on difficulty and chit-chat features")
	floor := fs.Float64("floor", router.DefaultFloor, "least weight (standardised units) of the prior difficulty cues: math, proof, reasoning, code, design, specialist terms, constraints; -1: none")
	bits := fs.Int("gram-bits", router.DefaultGramBits, "log2 of n-gram buckets; -1 trains without n-grams")
	l2 := fs.Float64("l2", router.DefaultL2Dense, "L2 penalty on the dense feature weights")
	smooth := fs.Float64("topic-smoothing", router.DefaultTopicSmoothing, "pseudo-count of the n-gram subject estimates")
	iters := fs.Int("iters", router.DefaultIters, "optimiser steps")
	balance := fs.Bool("balance", true, "weight each source equally")
	calibrate := fs.String("calibrate", router.CalibratePercentile, "score scale (order is kept): percentile (among training prompts), weak_wrong (probability the small model fails) or none")
	all := fs.Bool("all", false, "train on every row (no validation half)")
	ablation := fs.Int("ablation", 0, "instead of training, run a feature-group ablation over this many split seeds (seed, seed+1, ...)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(data) == 0 {
		return errors.New("at least one --data file is required")
	}
	ex, err := router.LoadExamples(data...)
	if err != nil {
		return err
	}
	opt := router.TrainOptions{
		Seed: *seed, Label: *label, GramBits: *bits, L2Dense: *l2, TopicSmoothing: *smooth,
		Iters: *iters, BalanceSources: *balance, Calibrate: *calibrate, Unconstrained: *free, Floor: *floor,
	}
	if *ablation > 0 {
		return runAblation(ex, opt, *ablation)
	}
	train, val := router.Split(ex, *seed)
	if *all {
		train, val = ex, nil
	}
	fmt.Fprintf(os.Stderr, "train: %d examples (%d training, %d validation)\n", len(ex), len(train), len(val))
	opt.Progress = func(it int, loss float64) {
		fmt.Fprintf(os.Stderr, "\rtrain: step %d/%d loss %.5f", it, *iters, loss)
	}
	m, err := router.Train(train, opt)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	fmt.Printf("%-8s %-6s %6s %7s %7s %7s\n", "source", "split", "n", "APGR", "CPT50", "CPT80")
	rep := map[string]any{}
	for _, part := range []struct {
		name string
		ex   []router.Example
	}{{"train", train}, {"val", val}} {
		names, groups := router.BySource(part.ex)
		for _, src := range names {
			g := groups[src]
			w, s := router.Outcomes(g)
			mt := router.Evaluate(router.ScoreAll(m, g), w, s)
			fmt.Printf("%-8s %-6s %6d %7.3f %6.1f%% %6.1f%%\n", src, part.name, mt.N, mt.APGR, 100*mt.CPT50, 100*mt.CPT80)
			rep[part.name+"/"+src] = map[string]float64{"apgr": round3(mt.APGR), "cpt50": round3(mt.CPT50), "cpt80": round3(mt.CPT80)}
		}
		if len(names) > 1 { // every source weighs the same, ranked together
			mt := router.EvaluateMixed(part.ex, router.ScoreAll(m, part.ex))
			fmt.Printf("%-8s %-6s %6d %7.3f %6.1f%% %6.1f%%\n", "mixed", part.name, mt.N, mt.APGR, 100*mt.CPT50, 100*mt.CPT80)
			rep[part.name+"/mixed"] = map[string]float64{"apgr": round3(mt.APGR), "cpt50": round3(mt.CPT50), "cpt80": round3(mt.CPT80)}
		}
	}
	var meta map[string]any
	if err := json.Unmarshal(m.Meta(), &meta); err == nil {
		meta["metrics"] = rep
		names := make([]string, len(data))
		for i, d := range data {
			names[i] = filepath.Base(d)
		}
		meta["data"] = names
		meta["validation_split"] = !*all
		if err := m.SetMeta(meta); err != nil {
			return err
		}
	}
	if err := m.Save(*out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "train: wrote %s\n", *out)
	return nil
}

func round3(x float64) float64 {
	if x != x {
		return -1
	}
	return float64(int64(x*1000+0.5*sign(x))) / 1000
}

func sign(x float64) float64 {
	if x < 0 {
		return -1
	}
	return 1
}

func runAblation(ex []router.Example, opt router.TrainOptions, n int) error {
	seeds := make([]int64, n)
	for i := range seeds {
		seeds[i] = opt.Seed + int64(i)
	}
	rows, err := router.Ablation(ex, seeds, opt, func(done, total int) {
		fmt.Fprintf(os.Stderr, "\rablation: %d/%d models", done, total)
	})
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	srcs, _ := router.BySource(ex)
	if len(srcs) > 1 {
		srcs = append(srcs, "mixed")
	}
	fmt.Printf("validation APGR, mean over %d split seeds; delta = without the group − all\n%-14s", n, "left out")
	for _, s := range srcs {
		fmt.Printf(" %8s %7s", s, "delta")
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("%-14s", r.Group)
		for _, s := range srcs {
			fmt.Printf(" %8.3f %+7.3f", r.APGR[s], r.APGR[s]-rows[0].APGR[s])
		}
		fmt.Println()
	}
	return nil
}
