package subjects

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// IsJSON reports whether a message with this Content-Type header value is
// JSON; anything else is msgpack.
func IsJSON(contentType string) bool {
	return contentType == JSONContentType || bytes.HasPrefix([]byte(contentType), []byte(JSONContentType+";"))
}

// Unmarshal decodes data into v from JSON or msgpack. Malformed input is an
// *Error of kind invalid; it never panics.
func Unmarshal(isJSON bool, data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil { // defensive: a decoder bug must not kill a coordinator
			err = Errorf(KindInvalid, "malformed request: %v", r)
		}
	}()
	if !isJSON && unmarshalFast(data, v) {
		return nil
	}
	if isJSON {
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(v); err != nil {
			if e, ok := err.(*Error); ok {
				return e
			}
			return Errorf(KindInvalid, "malformed JSON: %v", err)
		}
		if dec.More() {
			return Errorf(KindInvalid, "malformed JSON: trailing data")
		}
		return nil
	}
	if len(data) == 0 {
		return Errorf(KindInvalid, "empty request body")
	}
	if err := DecodeMsgpack(data, v); err != nil {
		return Errorf(KindInvalid, "malformed msgpack: %v", err)
	}
	return nil
}

// Marshal encodes v as JSON or msgpack.
func Marshal(isJSON bool, v any) ([]byte, error) {
	if isJSON {
		return json.Marshal(v)
	}
	if b, ok := marshalFast(v); ok {
		return b, nil
	}
	return msgpack.Marshal(v)
}

// jsonRequest is Request's JSON form.
type jsonRequest struct {
	Key            *string `json:"key"`
	KeyBase64      *string `json:"key_base64"`
	Value          *string `json:"value"`
	ValueBase64    *string `json:"value_base64"`
	Consistency    string  `json:"consistency"`
	Context        string  `json:"context"`
	IdempotencyKey string  `json:"idempotency_key"`
	TimeoutMS      int64   `json:"timeout_ms"`
}

// UnmarshalJSON reads "key" or "key_base64" and "value" or "value_base64".
func (r *Request) UnmarshalJSON(data []byte) error {
	var j jsonRequest
	if err := json.Unmarshal(data, &j); err != nil {
		return Errorf(KindInvalid, "malformed JSON: %v", err)
	}
	key, err := pickString("key", j.Key, j.KeyBase64)
	if err != nil {
		return err
	}
	value, err := pickString("value", j.Value, j.ValueBase64)
	if err != nil {
		return err
	}
	*r = Request{
		Key:            string(key),
		Value:          value,
		Consistency:    j.Consistency,
		Context:        j.Context,
		IdempotencyKey: j.IdempotencyKey,
		TimeoutMS:      j.TimeoutMS,
	}
	return nil
}

// MarshalJSON writes Key as "key" (or "key_base64" when not UTF-8) and Value
// likewise.
func (r Request) MarshalJSON() ([]byte, error) {
	j := jsonRequest{Consistency: r.Consistency, Context: r.Context, IdempotencyKey: r.IdempotencyKey, TimeoutMS: r.TimeoutMS}
	j.Key, j.KeyBase64 = splitString([]byte(r.Key))
	if r.Value != nil {
		j.Value, j.ValueBase64 = splitString(r.Value)
	}
	return json.Marshal(j)
}

func pickString(name string, plain, b64 *string) ([]byte, error) {
	switch {
	case plain != nil && b64 != nil:
		return nil, Errorf(KindInvalid, "send %s or %s_base64, not both", name, name)
	case b64 != nil:
		b, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return nil, Errorf(KindInvalid, "%s_base64 is not standard base64: %v", name, err)
		}
		return b, nil
	case plain != nil:
		return []byte(*plain), nil
	}
	return nil, nil
}

// splitString returns b as a plain string when it is valid UTF-8, else as
// base64.
func splitString(b []byte) (plain, b64 *string) {
	s := string(b)
	if utf8.Valid(b) {
		return &s, nil
	}
	e := base64.StdEncoding.EncodeToString(b)
	return nil, &e
}

type jsonGetReply struct {
	Success        bool     `json:"success"`
	Key            *string  `json:"key,omitempty"`
	KeyBase64      *string  `json:"key_base64,omitempty"`
	Found          bool     `json:"found"`
	Value          *string  `json:"value,omitempty"`
	ValueBase64    *string  `json:"value_base64,omitempty"`
	Context        string   `json:"context"`
	Siblings       []string `json:"siblings,omitempty"`
	SiblingsBase64 []string `json:"siblings_base64,omitempty"`
	ReplicaCount   int      `json:"replica_count"`
	Consistency    string   `json:"consistency"`
}

// MarshalJSON writes "value" when the value is UTF-8 and "value_base64"
// otherwise; "siblings" likewise ("siblings_base64" when any is binary).
func (g GetReply) MarshalJSON() ([]byte, error) {
	j := jsonGetReply{Success: g.Success, Found: g.Found, Context: g.Context, ReplicaCount: g.ReplicaCount, Consistency: g.Consistency}
	j.Key, j.KeyBase64 = splitString([]byte(g.Key))
	if g.Found {
		j.Value, j.ValueBase64 = splitString(g.Value)
	}
	if len(g.Siblings) > 1 {
		allText := true
		for _, s := range g.Siblings {
			allText = allText && utf8.Valid(s)
		}
		for _, s := range g.Siblings {
			if allText {
				j.Siblings = append(j.Siblings, string(s))
			} else {
				j.SiblingsBase64 = append(j.SiblingsBase64, base64.StdEncoding.EncodeToString(s))
			}
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (g *GetReply) UnmarshalJSON(data []byte) error {
	var j jsonGetReply
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	key, err := pickString("key", j.Key, j.KeyBase64)
	if err != nil {
		return err
	}
	value, err := pickString("value", j.Value, j.ValueBase64)
	if err != nil {
		return err
	}
	*g = GetReply{Success: j.Success, Key: string(key), Found: j.Found, Value: value, Context: j.Context, ReplicaCount: j.ReplicaCount, Consistency: j.Consistency}
	for _, s := range j.Siblings {
		g.Siblings = append(g.Siblings, []byte(s))
	}
	for _, s := range j.SiblingsBase64 {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("siblings_base64: %w", err)
		}
		g.Siblings = append(g.Siblings, b)
	}
	return nil
}
