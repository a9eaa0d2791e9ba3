package router

import (
	"math"
	"math/bits"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Feature extraction for the learned scorer.
//
// One pass over the bytes of every message computes a fixed set of dense
// features (length, structure, code, math, cue words, conversation shape,
// request facts, language) and feeds hashed word unigrams and bigrams to a
// sink. Everything lives in fixed-size values on the stack; the lookup
// tables are built once at init. No regexps, no maps, no allocations.

// Dense feature indices. The order is part of the model file format: models
// name their features, and a model whose names differ is rejected on load.
const (
	fLenBytes = iota
	fLenWords
	fAvgWordLen
	fLongWordShare
	fLines
	fListItems
	fCodeFences
	fTableLines
	fIndentLines
	fCodeChars
	fDigitShare
	fNumbers
	fDecimals
	fFractions
	fMathOps
	fLatex
	fQuestions
	fSentences
	fWordsPerSentence
	fUpperShare
	fPunctShare
	fQuotes
	fParens
	fMoneyPct
	fChoiceLines
	fBlankLines
	fMessages
	fUserTurns
	fHasSystem
	fSystemLen
	fAssistantLen
	fHasTools
	fHasResponseFormat
	fMaxTokens
	fMaxTokensSet
	fDistinctNumbers
	fNumberSentences
	fStepLoad
	fStemLen
	fOptionLen
	fCapsEmphasis
	fRomanLines
	fWordProblem
	fChoiceDigits
	fEntities
	fClauses
	fMaxDigits
	fParts
	fChoiceSets
	fMaxOptions
	fBlanks
	fKwBase // first keyword-category feature; one per category below
)

// Keyword categories: words in the prompt that hint at the kind of task.
const (
	catReasoning = iota
	catMultiStep
	catConstraint
	catNegation
	catMath
	catCode
	catLaw
	catMedicine
	catScience
	catFinance
	catHistory
	catEthics
	catQuantity
	catInstruction
	catSubtle
	catSimple
	catRate
	catProof
	catAdvanced
	catDesign
	catChat
	catNumWord
	catPartLabel
	numCats
)

// NumDense is the number of dense (named) features.
const NumDense = fKwBase + numCats

var catNames = [numCats]string{
	"kw_reasoning", "kw_multistep", "kw_constraint", "kw_negation", "kw_math",
	"kw_code", "kw_law", "kw_medicine", "kw_science", "kw_finance",
	"kw_history", "kw_ethics", "kw_quantity", "kw_instruction", "kw_subtle",
	"kw_simple", "kw_rate", "kw_proof", "kw_advanced", "kw_design", "kw_chat",
	"kw_numword", "kw_part_label",
}

// DenseNames returns the names of the dense features in vector order.
func DenseNames() []string {
	n := []string{
		"len_bytes", "len_words", "avg_word_len", "long_word_share", "lines",
		"list_items", "code_fences", "table_lines", "indented_lines", "code_chars",
		"digit_share", "numbers", "decimals", "fractions", "math_ops", "latex", "questions", "sentences",
		"words_per_sentence", "upper_share", "punct_share",
		"quotes", "parens", "money_percent", "choice_lines", "blank_lines",
		"messages", "user_turns", "has_system", "system_len", "assistant_len",
		"has_tools", "has_response_format", "max_tokens", "max_tokens_set",
		"distinct_numbers", "number_sentences", "step_load", "stem_len", "option_len",
		"caps_emphasis", "roman_lines", "word_problem", "choice_digit_share",
		"entities", "clauses", "max_digits", "numbered_parts",
		"choice_sets", "max_options", "blanks",
	}
	return append(n, catNames[:]...)
}

// FeatureGroups maps each dense feature to a group name used by ablation and
// reports. "ngrams" is the group of the hashed n-gram features.
func FeatureGroups() map[string][]int {
	g := map[string][]int{
		"length":       {fLenBytes, fLenWords, fAvgWordLen, fLongWordShare, fLines, fSentences, fWordsPerSentence},
		"structure":    {fListItems, fCodeFences, fTableLines, fIndentLines, fBlankLines, fChoiceLines, fQuotes, fParens},
		"code":         {fCodeChars, fKwBase + catCode, fKwBase + catDesign},
		"math":         {fDigitShare, fNumbers, fDecimals, fFractions, fMathOps, fLatex, fMoneyPct, fKwBase + catMath, fKwBase + catQuantity},
		"multistep":    {fEntities, fClauses, fMaxDigits, fDistinctNumbers, fNumberSentences, fStepLoad, fWordProblem, fKwBase + catRate, fKwBase + catNumWord},
		"reasoning":    {fKwBase + catReasoning, fKwBase + catMultiStep, fKwBase + catProof},
		"constraints":  {fKwBase + catConstraint, fKwBase + catNegation, fKwBase + catSubtle, fCapsEmphasis},
		"choices":      {fStemLen, fOptionLen, fRomanLines, fChoiceDigits, fParts, fKwBase + catPartLabel},
		"format":       {fChoiceSets, fMaxOptions, fBlanks},
		"questions":    {fQuestions, fKwBase + catSimple, fKwBase + catInstruction, fKwBase + catChat},
		"conversation": {fMessages, fUserTurns, fHasSystem, fSystemLen, fAssistantLen},
		"request":      {fHasTools, fHasResponseFormat, fMaxTokens, fMaxTokensSet},
		"domain":       {fKwBase + catLaw, fKwBase + catMedicine, fKwBase + catScience, fKwBase + catFinance, fKwBase + catHistory, fKwBase + catEthics, fKwBase + catAdvanced},
		"language":     {fUpperShare, fPunctShare},
	}
	return g
}

// maxScan bounds the bytes examined per request so that scoring time is
// bounded on any input; length features still see the full size.
const maxScan = 64 << 10

// Character classes.
const (
	cOther = iota
	cLower
	cUpper
	cDigit
	cSpace
	cNewline
	cHigh // byte >= 0x80 (part of a UTF-8 sequence)
)

var charClass [256]uint8

// isMathOp marks operator bytes; isCodeChar marks bytes typical of code.
var isMathOp, isCodeChar, isSentenceEnd, isPunct [256]bool

func init() {
	for i := 0; i < 256; i++ {
		c := byte(i)
		switch {
		case c >= 'a' && c <= 'z':
			charClass[i] = cLower
		case c >= 'A' && c <= 'Z':
			charClass[i] = cUpper
		case c >= '0' && c <= '9':
			charClass[i] = cDigit
		case c == '\n':
			charClass[i] = cNewline
		case c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			charClass[i] = cSpace
		case c >= 0x80:
			charClass[i] = cHigh
		default:
			charClass[i] = cOther
			isPunct[i] = true
		}
	}
	for _, c := range []byte("+-*/=^<>%×÷") {
		isMathOp[c] = true
	}
	for _, c := range []byte("{};[]()<>=&|_#@$\\`") {
		isCodeChar[c] = true
	}
	for _, c := range []byte(".?!") {
		isSentenceEnd[c] = true
	}
	buildKeywords()
}

// Word hashing: FNV-1a over lowercased bytes.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
	// numToken stands for every number, so n-grams generalise over values.
	numToken = 0x9e3779b97f4a7c15
)

func mix(a, b uint64) uint64 {
	h := a*0xff51afd7ed558ccd ^ (b + 0x9e3779b97f4a7c15 + (a << 6) + (a >> 2))
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// Keyword table: open addressing over word hashes, built at init.
const kwSize = 2048

var (
	kwKeys [kwSize]uint64
	kwMask [kwSize]uint32
)

var kwLists = [numCats]string{
	catReasoning:   "why explain explanation prove proof reason reasoning justify derive analyze analyse analysis evaluate compare contrast implies imply therefore hence thus infer inference conclude conclusion argue argument critique assess because consequently whereas hypothesis deduce",
	catMultiStep:   "step steps then first second third fourth finally next after before each every total remaining left altogether twice thrice times per respectively until later initially afterwards rest another",
	catConstraint:  "must exactly only least most without always never ensure require required requires should cannot limit maximum minimum within strictly format words sentences",
	catNegation:    "not except false incorrect none neither nor no never unless cannot isn't doesn't don't wasn't aren't",
	catMath:        "equation equations solve integral derivative probability function matrix sum product prime polynomial ratio percent percentage average mean median fraction divide divided multiply multiplied remainder equals value variable theorem vector log sqrt sin cos tan expected compute calculate area volume rate speed radius angle triangle circle square integer integers real complex group ring field modulo",
	catCode:        "code function def return class import var const int string array python java javascript golang sql select loop compile bug error algorithm program printf print struct null func println lambda recursion pointer runtime complexity",
	catLaw:         "law laws legal court courts statute plaintiff defendant contract tort liability liable constitutional constitution amendment jurisdiction judge jury evidence testimony crime criminal negligence lawsuit attorney sue damages felony rights trial appeal convicted prosecution",
	catMedicine:    "patient patients clinical diagnosis disease symptom symptoms treatment drug drugs dose medical blood infection syndrome therapy surgery virus bacteria cancer heart physician hospital mg chronic acute pain anatomy nerve nerves muscle muscles artery vein tissue",
	catScience:     "energy force mass velocity acceleration electron electrons atom atoms molecule molecules chemical reaction gene genes dna rna protein proteins species evolution quantum particle temperature pressure wave charge magnetic electric gravity orbit planet star acid compound organism photon cell cells enzyme",
	catFinance:     "price prices cost costs market markets interest tax taxes profit revenue investment stock bond inflation gdp economy economic demand supply bank money loan income firm firms monopoly capital equity asset assets accounting depreciation budget wage wages",
	catHistory:     "war century empire president government political revolution treaty king queen colonial religion religious society culture historian ancient policy congress nation nations emperor dynasty",
	catEthics:      "moral morally ethics ethical philosopher philosophy kant utilitarian virtue wrong justice scenario duty consequentialism immoral",
	catQuantity:    "hour hours minute minutes day days week weeks month months year years km miles mile meters kg pounds dollars dollar cents half quarter dozen feet inches",
	catInstruction: "write summarize summarise translate list describe generate create story poem essay email rewrite draft outline",
	catSubtle:      "best likely primarily correct statement statements true which following all mainly generally usually",
	catSimple:      "hi hello thanks thank please what who when where name capital define meaning",
	catRate:        "per each every times twice thrice double triple half third quarter percent percentage ratio rate remaining left total more less fewer than discount change profit average proportion split share",
	catProof:       "prove proof derive derivation demonstrate lemma theorem rigorous rigorously formally formal show conjecture counterexample induction",
	catAdvanced:    "homomorphism isomorphism subgroup abelian eigenvalue eigenvalues determinant entropy enthalpy regression estimator heteroskedasticity autocorrelation stationary covariance asymptotic differential quantum predicate propositional tautology syllogism fallacy premise premises valid invalid symbolization hearsay estoppel easement testator mortgagee grantor pharmacokinetics genotype allele complexity algorithm compiler kernel",
	catDesign:      "implement implementation design architecture optimize optimise concurrency concurrent thread threads lock mutex distributed scalable latency throughput memory cache queue async asynchronous refactor debug",
	catChat: "hi hello hey thanks thank ok okay cool great bye morning joke " +
		// the same in other languages (a script without spaces: whole runs)
		"hola gracias bonjour salut merci hallo danke tschüss ciao grazie olá oi obrigado obrigada " +
		"hej tack dziękuję cześć merhaba teşekkürler привет здравствуйте спасибо пока привіт дякую " +
		"γεια ευχαριστώ שלום תודה مرحبا شكرا سلام مرسی नमस्ते धन्यवाद নমস্কার ধন্যবাদ " +
		"你好 您好 谢谢 謝謝 こんにちは こんばんは おはよう ありがとう 안녕 안녕하세요 감사합니다 สวัสดี ขอบคุณ chào cảm",
	catPartLabel: "scenario statement case part premise claim situation passage",
	catNumWord:   "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty hundred thousand million half halves twice double doubled triple tripled thrice third thirds quarter quarters dozen dozens",
}

func hashWord(w string) uint64 {
	w = strings.ToLower(w)
	h := uint64(fnvOffset)
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

func buildKeywords() {
	for cat, list := range kwLists {
		start := -1
		for i := 0; i <= len(list); i++ {
			if i == len(list) || list[i] == ' ' {
				if start >= 0 {
					kwInsert(hashWord(list[start:i]), uint32(1)<<cat)
				}
				start = -1
			} else if start < 0 {
				start = i
			}
		}
	}
}

func kwInsert(h uint64, bit uint32) {
	if h == 0 {
		h = 1
	}
	for i := h & (kwSize - 1); ; i = (i + 1) & (kwSize - 1) {
		if kwKeys[i] == h {
			kwMask[i] |= bit
			return
		}
		if kwKeys[i] == 0 {
			kwKeys[i], kwMask[i] = h, bit
			return
		}
	}
}

func kwLookup(h uint64) uint32 {
	if h == 0 {
		h = 1
	}
	for i := h & (kwSize - 1); ; i = (i + 1) & (kwSize - 1) {
		switch kwKeys[i] {
		case h:
			return kwMask[i]
		case 0:
			return 0
		}
	}
}

// roleWeight is how much a message counts towards the features.
func roleWeight(role string) float32 {
	switch role {
	case "user", "":
		return 1
	case "system", "developer":
		return 0.5
	case "assistant":
		return 0.4
	default: // tool, function
		return 0.25
	}
}

// Dense is the dense feature vector.
type Dense [NumDense]float32

// gramSink receives hashed n-grams. The scorer sums weights; training and
// explanations record them.
type gramSink struct {
	weights []float32 // model n-gram weights; len is a power of two
	mask    uint32
	// sum and count are the role-weighted n-gram weight sum and count over
	// all messages; acc and n the running values of the current message.
	sum, count float64
	acc        float32
	n          int
	rw         float32
	// record, when non-nil, receives every n-gram (training, explanations).
	record *[]GramHit
}

// GramHit is one hashed n-gram occurrence.
type GramHit struct {
	Bucket uint32
	Weight float32
	// Msg, Start and End locate the n-gram's bytes (for explanations).
	Msg, Start, End int32
}

// gramBucket maps a token or bigram hash to a bucket (Fibonacci hashing:
// the high bits of the product are well mixed).
func gramBucket(h uint64, mask uint32) uint32 {
	return uint32((h*0x9e3779b97f4a7c15)>>32) & mask
}

func (g *gramSink) add(h uint64, msg, start, end int) {
	b := gramBucket(h, g.mask)
	g.n++
	if g.record != nil {
		*g.record = append(*g.record, GramHit{Bucket: b, Weight: g.rw, Msg: int32(msg), Start: int32(start), End: int32(end)})
		return
	}
	g.acc += g.weights[b]
}

// flush folds the current message's n-grams into the totals.
func (g *gramSink) flush() {
	g.sum += float64(g.rw) * float64(g.acc)
	g.count += float64(g.rw) * float64(g.n)
	g.acc, g.n = 0, 0
}

// counts are the raw, role-weighted tallies of one pass.
type counts struct {
	bytes, letters, digits, upper, punct                             float32
	words, wordBytes, longWords, numbers, mathOps, latex, questions  float32
	sentences, lines, listItems, codeFences, tableLines, indentLines float32
	codeChars, quotes, parens, moneyPct, choiceLines, blankLines     float32
	systemBytes, assistantBytes, decimals, fractions                 float32
	distinct, numSentences, stemBytes, optionBytes, caps, romans     float32
	ents, commas, maxDigits, parts                                   float32
	groups, blanks, maxChoice                                        float32
	kw                                                               [numCats]float32
	messages, userTurns                                              float32
	hasSystem                                                        bool
}

// extract computes the dense features of in and feeds n-grams to g.
func extract(in *Input, d *Dense, g *gramSink) {
	var c counts
	budget := maxScan
	for mi := range in.Messages {
		m := &in.Messages[mi]
		rw := roleWeight(m.Role)
		c.messages++
		switch m.Role {
		case "system", "developer":
			c.hasSystem = true
			c.systemBytes += float32(len(m.Content))
		case "assistant":
			c.assistantBytes += float32(len(m.Content))
		case "user", "":
			c.userTurns++
		}
		s := m.Content
		if len(s) > budget {
			s = s[:budget]
		}
		budget -= len(s)
		if g != nil {
			g.rw = rw
		}
		// Length in characters, whatever the script (the unscanned rest
		// as the scanned part).
		n := float32(len(m.Content))
		if extra := scanMessage(s, rw, mi, &c, g); extra > 0 {
			n -= float32(extra) * n / float32(len(s))
		}
		c.bytes += rw * n
		if g != nil {
			g.flush()
		}
	}
	fill(in, &c, d)
}

// scanMessage adds the tallies of s to c and returns how many bytes of s are
// beyond the first of a multi-byte character (except in scripts without
// spaces, whose characters weigh about as much as their three bytes).
func scanMessage(s string, rw float32, mi int, c *counts, g *gramSink) (extra int) {
	var (
		letters, digits, upper, punct                          int
		words, wordBytes, longWords, numbers, mathOps, latex   int
		questions, sentences, lines, listItems, fences, tables int
		indent, codeChars, quotes, parens, money, choices      int
		blank, decimals, fractions                             int
		kw                                                     [numCats]int
		// distinct numbers (up to len(nums)), sentences with a number,
		// multiple-choice layout, emphasised words, roman-numbered lines
		nums                      [32]uint64
		distinct, numSentences    int
		sentHasNum, inChoice      bool
		stemEnd, choiceStart      int
		optionBytes, caps, romans int
		// distinct capitalised words inside sentences (names, entities),
		// commas outside numbers, the longest number's digits
		ents                    [16]uint64
		nEnts, commas, maxDigit int
		midSentence, afterLabel bool
		parts                   int // "Scenario 1", "Statement 2": numbered parts
		// sets of answer options (several: worked examples before the
		// question), the most options in one, blanks to fill ("_")
		groups, maxChoice, blanks int
	)
	stemEnd = -1
	var (
		prev      uint64 // previous token hash, 0 at a boundary
		prevStart int
		pipes     int
	)
	n := len(s)
	if n > 0 {
		lines = 1
	}
	lineStart := true
	for i := 0; i < n; {
		if lineStart {
			lineStart = false
			// Look at how the line begins.
			j := i
			for j < n && (s[j] == ' ' || s[j] == '\t') {
				j++
			}
			if j-i >= 4 || (j > i && s[i] == '\t') {
				indent++
			}
			if j < n {
				r := s[j:]
				switch {
				case len(r) >= 3 && r[0] == '`' && r[1] == '`' && r[2] == '`':
					fences++
				case len(r) >= 2 && (r[0] == '-' || r[0] == '*' || r[0] == '+') && r[1] == ' ':
					listItems++
				case len(r) >= 2 && r[0] >= 'A' && r[0] <= 'H' && (r[1] == '.' || r[1] == ')'),
					len(r) >= 3 && r[0] == '(' && ((r[1] >= 'a' && r[1] <= 'h') || (r[1] >= 'A' && r[1] <= 'H')) && r[2] == ')':
					choices++
					if r[0] == 'A' || (r[0] == '(' && (r[1] == 'a' || r[1] == 'A')) {
						groups++ // a new set of options starts
					}
					if k := int(r[0]|0x20) - 'a' + 1; r[0] != '(' && k > maxChoice {
						maxChoice = k
					} else if r[0] == '(' && int(r[1]|0x20)-'a'+1 > maxChoice {
						maxChoice = int(r[1]|0x20) - 'a' + 1
					}
					if stemEnd < 0 {
						stemEnd = i
					}
					inChoice, choiceStart = true, j
				case r[0] == 'I':
					k := 1
					for k < len(r) && k < 4 && (r[k] == 'I' || r[k] == 'V') {
						k++
					}
					if k+1 < len(r) && (r[k] == '.' || r[k] == ')') && r[k+1] == ' ' {
						romans++
					}
				case r[0] >= '0' && r[0] <= '9':
					k := 1
					for k < len(r) && k < 4 && r[k] >= '0' && r[k] <= '9' {
						k++
					}
					if k < len(r) && (r[k] == '.' || r[k] == ')') {
						listItems++
					}
				case r[0] == '\n':
					blank++
				}
			}
		}
		ch := s[i]
		cl := charClass[ch]
		step := 1
		if cl == cHigh {
			r, size := utf8.DecodeRuneInString(s[i:])
			var rk uint8
			rk, ch = classifyRune(r)
			switch rk {
			case rkLetter, rkIdeo: // counted with their token
			case rkNeutral: // emoji and symbols: no length either
				extra += size
			default:
				extra += size - 1
			}
			step = size
			switch rk {
			case rkLetter, rkIdeo: // a token starts: below
			case rkPunct:
				if ch == 0 {
					punct++
					i += size
					continue
				}
				cl = cOther // as its ASCII equivalent
			case rkMath:
				punct++
				mathOps++
				i += size
				continue
			case rkMoney:
				punct++
				money++
				i += size
				continue
			default: // spaces, emoji, symbols
				i += size
				continue
			}
		}
		if cl == cLower || cl == cUpper || cl == cDigit || cl == cHigh {
			// A token: letters, digits and UTF-8 bytes, lowercased and
			// hashed as we go. A number may contain a decimal point or a
			// thousands separator ("3.14", "1,000"); a word an apostrophe.
			start := i
			isNum := cl == cDigit
			isDec := false
			up, dg, ex0 := upper, digits, extra
			ideo := 0 // characters of scripts without spaces
			lastKw := uint32(0)
			h := uint64(fnvOffset)
		token:
			for i < n {
				// Fast path: a run of lower-case ASCII letters.
				j := i
				for j < n && charClass[s[j]] == cLower {
					h = (h ^ uint64(s[j])) * fnvPrime
					j++
				}
				letters += j - i
				if i = j; i >= n {
					break
				}
				b := s[i]
				switch charClass[b] {
				case cLower:
					letters++
				case cUpper:
					letters++
					upper++
					b += 'a' - 'A'
				case cDigit:
					digits++
				case cHigh:
					r, size := utf8.DecodeRuneInString(s[i:])
					switch rk, _ := classifyRune(r); rk {
					case rkLetter:
						if lr, up := lowerRune(r); up {
							upper++
							r = lr
						}
						extra += size - 1
					case rkIdeo:
						ideo++
					default:
						break token
					}
					letters++
					var buf [utf8.UTFMax]byte
					k := utf8.EncodeRune(buf[:], r)
					for _, c := range buf[:k] {
						h ^= uint64(c)
						h *= fnvPrime
					}
					i += size
					continue
				default:
					if i+1 >= n {
						break token
					}
					next := charClass[s[i+1]]
					switch {
					case isNum && (b == '.' || b == ',') && next == cDigit:
						if b == '.' {
							isDec = true
						}
					case !isNum && b == '\'' && (next == cLower || next == cUpper):
					default:
						break token
					}
				}
				h ^= uint64(b)
				h *= fnvPrime
				i++
			}
			wl := i - start - (extra - ex0) // characters, not bytes
			tok := h
			if isNum {
				numbers++
				if isDec {
					decimals++
				}
				sentHasNum = true
				if afterLabel {
					parts++
				}
				if digits-dg > maxDigit {
					maxDigit = digits - dg
				}
				if distinct < len(nums) {
					k := 0
					for k < distinct && nums[k] != h {
						k++
					}
					if k == distinct {
						nums[distinct] = h
						distinct++
					}
				}
				if i+1 < n && s[i] == '/' && charClass[s[i+1]] == cDigit {
					fractions++
				}
				tok = numToken
			} else {
				if ideo > 0 {
					// Two characters of a script without spaces make
					// about a word, of an average word's length.
					k := (ideo + 1) / 2
					if wl > 3*ideo { // letters or digits as well
						k++
					}
					words += k
					wordBytes += 5 * k
					wl = min(wl, 24)
				} else {
					words++
					wordBytes += wl
					if wl >= 10 {
						longWords++
					}
				}
				firstUp := cl == cUpper
				if cl == cHigh {
					r, _ := utf8.DecodeRuneInString(s[start:])
					firstUp = unicode.IsUpper(r)
				}
				if midSentence && firstUp && upper-up == 1 && nEnts < len(ents) {
					k := 0
					for k < nEnts && ents[k] != h {
						k++
					}
					if k == nEnts {
						ents[nEnts] = h
						nEnts++
					}
				}
				if wl >= 2 && wl <= 24 {
					m := kwLookup(h)
					lastKw = m
					if wl >= 3 && upper-up == wl && m&(1<<catNegation|1<<catConstraint) != 0 {
						caps++ // NOT, EXCEPT, LEAST, ONLY, MUST
					}
					for ; m != 0; m &= m - 1 {
						kw[bits.TrailingZeros32(m)]++
					}
				}
			}
			if g != nil {
				g.add(tok, mi, start, i)
				if prev != 0 {
					g.add(prev*fnvPrime^tok, mi, prevStart, i)
				}
			}
			prev, prevStart = tok, start
			midSentence = true
			afterLabel = !isNum && lastKw&(1<<catPartLabel) != 0
			// The usual delimiter, a single space, needs no more work.
			if i < n && s[i] == ' ' {
				i++
			}
			continue
		}
		if ch == '\\' && i+1 < n && s[i+1] == 'n' && (i+2 >= n || charClass[s[i+2]] != cLower) {
			// A line break written as an escape ("\n"), as in prompts
			// passed on as string literals; "\nabla" and the like are not.
			cl, step = cNewline, 2
		}
		switch cl {
		case cNewline:
			if i+1 < n {
				lines++
			}
			if inChoice {
				optionBytes += i - choiceStart
				inChoice = false
			}
			if sentHasNum {
				numSentences++
				sentHasNum = false
			}
			midSentence = false
			lineStart = true
			prev = 0
			if pipes >= 2 {
				tables++
			}
			pipes = 0
		case cOther:
			punct++
			if isMathOp[ch] {
				mathOps++
			}
			if isCodeChar[ch] && step == 1 {
				codeChars++
			}
			switch ch {
			case '?':
				questions++
				sentences++
				if sentHasNum {
					numSentences++
					sentHasNum = false
				}
				midSentence = false
				prev = 0
			case '.', '!', ';', ':':
				if isSentenceEnd[ch] {
					sentences++
					if sentHasNum {
						numSentences++
						sentHasNum = false
					}
					midSentence = false
				}
				prev = 0
			case ',':
				commas++
			case '|':
				pipes++
			case '"':
				quotes++
			case '(':
				parens++
			case '$', '%':
				money++
			case '\\':
				latex++
			case '_':
				if i == 0 || (s[i-1] != '_' && !isAlnum(s[i-1])) {
					j := i + 1
					for j < n && s[j] == '_' {
						j++
					}
					if j == n || !isAlnum(s[j]) {
						blanks++
					}
				}
			}
		}
		i += step
	}
	if pipes >= 2 {
		tables++
	}
	if inChoice {
		optionBytes += n - choiceStart
	}
	if sentHasNum {
		numSentences++
	}
	if stemEnd < 0 {
		stemEnd = n - extra
	}
	f := func(x int) float32 { return rw * float32(x) }
	c.letters += f(letters)
	c.digits += f(digits)
	c.upper += f(upper)
	c.punct += f(punct)
	c.words += f(words)
	c.wordBytes += f(wordBytes)
	c.longWords += f(longWords)
	c.numbers += f(numbers)
	c.mathOps += f(mathOps)
	c.decimals += f(decimals)
	c.fractions += f(fractions)
	c.latex += f(latex)
	c.questions += f(questions)
	c.sentences += f(sentences)
	c.lines += f(lines)
	c.listItems += f(listItems)
	c.codeFences += f(fences)
	c.tableLines += f(tables)
	c.indentLines += f(indent)
	c.codeChars += f(codeChars)
	c.quotes += f(quotes)
	c.parens += f(parens)
	c.moneyPct += f(money)
	c.choiceLines += f(choices)
	c.blankLines += f(blank)
	for k := range kw {
		c.kw[k] += f(kw[k])
	}
	c.distinct += f(distinct)
	c.numSentences += f(numSentences)
	c.stemBytes += f(stemEnd)
	c.optionBytes += f(optionBytes)
	c.caps += f(caps)
	c.romans += f(romans)
	c.ents += f(nEnts)
	c.parts += f(parts)
	c.groups += f(groups)
	c.blanks += f(blanks)
	if mc := f(maxChoice); mc > c.maxChoice {
		c.maxChoice = mc
	}
	c.commas += f(commas)
	if md := f(maxDigit); md > c.maxDigits {
		c.maxDigits = md
	}
	return extra
}

// shareSmoothing is the pseudo-count of characters behind the upper-case and
// punctuation shares.
const shareSmoothing = 24

func isAlnum(b byte) bool {
	cl := charClass[b]
	return cl == cLower || cl == cUpper || cl == cDigit || cl == cHigh
}

func log1p(x float32) float32 { return float32(math.Log1p(float64(x))) }

func ratio(a, b float32) float32 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func fill(in *Input, c *counts, d *Dense) {
	d[fLenBytes] = log1p(c.bytes)
	d[fLenWords] = log1p(c.words)
	d[fAvgWordLen] = ratio(c.wordBytes, c.words)
	d[fLongWordShare] = ratio(c.longWords, c.words)
	d[fLines] = log1p(c.lines)
	d[fListItems] = log1p(c.listItems)
	d[fCodeFences] = log1p(c.codeFences)
	d[fTableLines] = log1p(c.tableLines)
	d[fIndentLines] = log1p(c.indentLines)
	scanned := c.letters + c.digits + c.punct + 1
	d[fCodeChars] = ratio(c.codeChars, scanned)
	d[fDigitShare] = ratio(c.digits, scanned)
	d[fNumbers] = log1p(c.numbers)
	d[fDecimals] = log1p(c.decimals)
	d[fFractions] = log1p(c.fractions)
	d[fMathOps] = log1p(c.mathOps)
	d[fLatex] = log1p(c.latex)
	d[fQuestions] = log1p(c.questions)
	d[fSentences] = log1p(c.sentences)
	d[fWordsPerSentence] = log1p(ratio(c.words, c.sentences+1))
	// Shares of a few characters say little: a pseudo-count keeps "Hi!"
	// or "¡Gracias!" from looking like a wall of punctuation.
	d[fUpperShare] = ratio(c.upper, c.letters+shareSmoothing)
	d[fPunctShare] = ratio(c.punct, scanned+shareSmoothing)
	d[fQuotes] = log1p(c.quotes)
	d[fParens] = log1p(c.parens)
	d[fMoneyPct] = log1p(c.moneyPct)
	d[fChoiceLines] = log1p(c.choiceLines)
	d[fBlankLines] = log1p(c.blankLines)
	d[fMessages] = log1p(c.messages)
	d[fUserTurns] = log1p(c.userTurns)
	if c.hasSystem {
		d[fHasSystem] = 1
	}
	d[fSystemLen] = log1p(c.systemBytes)
	d[fAssistantLen] = log1p(c.assistantBytes)
	if in.HasTools {
		d[fHasTools] = 1
	}
	if in.HasResponseFormat {
		d[fHasResponseFormat] = 1
	}
	if in.MaxTokens > 0 {
		d[fMaxTokens] = log1p(float32(in.MaxTokens))
		d[fMaxTokensSet] = 1
	}
	for k := range c.kw {
		d[fKwBase+k] = log1p(c.kw[k])
	}
	d[fDistinctNumbers] = log1p(c.distinct)
	d[fNumberSentences] = log1p(c.numSentences)
	// Multi-step load: several sentences that each bring quantities.
	d[fStepLoad] = d[fNumberSentences] * d[fDistinctNumbers]
	d[fStemLen] = log1p(c.stemBytes)
	d[fOptionLen] = log1p(ratio(c.optionBytes, c.choiceLines))
	d[fCapsEmphasis] = log1p(c.caps)
	d[fRomanLines] = log1p(c.romans)
	d[fParts] = log1p(c.parts)
	d[fChoiceSets] = log1p(c.groups)
	d[fMaxOptions] = c.maxChoice
	d[fBlanks] = log1p(c.blanks)
	if c.choiceLines == 0 {
		// Free text only: in multiple-choice questions these mostly
		// describe the options. Clauses: commas plus sentence ends.
		// Named entities count in problems with
		// quantities (people and things whose amounts must be tracked).
		if c.numbers > 0 {
			d[fEntities] = log1p(c.ents)
		}
		d[fClauses] = log1p(c.commas + c.sentences)
		d[fMaxDigits] = log1p(c.maxDigits)
	}
	if c.choiceLines == 0 {
		// A word problem: quantities in free text, no answer options.
		d[fWordProblem] = d[fStepLoad]
	} else {
		// Digits in a multiple-choice question (computed answers).
		d[fChoiceDigits] = d[fDigitShare]
	}
}

// Sign constraints: prior knowledge of which way a feature can push.
// Features that by their nature indicate a harder task (length, quantities,
// code, math, reasoning and proof cues, constraints, specialist vocabulary)
// may only raise the score; chit-chat and simple-question cues may only
// lower it. Training projects the weights onto these signs, so a feature
// cannot learn an artefact of one data set (say, that prompts with decimals
// were easy there) that would misroute prompts unlike it.
var featureSign = map[int]int8{
	fLenBytes: 1, fLenWords: 1, fLongWordShare: 1, fListItems: 1, fCodeFences: 1,
	fTableLines: 1, fIndentLines: 1, fCodeChars: 1, fNumbers: 1, fDecimals: 1,
	fFractions: 1, fMathOps: 1, fLatex: 1, fDistinctNumbers: 1, fDigitShare: 1,
	fMoneyPct: 1, fKwBase + catQuantity: 1, fEntities: 1, fClauses: 1, fMaxDigits: 1,
	fNumberSentences: 1, fStepLoad: 1, fWordProblem: 1, fCapsEmphasis: 1,
	fRomanLines: 1, fParts: 1, fHasTools: 1, fHasResponseFormat: 1,
	fKwBase + catReasoning: 1, fKwBase + catMultiStep: 1, fKwBase + catConstraint: 1,
	fKwBase + catNegation: 1, fKwBase + catMath: 1, fKwBase + catCode: 1,
	fKwBase + catLaw: 1, fKwBase + catMedicine: 1, fKwBase + catScience: 1,
	fKwBase + catRate: 1, fKwBase + catProof: 1, fKwBase + catAdvanced: 1,
	fKwBase + catDesign: 1, fKwBase + catNumWord: 1,
	fKwBase + catSimple: -1, fKwBase + catChat: -1,
}

// priorCues are the difficulty cues whose weight keeps a floor (see
// TrainOptions.Floor): the routing data under-represents them (its math
// questions were, oddly, easier for the small model than the rest), yet on
// open traffic a proof, an integral or a reasoning request is a reason to
// escalate.
var priorCues = []int{
	fMathOps, fLatex, fKwBase + catMath, fKwBase + catProof, fKwBase + catReasoning,
	fKwBase + catCode, fKwBase + catDesign, fKwBase + catAdvanced, fKwBase + catConstraint,
}

// FeatureSigns returns the sign constraint of each dense feature: +1 (weight
// ≥ 0), −1 (≤ 0) or 0 (free).
func FeatureSigns() []int8 {
	s := make([]int8, NumDense)
	for j, v := range featureSign {
		s[j] = v
	}
	return s
}
