package wire

import (
	"reflect"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/quorumkv/quorumkv/subjects"
)

// encoding/json accepts, and silently rewrites or picks between, input
// that two readers could understand differently: invalid UTF-8 and lone
// surrogate escapes become U+FFFD (so two different keys become one), a
// field name matches in any letter case ("KEY" is "key"), and of a
// duplicated field the last wins. checkJSON refuses all of these before a
// request is decoded, so what a coordinator acts on is exactly what the
// client sent.

// maxJSONDepth bounds nesting in a JSON request; quorumkv's requests are
// flat objects.
const maxJSONDepth = 64

// checkJSON walks data, which encoding/json has already accepted as one
// JSON value, and refuses: a string (member name or value, at any depth)
// that is not valid UTF-8 or holds a lone surrogate escape; a member name
// repeated in one object; and a top-level member name that is not one of
// fields but equals one when letter case is ignored. It allocates only
// for member names.
func checkJSON(data []byte, fields []string) error {
	s := jsonScanner{b: data, fields: fields}
	s.value(0, "")
	s.space()
	if s.err == nil && s.i != len(s.b) {
		s.err = subjects.Errorf(subjects.KindInvalid, "malformed JSON: trailing data after the request object")
	}
	if s.err != nil {
		return s.err
	}
	return nil
}

type jsonScanner struct {
	b      []byte
	i      int
	fields []string
	err    *subjects.Error
}

func (s *jsonScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) failf(format string, args ...any) {
	if s.err == nil {
		s.err = subjects.Errorf(subjects.KindInvalid, format, args...)
	}
	s.i = len(s.b)
}

// value scans one value; member is the top-level field it belongs to ("" at
// the top), for messages.
func (s *jsonScanner) value(depth int, member string) {
	if depth > maxJSONDepth {
		s.failf("malformed JSON: nested deeper than %d", maxJSONDepth)
		return
	}
	s.space()
	if s.i >= len(s.b) {
		s.failf("malformed JSON: unexpected end")
		return
	}
	switch s.b[s.i] {
	case '{':
		s.i++
		s.object(depth, member)
	case '[':
		s.i++
		if s.space(); s.skipByte(']') {
			return
		}
		for s.err == nil && s.i < len(s.b) {
			s.value(depth+1, member)
			if !s.more(']') {
				return
			}
		}
	case '"':
		s.str(member, false)
	default: // number, true, false, null: encoding/json has checked them
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return
			}
			s.i++
		}
	}
}

func (s *jsonScanner) object(depth int, member string) {
	var seen []string // objects here have a handful of members
	if s.space(); s.skipByte('}') {
		return
	}
	for s.err == nil && s.i < len(s.b) {
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			s.failf("malformed JSON: expected a field name at byte %d", s.i)
			return
		}
		name := s.str(member, true)
		if s.err != nil {
			return
		}
		for _, n := range seen {
			if n == name {
				s.failf("field %q appears more than once; send each field once", name)
				return
			}
		}
		seen = append(seen, name)
		if depth == 0 {
			if err := checkFieldName(name, s.fields); err != nil {
				s.err, s.i = err, len(s.b)
				return
			}
		}
		if s.space(); !s.skipByte(':') {
			s.failf("malformed JSON: expected : at byte %d", s.i)
			return
		}
		m := member
		if depth == 0 {
			m = name
		}
		s.value(depth+1, m)
		if !s.more('}') {
			return
		}
	}
}

// skipByte passes over c if it is next.
func (s *jsonScanner) skipByte(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// more reads what follows an array element or object member: true after a
// comma, false after close (the end) or anything else (an error).
func (s *jsonScanner) more(close byte) bool {
	s.space()
	if s.skipByte(',') {
		return true
	}
	if !s.skipByte(close) {
		s.failf("malformed JSON: expected , or %c at byte %d", close, s.i)
	}
	return false
}

// checkFieldName refuses a name that encoding/json would match to one of
// fields only by ignoring letter case.
func checkFieldName(name string, fields []string) *subjects.Error {
	for _, f := range fields {
		if f == name {
			return nil
		}
	}
	for _, f := range fields {
		if strings.EqualFold(f, name) {
			return subjects.Errorf(subjects.KindInvalid, "unknown field %q: field names are case-sensitive; use %q", name, f)
		}
	}
	return nil
}

// str scans a string starting at its opening quote and checks that it is
// Unicode text. It returns the decoded string only when decode is set (for
// member names).
func (s *jsonScanner) str(member string, decode bool) string {
	s.i++ // the opening quote
	start := s.i
	var out []byte
	plain := start // start of the bytes not yet copied to out
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw := s.b[start:s.i]
			s.i++
			if !utf8.Valid(raw) {
				s.badText(member, decode)
				return ""
			}
			if !decode {
				return ""
			}
			if out == nil {
				return string(raw)
			}
			return string(append(out, s.b[plain:s.i-1]...))
		case c == '\\':
			if decode {
				out = append(out, s.b[plain:s.i]...)
			}
			r, n := s.escape()
			if s.err != nil {
				return ""
			}
			if r < 0 {
				s.badText(member, decode)
				return ""
			}
			if decode {
				out = utf8.AppendRune(out, r)
			}
			s.i += n
			plain = s.i
		default:
			s.i++
		}
	}
	s.failf("malformed JSON: unterminated string")
	return ""
}

// escape reads the escape at s.i: its rune and length, or -1 for a lone
// surrogate.
func (s *jsonScanner) escape() (rune, int) {
	if s.i+1 >= len(s.b) {
		s.failf("malformed JSON: truncated escape")
		return 0, 0
	}
	switch s.b[s.i+1] {
	case '"', '\\', '/':
		return rune(s.b[s.i+1]), 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
	default:
		s.failf("malformed JSON: bad escape at byte %d", s.i)
		return 0, 0
	}
	r := hex4(s.b, s.i+2)
	switch {
	case r < 0:
		s.failf("malformed JSON: bad \\u escape at byte %d", s.i)
		return 0, 0
	case r >= 0xdc00 && r <= 0xdfff: // a low surrogate first
		return -1, 0
	case r >= 0xd800 && r <= 0xdbff: // a high surrogate: a low one must follow
		if s.i+7 < len(s.b) && s.b[s.i+6] == '\\' && s.b[s.i+7] == 'u' {
			lo := hex4(s.b, s.i+8)
			if lo >= 0xdc00 && lo <= 0xdfff {
				return 0x10000 + (r-0xd800)<<10 + (lo - 0xdc00), 12
			}
		}
		return -1, 0
	}
	return r, 6
}

// hex4 reads four hex digits at b[i:], or -1.
func hex4(b []byte, i int) rune {
	if i+4 > len(b) {
		return -1
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

func (s *jsonScanner) badText(member string, name bool) {
	const why = "is not valid Unicode text (invalid UTF-8, or a lone surrogate escape such as \\ud800)"
	switch {
	case name:
		s.failf("a field name %s", why)
	case member == "key" || member == "value":
		s.failf("%s %s; JSON strings must be text: send binary data base64-encoded in %s_base64", member, why, member)
	case member == "":
		s.failf("the request %s", why)
	default:
		s.failf("field %q %s", member, why)
	}
}

// customJSONFields lists, for each message type with a JSON form of its
// own (the MarshalJSON and UnmarshalJSON methods in subjects/json.go), the
// members of that form in its order. TestCustomJSONFields checks each list
// against what the type's MarshalJSON writes.
var customJSONFields = map[reflect.Type][]string{
	reflect.TypeFor[subjects.Request]():     {"key", "key_base64", "value", "value_base64", "consistency", "context", "idempotency_key", "timeout_ms", "ttl_ms"},
	reflect.TypeFor[subjects.GetReply]():    {"success", "key", "key_base64", "found", "value", "value_base64", "context", "siblings", "siblings_base64", "expires_at_ms", "replica_count", "consistency"},
	reflect.TypeFor[subjects.WriteReply]():  {"success", "key", "key_base64", "context", "idempotency_key", "is_duplicate", "replica_count", "consistency"},
	reflect.TypeFor[subjects.NodeRequest](): {"node_id", "virtual_nodes", "epoch", "protocol", "hold", "transfer", "force"},
}

var jsonFieldCache sync.Map // reflect.Type → []string

// jsonFields lists the top-level JSON member names v decodes, or nil when
// v is not a struct.
func jsonFields(v any) []string {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	if f, ok := jsonFieldCache.Load(t); ok {
		return f.([]string)
	}
	if names, ok := customJSONFields[t]; ok {
		return names
	}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names = append(names, name)
	}
	jsonFieldCache.Store(t, names)
	return names
}
