package router

import (
	"unicode"
	"unicode/utf8"
)

// Text outside ASCII. The scanner works on bytes; a byte of 0x80 or above
// starts a UTF-8 sequence, which it decodes and classifies here, so that
// every script counts the way English does: letters are letters (one per
// character, upper case where the script has it), a character of a script
// written without spaces (Chinese, Japanese, Thai...) is about half a word,
// full-width and script-specific punctuation ends sentences and asks
// questions like its ASCII counterpart, mathematical symbols are operators,
// and emoji and other symbols count for nothing. Non-ASCII text as such
// carries no weight.

// Rune kinds.
const (
	rkNeutral = iota // emoji, symbols, unassigned: no feature
	rkLetter         // a letter or combining mark of a script with spaces
	rkIdeo           // a character of a script written without spaces
	rkSpace          // separates words
	rkPunct          // punctuation; maps to an ASCII equivalent (or 0)
	rkMath           // a mathematical operator or symbol
	rkMoney          // a currency sign
)

// classifyRune returns the kind of r and, for punctuation, its ASCII
// equivalent (0 when it has none).
func classifyRune(r rune) (kind uint8, ascii byte) {
	switch {
	case r == utf8.RuneError:
		return rkNeutral, 0
	case isIdeo(r):
		return rkIdeo, 0
	case unicode.IsLetter(r) || unicode.IsMark(r) || r == 0x200C || r == 0x200D:
		return rkLetter, 0
	case unicode.IsSpace(r) || r == 0x200B || r == 0x3000:
		return rkSpace, 0
	}
	switch r {
	case '。', '．', '।', '॥', '۔', '｡':
		return rkPunct, '.'
	case '？', '؟', '\u037e': // the last: Greek question mark
		return rkPunct, '?'
	case '！':
		return rkPunct, '!'
	case '，', '、', '،', '､':
		return rkPunct, ','
	case '：':
		return rkPunct, ':'
	case '；', '؛':
		return rkPunct, ';'
	case '（':
		return rkPunct, '('
	case '“', '”', '„', '«', '»', '「', '」', '『', '』', '〝', '〞', '＂':
		return rkPunct, '"'
	case '×', '÷', '−', '±', '·', '√', '∞', '²', '³', '½', '¼', '¾', '°':
		return rkMath, 0
	}
	switch {
	case r >= 0x2200 && r <= 0x22FF, r >= 0x2A00 && r <= 0x2AFF, r >= 0x27C0 && r <= 0x27EF,
		r >= 0x2070 && r <= 0x209F, r >= 0x1D400 && r <= 0x1D7FF:
		return rkMath, 0
	case unicode.Is(unicode.Sc, r):
		return rkMoney, 0
	case unicode.IsPunct(r):
		return rkPunct, 0
	}
	return rkNeutral, 0
}

// isIdeo reports whether r belongs to a script written without spaces
// between words: CJK ideographs, kana, Thai, Lao, Khmer, Myanmar, Tibetan.
func isIdeo(r rune) bool {
	switch {
	case r < 0x0E00:
		return false
	case r <= 0x0EFF: // Thai, Lao
		return true
	case r >= 0x0F00 && r <= 0x109F: // Tibetan, Myanmar
		return true
	case r >= 0x1780 && r <= 0x17FF: // Khmer
		return true
	case r >= 0x3040 && r <= 0x30FF, r >= 0x31F0 && r <= 0x31FF: // kana
		return true
	case r >= 0x3400 && r <= 0x9FFF, r >= 0xF900 && r <= 0xFAFF, r >= 0x20000 && r <= 0x3FFFF: // ideographs
		return true
	case r >= 0xFF66 && r <= 0xFF9F: // half-width katakana
		return true
	}
	return false
}

// lowerRune lower-cases r for hashing (ASCII is handled by the caller).
func lowerRune(r rune) (rune, bool) {
	if unicode.IsUpper(r) {
		return unicode.ToLower(r), true
	}
	return r, false
}
