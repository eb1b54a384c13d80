package subjects

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// The JSON forms of the messages whose JSON differs from their msgpack:
// keys and values are text in "key" and "value" when they are UTF-8 and
// base64 in "key_base64" and "value_base64" otherwise, and 64-bit
// identifiers (a node's epoch) are decimal strings. internal/wire decodes
// requests through these methods after its strictness checks, and knows
// the member names of each form.

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
	TTLMs          int64   `json:"ttl_ms,omitempty"`
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
		TTLMs:          j.TTLMs,
	}
	return nil
}

// MarshalJSON writes Key as "key" (or "key_base64" when not UTF-8) and Value
// likewise.
func (r Request) MarshalJSON() ([]byte, error) {
	j := jsonRequest{Consistency: r.Consistency, Context: r.Context, IdempotencyKey: r.IdempotencyKey, TimeoutMS: r.TimeoutMS, TTLMs: r.TTLMs}
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

// unmarshalKeyed decodes data into the JSON form j of a reply and returns
// its key, read from "key" or "key_base64" (plain and b64, members of j).
func unmarshalKeyed(data []byte, j any, plain, b64 **string) ([]byte, error) {
	if err := json.Unmarshal(data, j); err != nil {
		return nil, err
	}
	return pickString("key", *plain, *b64)
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
	ExpiresAtMs    int64    `json:"expires_at_ms,omitempty"`
	ReplicaCount   int      `json:"replica_count"`
	Consistency    string   `json:"consistency"`
}

// MarshalJSON writes "value" when the value is UTF-8 and "value_base64"
// otherwise; "siblings" likewise ("siblings_base64" when any is binary).
func (g GetReply) MarshalJSON() ([]byte, error) {
	j := jsonGetReply{Success: g.Success, Found: g.Found, Context: g.Context, ExpiresAtMs: g.ExpiresAtMs, ReplicaCount: g.ReplicaCount, Consistency: g.Consistency}
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
	key, err := unmarshalKeyed(data, &j, &j.Key, &j.KeyBase64)
	if err != nil {
		return err
	}
	value, err := pickString("value", j.Value, j.ValueBase64)
	if err != nil {
		return err
	}
	*g = GetReply{Success: j.Success, Key: string(key), Found: j.Found, Value: value, Context: j.Context, ExpiresAtMs: j.ExpiresAtMs, ReplicaCount: j.ReplicaCount, Consistency: j.Consistency}
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

type jsonWriteReply struct {
	Success        bool    `json:"success"`
	Key            *string `json:"key,omitempty"`
	KeyBase64      *string `json:"key_base64,omitempty"`
	Context        string  `json:"context"`
	IdempotencyKey string  `json:"idempotency_key"`
	IsDuplicate    bool    `json:"is_duplicate"`
	ReplicaCount   int     `json:"replica_count"`
	Consistency    string  `json:"consistency"`
}

// MarshalJSON writes Key as "key" when it is UTF-8 and as "key_base64"
// otherwise, as GetReply does.
func (w WriteReply) MarshalJSON() ([]byte, error) {
	j := jsonWriteReply{Success: w.Success, Context: w.Context, IdempotencyKey: w.IdempotencyKey, IsDuplicate: w.IsDuplicate, ReplicaCount: w.ReplicaCount, Consistency: w.Consistency}
	j.Key, j.KeyBase64 = splitString([]byte(w.Key))
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (w *WriteReply) UnmarshalJSON(data []byte) error {
	var j jsonWriteReply
	key, err := unmarshalKeyed(data, &j, &j.Key, &j.KeyBase64)
	if err != nil {
		return err
	}
	*w = WriteReply{Success: j.Success, Key: string(key), Context: j.Context, IdempotencyKey: j.IdempotencyKey, IsDuplicate: j.IsDuplicate, ReplicaCount: j.ReplicaCount, Consistency: j.Consistency}
	return nil
}

// jsonUint64 is a 64-bit identifier in JSON: written as a decimal string,
// because JSON numbers beyond 2^53 lose precision in JavaScript and other
// float64 readers; read from a string or a number.
type jsonUint64 uint64

func (u jsonUint64) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, strconv.FormatUint(uint64(u), 10)), nil
}

func (u *jsonUint64) UnmarshalJSON(data []byte) error {
	s := string(data)
	if s == "null" {
		return nil
	}
	if unq, err := strconv.Unquote(s); err == nil {
		s = unq
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return Errorf(KindInvalid, "%s is not an unsigned 64-bit integer (a decimal string or a number)", data)
	}
	*u = jsonUint64(v)
	return nil
}

// jsonNodeRequest is NodeRequest's JSON form.
type jsonNodeRequest struct {
	NodeID       string          `json:"node_id"`
	VirtualNodes int             `json:"virtual_nodes,omitempty"`
	Epoch        jsonUint64      `json:"epoch,omitempty"`
	Protocol     int             `json:"protocol,omitempty"`
	Hold         bool            `json:"hold,omitempty"`
	Transfer     *TransferStatus `json:"transfer,omitempty"`
	Force        bool            `json:"force,omitempty"`
}

// MarshalJSON writes Epoch as a decimal string.
func (n NodeRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(jsonNodeRequest{NodeID: n.NodeID, VirtualNodes: n.VirtualNodes, Epoch: jsonUint64(n.Epoch),
		Protocol: n.Protocol, Hold: n.Hold, Transfer: n.Transfer, Force: n.Force})
}

// UnmarshalJSON reads epoch as a decimal string or a number.
func (n *NodeRequest) UnmarshalJSON(data []byte) error {
	var j jsonNodeRequest
	if err := json.Unmarshal(data, &j); err != nil {
		if e, ok := err.(*Error); ok {
			return Errorf(KindInvalid, "epoch: %s", e.Message)
		}
		return Errorf(KindInvalid, "malformed JSON: %v", err)
	}
	*n = NodeRequest{NodeID: j.NodeID, VirtualNodes: j.VirtualNodes, Epoch: uint64(j.Epoch),
		Protocol: j.Protocol, Hold: j.Hold, Transfer: j.Transfer, Force: j.Force}
	return nil
}

// jsonNode is a node record on the wire in JSON: its epoch (a uint64 that
// is often above 2^53) as a decimal string. The outer Epoch hides the
// embedded one; every other field is the record's own. (The metadata
// store's own JSON encoding of a Node is unchanged.)
type jsonNode struct {
	Node
	Epoch string `json:"epoch"`
}

func wireNode(n Node) jsonNode { return jsonNode{Node: n, Epoch: strconv.FormatUint(n.Epoch, 10)} }

// MarshalJSON writes each node's epoch as a decimal string.
func (l NodeList) MarshalJSON() ([]byte, error) {
	j := struct {
		Nodes            []jsonNode `json:"nodes"`
		PlacementVersion uint64     `json:"placement_version,omitempty"`
		Partitions       int        `json:"partitions,omitempty"`
	}{Nodes: make([]jsonNode, 0, len(l.Nodes)), PlacementVersion: l.PlacementVersion, Partitions: l.Partitions}
	for _, n := range l.Nodes {
		j.Nodes = append(j.Nodes, wireNode(n))
	}
	return json.Marshal(j)
}
