// Package wire encodes and decodes the messages of package subjects: the
// bytes on every quorumkv subject. subjects says what the messages are;
// this package is how they become bytes and back, and nothing here is
// part of the contract other implementations must follow beyond the
// encodings subjects documents.
//
// Requests and replies on the client and admin subjects go through
// [Marshal] and [Unmarshal]: msgpack maps by default, JSON when the message
// carries Content-Type: application/json ([IsJSONHeader]). Decoding is
// strict in both: trailing bytes, repeated fields, field names in another
// letter case, and text that is not valid Unicode are refused with a
// *subjects.Error of kind invalid, never rewritten, and no input panics or
// allocates beyond what its length allows ([CheckMsgpack]).
//
// The storage-node batches and replies (msgpack arrays) have hand-written
// encoders and decoders ([AppendNodeWrite], [UnmarshalNodeWriteReply], …)
// because msgpack's reflection costs more CPU than everything else a node
// does per item. They write exactly what the msgpack library writes for the
// same value and accept only what it accepts; the tests in this package
// prove both directions against the library and fuzz the decoders.
package wire

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
)

// IsJSON reports whether a message with this Content-Type header value is
// JSON; anything else is msgpack. As in HTTP, the media type is matched in
// any letter case and may carry parameters ("application/json;
// charset=utf-8").
func IsJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), subjects.JSONContentType)
}

// IsJSONHeader reports whether a message with headers h is JSON: whether
// it carries a Content-Type header, its name in any letter case, whose
// value IsJSON. nats.Header.Get looks up only the canonical spelling, so
// callers pass the raw header map.
func IsJSONHeader(h map[string][]string) bool {
	if vs, ok := h[subjects.ContentType]; ok && len(vs) > 0 && IsJSON(vs[0]) {
		return true
	}
	for k, vs := range h {
		if strings.EqualFold(k, subjects.ContentType) {
			for _, v := range vs {
				if IsJSON(v) {
					return true
				}
			}
		}
	}
	return false
}

// Unmarshal decodes data into v from JSON or msgpack. Malformed input is an
// *Error of kind invalid; it never panics.
func Unmarshal(isJSON bool, data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil { // defensive: a decoder bug must not kill a coordinator
			err = subjects.Errorf(subjects.KindInvalid, "malformed request: %v", r)
		}
	}()
	if !isJSON && unmarshalFast(data, v) {
		return nil
	}
	if isJSON {
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(v); err != nil {
			if e, ok := err.(*subjects.Error); ok {
				return e
			}
			return subjects.Errorf(subjects.KindInvalid, "malformed JSON: %v", err)
		}
		if dec.More() {
			return subjects.Errorf(subjects.KindInvalid, "malformed JSON: trailing data")
		}
		// encoding/json rewrote invalid text, matched names in any case
		// and let a repeated field win: refuse what it glossed over.
		return checkJSON(data, jsonFields(v))
	}
	if len(data) == 0 {
		return subjects.Errorf(subjects.KindInvalid, "empty request body")
	}
	if err := checkMsgpackMessage(data); err != nil {
		return subjects.Errorf(subjects.KindInvalid, "malformed msgpack: %v%s", err, jsonHint(data))
	}
	if err := msgpack.Unmarshal(data, v); err != nil {
		return subjects.Errorf(subjects.KindInvalid, "malformed msgpack: %v%s", err, jsonHint(data))
	}
	return nil
}

// jsonHint is advice for a msgpack body that looks like JSON.
func jsonHint(data []byte) string {
	if len(data) > 0 && data[0] == '{' {
		return "; the body looks like JSON: set the header Content-Type: application/json to send JSON"
	}
	return ""
}

// Marshal encodes v as JSON or msgpack.
func Marshal(isJSON bool, v any) ([]byte, error) {
	if isJSON {
		switch n := v.(type) { // a Node's JSON form is NodeList's element form
		case subjects.Node:
			v = wireNode(n)
		case *subjects.Node:
			if n != nil {
				v = wireNode(*n)
			}
		}
		return json.Marshal(v)
	}
	if b, ok := marshalFast(v); ok {
		return b, nil
	}
	return msgpack.Marshal(v)
}

// jsonNode is a node record in JSON as subjects.NodeList writes each of
// its elements: the epoch (a uint64 often above 2^53) as a decimal string.
// The outer Epoch hides the embedded one. subjects.Node has no JSON method
// of its own because programs embed it in their own JSON records.
type jsonNode struct {
	subjects.Node
	Epoch string `json:"epoch"`
}

func wireNode(n subjects.Node) jsonNode {
	return jsonNode{Node: n, Epoch: strconv.FormatUint(n.Epoch, 10)}
}
