package verify

import (
	"math"

	"github.com/cascade-gateway/cascade/router"
)

// Feature indices. The order is part of the model file format: a model whose
// feature names differ is rejected on load.
const (
	// Prompt.
	fPromptLen = iota
	fPromptNumbers
	fOptions
	fNegatedStem
	fAsksCode
	// Answer format, one-hot (structural gates), and whether logprobs exist.
	fFmtChoice
	fFmtCode
	fFmtMath
	fFmtProse
	fHasLogprobs
	// Token confidence (0 without logprobs).
	fFirstRisk
	fFirstMargin
	fFirstEntropy
	fMeanNLL
	fMinNLL
	fQ10NLL
	fLowShare
	fMeanEntropy
	fMeanMargin
	fMeanRisk
	fQ10Risk
	// Text.
	fAnswerLen
	fAnswerLenChoice
	fAnswerLenCode
	fAnswerLenMath
	fLenRatio
	fLines
	fTruncated
	fCutOff
	fHedges
	fRefusal
	fSelfCorrect
	fRepeatLines
	fAnswerQuestion
	// Multiple choice.
	fNoChoice
	fInvalidChoice
	fChoiceByText
	fChoiceRelLen
	fChoiceLongest
	fChoiceShortest
	fChoiceOverlap
	fChoicePosition
	fChoiceAllNone
	// Numbers and arithmetic.
	fFinalMarker
	fFinalInteger
	fFinalCopied
	fFinalNegative
	fFinalMagnitude
	fCopiedShare
	fNumbers
	fEquations
	fEqWrong
	fEqWrongAny
	// Code.
	fFences
	fFenceOpen
	fCodeLines
	fCodeDef
	fCodeReturn
	fCodeExamples
	fCodeUnbalanced
	fProseShare
	fCodeMissing
	// NumFeatures is the number of features.
	NumFeatures
)

var featureNames = [NumFeatures]string{
	"prompt_len", "prompt_numbers", "options", "negated_stem", "asks_code",
	"format_choice", "format_code", "format_math", "format_prose", "has_logprobs",
	"first_token_risk", "first_token_margin", "first_token_entropy", "mean_nll", "min_nll", "q10_nll", "low_conf_share", "mean_entropy", "mean_margin", "mean_risk", "q10_risk",
	"answer_len", "answer_len_choice", "answer_len_code", "answer_len_math", "len_ratio", "lines", "truncated", "cut_off",
	"hedges", "refusal", "self_correction", "repeated_lines", "answer_asks",
	"no_choice", "invalid_choice", "choice_by_text", "choice_rel_len", "choice_longest", "choice_shortest", "choice_overlap", "choice_position", "choice_all_none",
	"final_marker", "final_integer", "final_copied", "final_negative", "final_magnitude", "copied_share", "numbers", "equations", "equations_wrong", "any_equation_wrong",
	"code_fences", "code_fence_open", "code_lines", "code_def", "code_return", "code_examples", "code_unbalanced", "prose_share", "code_missing",
}

// FeatureNames returns the feature names in vector order.
func FeatureNames() []string { return append([]string(nil), featureNames[:]...) }

// Features is the verifier's feature vector.
type Features [NumFeatures]float32

// Bounds on the bytes examined, so that scoring time is bounded on any input;
// length features still see the full size.
const (
	maxPromptScan = 16 << 10
	maxAnswerScan = 16 << 10
	maxNumbers    = 64
	maxOptions    = 10
)

type span struct{ s, e int }

// promptFacts is what the answer features need from the prompt.
type promptFacts struct {
	text     string // the question: the last user message, bounded
	size     int    // bytes of all messages
	nums     [maxNumbers]float64
	nnums    int
	allNums  int
	maxNum   float64
	opts     [maxOptions]span // option texts of the last option block
	nopts    int
	stem     span
	negated  bool
	asksCode bool
}

// Extract computes the features of an answer to a prompt into x. prompt may
// be nil. It does not allocate.
func Extract(prompt *router.Input, a *Answer, x *Features) {
	*x = Features{}
	var p promptFacts
	scanPrompt(prompt, &p)
	x[fPromptLen] = log1p(float64(p.size))
	x[fPromptNumbers] = log1p(float64(p.allNums))
	x[fOptions] = float32(p.nopts)
	x[fNegatedStem] = b2f(p.negated)
	x[fAsksCode] = b2f(p.asksCode)
	if a == nil {
		x[fFmtProse] = 1
		return
	}
	text := a.Text
	if len(text) > maxAnswerScan {
		text = text[:maxAnswerScan]
	}
	tokenFeatures(a.Tokens, x)

	var t textFacts
	scanAnswer(text, &p, &t)
	code := t.fences > 0 || t.defs > 0
	choice := p.nopts >= 2 && !code && len(trim(text)) <= 64
	mathy := !code && !choice && t.nums >= 3
	switch {
	case choice:
		x[fFmtChoice] = 1
	case code:
		x[fFmtCode] = 1
	case mathy:
		x[fFmtMath] = 1
	default:
		x[fFmtProse] = 1
	}
	alen := log1p(float64(len(a.Text)))
	x[fAnswerLen] = alen
	x[fAnswerLenChoice] = alen * x[fFmtChoice]
	x[fAnswerLenCode] = alen * x[fFmtCode]
	x[fAnswerLenMath] = alen * x[fFmtMath]
	x[fLenRatio] = float32(math32Log(float64(len(a.Text)+1) / float64(p.size+1)))
	x[fLines] = log1p(float64(t.lines))
	x[fTruncated] = b2f(a.FinishReason == "length")
	x[fCutOff] = b2f(cutOff(text, &t))
	x[fHedges] = log1p(float64(t.hedges))
	x[fRefusal] = b2f(t.refusals > 0)
	x[fSelfCorrect] = log1p(float64(t.corrections))
	if t.lines > 1 {
		x[fRepeatLines] = float32(t.repeats) / float32(t.lines)
	}
	x[fAnswerQuestion] = b2f(t.questions > 0)

	if p.nopts >= 2 {
		choiceFeatures(text, &p, x)
	}

	x[fFinalMarker] = b2f(t.marker)
	x[fNumbers] = log1p(float64(t.nums))
	if t.nums > 0 {
		f := t.last
		x[fFinalInteger] = b2f(f == math2Floor(f))
		x[fFinalNegative] = b2f(f < 0)
		x[fFinalCopied] = b2f(p.has(f))
		x[fCopiedShare] = float32(t.copied) / float32(t.nums)
		if p.nnums > 0 {
			d := math.Abs(math.Log10(math.Abs(f)+1) - math.Log10(p.maxNum+1))
			x[fFinalMagnitude] = float32(min(d, 6))
		}
	}
	x[fEquations] = log1p(float64(t.equations))
	x[fEqWrong] = log1p(float64(t.wrong))
	x[fEqWrongAny] = b2f(t.wrong > 0)

	x[fFences] = log1p(float64(t.fences))
	x[fFenceOpen] = b2f(t.fences%2 == 1)
	x[fCodeLines] = log1p(float64(t.codeLines))
	x[fCodeDef] = b2f(t.defs > 0)
	x[fCodeReturn] = b2f(t.returns > 0)
	x[fCodeExamples] = b2f(t.examples > 0)
	x[fCodeUnbalanced] = b2f(t.balance != 0)
	if len(text) > 0 && code {
		x[fProseShare] = float32(len(text)-t.codeBytes) / float32(len(text))
	}
	x[fCodeMissing] = b2f(p.asksCode && !code)
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			x[i] = 0
		}
	}
}

func b2f(b bool) float32 {
	if b {
		return 1
	}
	return 0
}

func log1p(x float64) float32 { return float32(math.Log1p(x)) }

func math32Log(x float64) float64 {
	if x <= 0 {
		return 0
	}
	return math.Log(x)
}

func math2Floor(x float64) float64 { return math.Floor(x) }

// has reports whether v is one of the prompt's numbers.
func (p *promptFacts) has(v float64) bool {
	for i := 0; i < p.nnums; i++ {
		if p.nums[i] == v {
			return true
		}
	}
	return false
}

// ---- token confidence ----

// nllBins is a histogram of token negative log-likelihoods for quantiles
// without sorting (and without a buffer): bin k holds [k, k+1) / nllRes
// nats, the last everything above.
const (
	nllRes  = 16
	nllBins = 8 * nllRes
)

// riskTable[k] is 1 − exp(−k/nllRes): a token's risk (1 − its probability)
// from its NLL by linear interpolation, without an exp per token.
var riskTable = func() (t [nllBins + 1]float64) {
	for k := range t {
		t[k] = -math.Expm1(-float64(k) / nllRes)
	}
	return t
}()

// nllRisk returns 1 − exp(−nll) for nll in [0, 30], within 2e-4.
func nllRisk(nll float64) float64 {
	f := nll * nllRes
	k := int(f)
	if k >= nllBins {
		return -math.Expm1(-nll)
	}
	return riskTable[k] + (f-float64(k))*(riskTable[k+1]-riskTable[k])
}

// entropySamples bounds the tokens whose entropy and margin are computed.
const entropySamples = 32

func tokenFeatures(toks []Token, x *Features) {
	if len(toks) == 0 {
		return
	}
	x[fHasLogprobs] = 1
	first := -1
	for i := range toks {
		if !toks[i].Blank {
			first = i
			break
		}
	}
	if first < 0 {
		first = 0
	}
	t := &toks[first]
	p1, p2, h := topStats(t)
	x[fFirstRisk] = float32(1 - math.Exp(float64(cleanLogprob(t.Logprob))))
	x[fFirstMargin] = float32(p1 - p2)
	x[fFirstEntropy] = float32(h)

	var hist [nllBins]uint32
	var sum, rsum, maxNLL, hsum, msum float64
	low, nh := 0, 0
	// Entropy costs an exp per alternative: it is averaged over at most
	// entropySamples tokens spread evenly over the answer.
	stride := max(1, len(toks)/entropySamples)
	for i, next := 0, 0; i < len(toks); i++ {
		t := &toks[i]
		nll := -float64(t.Logprob)
		if !(nll >= 0) { // NaN or a positive logprob
			nll = 0
		}
		nll = min(nll, 30)
		sum += nll
		maxNLL = max(maxNLL, nll)
		if nll > math.Ln2 {
			low++
		}
		// 1 − p by interpolation in riskTable, from the histogram's bin.
		f := nll * nllRes
		k := int(f)
		if k < nllBins {
			rsum += riskTable[k] + (f-float64(k))*(riskTable[k+1]-riskTable[k])
			hist[k]++
		} else {
			rsum += -math.Expm1(-nll)
			hist[nllBins-1]++
		}
		if i == next { // without alternatives, from the token's own probability
			next += stride
			p1, p2, h := topStats(t)
			hsum += h
			msum += p1 - p2
			nh++
		}
	}
	n := len(toks)
	x[fMeanNLL] = float32(sum / float64(n))
	x[fMeanRisk] = float32(rsum / float64(n))
	x[fMinNLL] = float32(maxNLL)
	// The 90th percentile of NLL is the 10 % quantile of the logprobs.
	want, acc := uint32(math.Ceil(0.1*float64(n))), uint32(0)
	for k := nllBins - 1; k >= 0; k-- {
		acc += hist[k]
		if acc >= want {
			q := float64(k) / nllRes
			x[fQ10NLL], x[fQ10Risk] = float32(q), float32(nllRisk(q))
			break
		}
	}
	x[fLowShare] = float32(low) / float32(n)
	if nh > 0 {
		x[fMeanEntropy] = float32(hsum / float64(nh))
		x[fMeanMargin] = float32(msum / float64(nh))
	}
}

// cleanLogprob maps NaN and positive values (not log-probabilities) to 0.
func cleanLogprob(lp float32) float32 {
	if !(lp <= 0) {
		return 0
	}
	return lp
}

// topStats returns the two largest probabilities among a token's
// alternatives and their entropy (the mass outside them counted as one
// more outcome).
func topStats(t *Token) (p1, p2, h float64) {
	if len(t.Top) == 0 {
		p := math.Exp(float64(cleanLogprob(t.Logprob)))
		if p < 1 {
			h = -p * math.Log(p)
			if r := 1 - p; r > 0 {
				h -= r * math.Log(r)
			}
		}
		return p, 0, h
	}
	var mass float64
	for _, lp := range t.Top {
		if !(lp <= 0) {
			continue
		}
		p := math.Exp(float64(lp))
		mass += p
		h -= p * float64(lp) // p log p, with log p given

		switch {
		case p > p1:
			p1, p2 = p, p1
		case p > p2:
			p2 = p
		}
	}
	if r := 1 - mass; r > 1e-9 {
		h -= r * math.Log(r)
	}
	return p1, p2, h
}
