package deploy_test

import (
	"fmt"
	"strings"
)

// A reader for the subset of YAML that docker-compose.yml uses, so the
// tests need no YAML module: block mappings and sequences by indentation,
// flow sequences and mappings on one line, plain and quoted scalars,
// comments, anchors (&a), aliases (*a) and merge keys (<<: *a). Values are
// map[string]any, []any and string (null is nil). Anything else is an
// error naming the line, so the file stays inside the subset.

type yamlLine struct {
	num    int // 1-based, for errors
	indent int
	text   string // without indentation and comment
}

type yamlParser struct {
	lines   []yamlLine
	pos     int
	anchors map[string]any
}

func parseYAML(src string) (any, error) {
	p := &yamlParser{anchors: map[string]any{}}
	for i, raw := range strings.Split(src, "\n") {
		if strings.ContainsRune(raw, '\t') {
			return nil, fmt.Errorf("line %d: tab in indentation or value", i+1)
		}
		text := stripComment(raw)
		trimmed := strings.TrimLeft(text, " ")
		if strings.TrimSpace(trimmed) == "" {
			continue
		}
		p.lines = append(p.lines, yamlLine{num: i + 1, indent: len(text) - len(trimmed), text: strings.TrimRight(trimmed, " ")})
	}
	if len(p.lines) == 0 {
		return nil, nil
	}
	v, err := p.block(p.lines[0].indent)
	if err != nil {
		return nil, err
	}
	if p.pos < len(p.lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.pos].num)
	}
	return v, nil
}

// stripComment drops a # comment that is outside quotes and starts a line
// or follows a space.
func stripComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || s[i-1] == ' '):
			return s[:i]
		}
	}
	return s
}

// block reads the mapping or sequence whose lines are at indent.
func (p *yamlParser) block(indent int) (any, error) {
	l := p.lines[p.pos]
	if l.indent != indent {
		return nil, fmt.Errorf("line %d: indentation %d, want %d", l.num, l.indent, indent)
	}
	if l.text == "-" || strings.HasPrefix(l.text, "- ") {
		return p.sequence(indent)
	}
	return p.mapping(indent)
}

func (p *yamlParser) mapping(indent int) (any, error) {
	m := map[string]any{}
	var merges []map[string]any
	for p.pos < len(p.lines) {
		l := p.lines[p.pos]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, fmt.Errorf("line %d: unexpected indentation", l.num)
		}
		if strings.HasPrefix(l.text, "- ") {
			break
		}
		key, rest, ok := splitKey(l.text)
		if !ok {
			return nil, fmt.Errorf("line %d: want key: value, got %q", l.num, l.text)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", l.num, key)
		}
		p.pos++
		v, err := p.value(rest, indent, l.num, true)
		if err != nil {
			return nil, err
		}
		if key == "<<" {
			mm, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("line %d: merge key needs a mapping", l.num)
			}
			merges = append(merges, mm)
			continue
		}
		m[key] = v
	}
	for _, mm := range merges {
		for k, v := range mm {
			if _, set := m[k]; !set {
				m[k] = v
			}
		}
	}
	return m, nil
}

func (p *yamlParser) sequence(indent int) (any, error) {
	var s []any
	for p.pos < len(p.lines) {
		l := p.lines[p.pos]
		if l.indent != indent || !(l.text == "-" || strings.HasPrefix(l.text, "- ")) {
			if l.indent > indent {
				return nil, fmt.Errorf("line %d: unexpected indentation", l.num)
			}
			break
		}
		p.pos++
		rest := strings.TrimSpace(strings.TrimPrefix(l.text, "-"))
		if _, _, isMap := splitKey(rest); isMap && !strings.HasPrefix(rest, "\"") && !strings.HasPrefix(rest, "'") && !strings.HasPrefix(rest, "[") && !strings.HasPrefix(rest, "{") {
			return nil, fmt.Errorf("line %d: mappings inside sequences are outside the supported subset", l.num)
		}
		v, err := p.value(rest, indent, l.num, false)
		if err != nil {
			return nil, err
		}
		s = append(s, v)
	}
	return s, nil
}

// value reads what follows "key:" or "- ": an anchor, an alias, a flow
// collection, a scalar, or (when empty) the nested block on the next lines.
func (p *yamlParser) value(rest string, indent, num int, inMapping bool) (any, error) {
	anchor := ""
	if strings.HasPrefix(rest, "&") {
		name, after, _ := strings.Cut(rest[1:], " ")
		anchor, rest = name, strings.TrimSpace(after)
	}
	var v any
	var err error
	switch {
	case rest == "":
		if p.pos < len(p.lines) {
			next := p.lines[p.pos]
			switch {
			case next.indent > indent:
				v, err = p.block(next.indent)
			case inMapping && next.indent == indent && strings.HasPrefix(next.text, "- "):
				v, err = p.sequence(indent)
			}
		}
	case strings.HasPrefix(rest, "*"):
		a, ok := p.anchors[rest[1:]]
		if !ok {
			return nil, fmt.Errorf("line %d: unknown alias %s", num, rest)
		}
		v = a
	case strings.HasPrefix(rest, "[") || strings.HasPrefix(rest, "{"):
		f := &flowParser{s: rest}
		v, err = f.value()
		if err == nil {
			f.space()
			if f.i != len(f.s) {
				err = fmt.Errorf("trailing %q", f.s[f.i:])
			}
		}
	default:
		v, err = scalar(rest)
	}
	if err != nil {
		return nil, fmt.Errorf("line %d: %w", num, err)
	}
	if anchor != "" {
		p.anchors[anchor] = v
	}
	return v, nil
}

// splitKey splits "key: rest" or "key:".
func splitKey(s string) (key, rest string, ok bool) {
	if k, r, found := strings.Cut(s, ": "); found && !strings.ContainsAny(k, "\"'[]{}") {
		return k, strings.TrimSpace(r), true
	}
	if strings.HasSuffix(s, ":") && !strings.ContainsAny(s, " \"'") {
		return strings.TrimSuffix(s, ":"), "", true
	}
	return "", "", false
}

func scalar(s string) (any, error) {
	switch {
	case s == "~" || s == "null":
		return nil, nil
	case strings.HasPrefix(s, "\""):
		v, n, err := doubleQuoted(s)
		if err != nil {
			return nil, err
		}
		if n != len(s) {
			return nil, fmt.Errorf("trailing %q after a quoted string", s[n:])
		}
		return v, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return nil, fmt.Errorf("unterminated %q", s)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case strings.ContainsAny(s[:1], "&*!|>%@`"):
		return nil, fmt.Errorf("%q is outside the supported subset", s)
	}
	return s, nil
}

// doubleQuoted reads a "..." string at the start of s and returns it and
// the bytes it took.
func doubleQuoted(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			i++
			if i == len(s) {
				return "", 0, fmt.Errorf("unterminated %q", s)
			}
			switch e := s[i]; e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case '"', '\\', '/':
				b.WriteByte(e)
			default:
				return "", 0, fmt.Errorf("escape \\%c is outside the supported subset", e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, fmt.Errorf("unterminated %q", s)
}

// flowParser reads [a, "b"] and {k: v} on one line.
type flowParser struct {
	s string
	i int
}

func (f *flowParser) space() {
	for f.i < len(f.s) && f.s[f.i] == ' ' {
		f.i++
	}
}

func (f *flowParser) value() (any, error) {
	f.space()
	if f.i == len(f.s) {
		return nil, fmt.Errorf("unexpected end of %q", f.s)
	}
	switch f.s[f.i] {
	case '[':
		f.i++
		var out []any
		for {
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ']' {
				f.i++
				return out, nil
			}
			v, err := f.value()
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			if err := f.sep(']'); err != nil {
				return nil, err
			}
		}
	case '{':
		f.i++
		out := map[string]any{}
		for {
			f.space()
			if f.i < len(f.s) && f.s[f.i] == '}' {
				f.i++
				return out, nil
			}
			k, err := f.plain(":")
			if err != nil {
				return nil, err
			}
			if f.i == len(f.s) || f.s[f.i] != ':' {
				return nil, fmt.Errorf("want : after %q in %q", k, f.s)
			}
			f.i++
			v, err := f.value()
			if err != nil {
				return nil, err
			}
			out[k] = v
			if err := f.sep('}'); err != nil {
				return nil, err
			}
		}
	case '"':
		v, n, err := doubleQuoted(f.s[f.i:])
		if err != nil {
			return nil, err
		}
		f.i += n
		return v, nil
	}
	return f.plain(",]}")
}

// sep consumes a comma, or leaves the closing bracket for the caller.
func (f *flowParser) sep(closing byte) error {
	f.space()
	switch {
	case f.i < len(f.s) && f.s[f.i] == ',':
		f.i++
		return nil
	case f.i < len(f.s) && f.s[f.i] == closing:
		return nil
	}
	return fmt.Errorf("want , or %c in %q", closing, f.s)
}

func (f *flowParser) plain(stop string) (string, error) {
	f.space()
	start := f.i
	for f.i < len(f.s) && !strings.ContainsRune(stop, rune(f.s[f.i])) {
		f.i++
	}
	v := strings.TrimSpace(f.s[start:f.i])
	if v == "" {
		return "", fmt.Errorf("empty value in %q", f.s)
	}
	return v, nil
}
