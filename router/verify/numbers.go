package verify

import (
	"math"
	"strings"
)

// numbers calls f with the value and byte span of each number in s: digits
// with optional thousands commas and decimals, negative after a lone '-'.
// Digits glued to a letter (H2O, x2) are not numbers.
func numbers(s string, f func(v float64, start, end int)) {
	for i := 0; i < len(s); {
		c := s[i]
		if !isDigit(c) || (i > 0 && (isAlnum(s[i-1]) || s[i-1] == '.')) {
			i++
			continue
		}
		v, end := parseNumber(s, i)
		start := i
		if i > 0 && s[i-1] == '-' && (i == 1 || !isAlnum(s[i-2])) {
			v, start = -v, i-1
		}
		if end < len(s) && isAlnum(s[end]) && s[end] != 'x' {
			i = end
			for i < len(s) && isAlnum(s[i]) {
				i++
			}
			continue
		}
		f(v, start, end)
		i = end
	}
}

// parseNumber reads an unsigned number at s[i] (a digit): 1,234.5 → 1234.5.
func parseNumber(s string, i int) (float64, int) {
	var v float64
	for i < len(s) {
		c := s[i]
		switch {
		case isDigit(c):
			v = v*10 + float64(c-'0')
			i++
			continue
		case c == ',' && threeDigits(s, i+1):
			i++
			continue
		}
		break
	}
	if i+1 < len(s) && s[i] == '.' && isDigit(s[i+1]) {
		i++
		scale := 0.1
		for i < len(s) && isDigit(s[i]) {
			v += float64(s[i]-'0') * scale
			scale /= 10
			i++
		}
	}
	return v, i
}

// threeDigits reports whether s[i:] starts with exactly three digits.
func threeDigits(s string, i int) bool {
	if i+3 > len(s) {
		return false
	}
	for k := i; k < i+3; k++ {
		if !isDigit(s[k]) {
			return false
		}
	}
	return i+3 == len(s) || !isDigit(s[i+3])
}

// exprByte marks the bytes an arithmetic expression is made of: digits,
// operators, brackets, currency, percent, spaces and the UTF-8 bytes of ×
// and ÷.
var exprByte [256]bool

func init() {
	for _, c := range []byte("0123456789.,+-*/xX()$% \\\u00d7\u00f7") {
		exprByte[c] = true
	}
	exprByte[0xc3], exprByte[0x97], exprByte[0xb7] = true, true, true
}

// equations finds "expression = value" statements (and calculator
// annotations "<<a*b=c>>") and counts those whose two sides differ.
func equations(s string, t *textFacts) {
	for i := 1; i+1 < len(s); i++ {
		e := strings.IndexByte(s[i:len(s)-1], '=')
		if e < 0 {
			return
		}
		i += e
		if s[i-1] == '=' || s[i+1] == '=' || s[i-1] == '<' || s[i-1] == '>' || s[i-1] == '!' {
			continue
		}
		j := i
		for j > 0 && i-j < 80 && exprByte[s[j-1]] {
			j--
		}
		k := i + 1
		for k < len(s) && k-i < 80 && exprByte[s[k]] {
			k++
		}
		l, lops, ok := evaluate(s[j:i])
		if !ok || lops == 0 {
			continue
		}
		r, _, ok := evaluate(s[i+1 : k])
		if !ok {
			continue
		}
		t.equations++
		if math.Abs(l-r) > max(0.011, 0.005*math.Abs(r)) {
			t.wrong++
		}
	}
}

// evaluate computes an arithmetic expression of + - * / x × ÷ % and
// brackets; ok is false when s is not one (leading and trailing noise such
// as ", $" or "." is ignored). ops counts the binary operators.
func evaluate(s string) (v float64, ops int, ok bool) {
	// Skip leading noise up to the first thing an expression can start with.
	i := 0
	for i < len(s) && !(isDigit(s[i]) || s[i] == '(' || s[i] == '$' || s[i] == '-') {
		i++
	}
	e := evaluator{s: s, i: i}
	v, ok = e.sum(0)
	if !ok {
		return 0, 0, false
	}
	for ; e.i < len(s); e.i++ {
		if c := s[e.i]; c != ' ' && c != '.' && c != ',' && c != '\\' {
			return 0, 0, false
		}
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, 0, false
	}
	return v, e.ops, true
}

type evaluator struct {
	s   string
	i   int
	ops int
}

// peek skips spaces, currency signs and escapes and returns the next byte.
func (e *evaluator) peek() byte {
	for e.i < len(e.s) && (e.s[e.i] == ' ' || e.s[e.i] == '$' || e.s[e.i] == '\\') {
		e.i++
	}
	if e.i < len(e.s) {
		return e.s[e.i]
	}
	return 0
}

func (e *evaluator) sum(depth int) (float64, bool) {
	v, ok := e.product(depth)
	for ok {
		switch e.peek() {
		case '+':
			e.i++
			w, ok2 := e.product(depth)
			v, ok = v+w, ok2
		case '-':
			e.i++
			w, ok2 := e.product(depth)
			v, ok = v-w, ok2
		default:
			return v, true
		}
		e.ops++
	}
	return 0, false
}

func (e *evaluator) product(depth int) (float64, bool) {
	v, ok := e.factor(depth)
	for ok {
		c := e.peek()
		mul := c == '*' || c == 'x' || c == 'X'
		div := c == '/'
		n := 1
		if c == 0xc3 && e.i+1 < len(e.s) {
			mul, div, n = e.s[e.i+1] == 0x97, e.s[e.i+1] == 0xb7, 2
		}
		if !mul && !div {
			return v, true
		}
		e.i += n
		w, ok2 := e.factor(depth)
		if !ok2 {
			return 0, false
		}
		if mul {
			v *= w
		} else {
			v /= w
		}
		e.ops++
	}
	return 0, false
}

func (e *evaluator) factor(depth int) (float64, bool) {
	if depth > 8 {
		return 0, false
	}
	var v float64
	switch c := e.peek(); {
	case c == '-':
		e.i++
		w, ok := e.factor(depth + 1)
		return -w, ok
	case c == '(':
		e.i++
		w, ok := e.sum(depth + 1)
		if !ok || e.peek() != ')' {
			return 0, false
		}
		e.i++
		v = w
	case isDigit(c):
		v, e.i = parseNumber(e.s, e.i)
	default:
		return 0, false
	}
	if e.peek() == '%' {
		e.i++
		v /= 100
	}
	return v, true
}
