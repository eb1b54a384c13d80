package vclock

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrBadContext is wrapped by every error [DecodeContext] returns.
var ErrBadContext = errors.New("vclock: malformed context")

// LWWContextPrefix starts every non-empty context of the lww policy. A
// context's prefix names its policy and format version, so contexts of other
// policies (such as a dotted version vector set) or later formats use
// different prefixes and are never mistaken for one another.
const LWWContextPrefix = "l1."

// counterLen is the length of the big-endian counter in a context payload.
const counterLen = 8

// ctxEncoding is URL-safe base64 without padding that rejects non-zero
// trailing bits, so each payload has exactly one encoding.
var ctxEncoding = base64.RawURLEncoding.Strict()

// EncodeContext returns the opaque context string a client hands back to
// show which version it read: "" for the zero Dot, otherwise
// [LWWContextPrefix] followed by the unpadded URL-safe base64 of the
// 8-byte big-endian Counter and the Actor bytes. The encoding is stable
// across releases and uses only the characters A-Z a-z 0-9 . _ -, so it
// needs no escaping in URLs, HTTP headers or JSON.
func EncodeContext(d Dot) string {
	if d.IsZero() {
		return ""
	}
	var rawBuf [64]byte
	raw := binary.BigEndian.AppendUint64(rawBuf[:0], d.Counter)
	raw = append(raw, d.Actor...)
	var outBuf [96]byte
	out := append(outBuf[:0], LWWContextPrefix...)
	out = ctxEncoding.AppendEncode(out, raw)
	return string(out)
}

// DecodeContext parses a context made by [EncodeContext]. The empty string
// decodes to the zero Dot and a nil error. Any other string that
// EncodeContext could not have produced — a wrong or missing prefix, bad
// base64, non-canonical base64, a payload shorter than 8 bytes, or a
// non-empty encoding of the zero Dot — yields an error wrapping
// [ErrBadContext]. So whenever DecodeContext(s) succeeds,
// EncodeContext of its result is s. DecodeContext never panics.
//
// A decoded context is untrusted input: see [HLC.Observe].
func DecodeContext(s string) (Dot, error) {
	if s == "" {
		return Dot{}, nil
	}
	payload, ok := strings.CutPrefix(s, LWWContextPrefix)
	if !ok {
		return Dot{}, fmt.Errorf("%w: unknown policy prefix", ErrBadContext)
	}
	// The base64 decoder skips CR and LF even in strict mode; reject them
	// so that every context has one spelling.
	if strings.ContainsAny(payload, "\r\n") {
		return Dot{}, fmt.Errorf("%w: bad base64", ErrBadContext)
	}
	var rawBuf [64]byte
	raw, err := ctxEncoding.AppendDecode(rawBuf[:0], []byte(payload))
	if err != nil {
		return Dot{}, fmt.Errorf("%w: bad base64", ErrBadContext)
	}
	if len(raw) < counterLen {
		return Dot{}, fmt.Errorf("%w: short payload", ErrBadContext)
	}
	d := Dot{
		Counter: binary.BigEndian.Uint64(raw),
		Actor:   string(raw[counterLen:]),
	}
	if d.IsZero() {
		return Dot{}, fmt.Errorf("%w: non-empty zero context", ErrBadContext)
	}
	return d, nil
}
