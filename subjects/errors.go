package subjects

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// Code is an error class, numbered like the HTTP status it resembles. It
// travels in the Nats-Service-Error-Code header (nats.go micro). ONLY APPEND
// TO THIS LIST.
type Code int

const (
	CodeInvalid     Code = 400 // the request is malformed or breaks a rule
	CodeNotFound    Code = 404 // no such tenant (or node); a missing key is not an error
	CodeConflict    Code = 409 // stale version, request in progress, too many siblings, admin refusals, idempotency key reused
	CodeTooLarge    Code = 413 // key or value over its limit
	CodeOverloaded  Code = 429 // the coordinator or node is at its in-flight limit
	CodeInternal    Code = 500 // a bug or an unexpected failure; logged by the server
	CodeUnavailable Code = 503 // the consistency level (or a dependency) is not reachable
	CodeTimeout     Code = 504 // a dependency did not answer in time
)

// Kinds refine a code; they travel in the KindHeader header and as the
// first word of the description. ONLY APPEND TO THIS LIST.
const (
	KindInvalid         = "invalid"
	KindNoSuchTenant    = "no_such_tenant"
	KindNoSuchNode      = "no_such_node"
	KindExists          = "exists"
	KindConflict        = "conflict"
	KindInProgress      = "in_progress"
	KindTooManySiblings = "too_many_siblings"
	KindTooLarge        = "too_large"
	KindOverloaded      = "overloaded"
	KindInternal        = "internal"
	KindUnavailable     = "unavailable"
	KindTimeout         = "timeout"

	// 409s of the admin API, each its own kind so a client can tell them
	// apart without parsing the message.
	KindTenantNotEmpty = "tenant_not_empty" // tenant.delete without force: a node still holds a live key
	KindNodeActive     = "node_active"      // node.remove of an active node: drain it first
	KindTooFewNodes    = "too_few_nodes"    // node.drain would leave fewer active nodes than a tenant's RF
	KindNodeLive       = "node_live"        // node.remove of a node whose process still answers: stop it first
	KindNodeRemoved    = "node_removed"     // node.register of a removed id: an operator must node.join it first
	// KindIdempotencyMismatch: the idempotency key was used before for a
	// different request (another op, value or context), 409.
	KindIdempotencyMismatch = "idempotency_mismatch"

	// Node fencing (node protocol 2). Neither reaches clients as such: a
	// coordinator reloads its map and retries, and answers 503
	// unavailable when it runs out of retries.
	//
	// KindNotOwner: a write or read item refused, nothing applied: the
	// sender's map version is below the version in which the item's
	// partition last changed in the node's map (see NotOwnerError). It
	// travels per item, as NodeWriteResult.Kind and as the first word of
	// the item's Err (the only signal in a NodeReadResult).
	KindNotOwner = "not_owner"
	// KindMapBehind: a partition scan names a map version the source has
	// not loaded yet; it reloads, and the receiver retries shortly.
	KindMapBehind = "map_behind"

	// KindRebuilding: a read item of a partition that a node whose data
	// directory is new, wiped or stale (D7) has not pulled back from its
	// co-owners yet. Per item, as the first word of NodeReadResult.Err;
	// a coordinator counts it as no answer, exactly like a node that is
	// down (503-class), never as "not found".
	KindRebuilding = "rebuilding"
)

// NotOwnerError is the Err text of an item refused with KindNotOwner:
// partition p changed at map version since in the node's map, and the
// request carried version have.
func NotOwnerError(p uint32, since, have uint64) string {
	return fmt.Sprintf("%s: partition %d changed at map version %d; request has %d", KindNotOwner, p, since, have)
}

// ItemKind is the kind of a node item's failure: kind when it is set (a
// NodeWriteResult's Kind), else the first word of errText when that is a
// kind only items carry (KindNotOwner), else "".
func ItemKind(kind, errText string) string {
	if kind != "" {
		return kind
	}
	if k, _, ok := strings.Cut(errText, ": "); ok && k == KindNotOwner {
		return k
	}
	return ""
}

// Error headers. ErrorHeader and ErrorCodeHeader are nats.go micro's.
const (
	ErrorHeader     = "Nats-Service-Error"
	ErrorCodeHeader = "Nats-Service-Error-Code"
	KindHeader      = "Kv-Error-Kind"
	ContentType     = "Content-Type"
	JSONContentType = "application/json"
)

// Error is a failure that crosses the wire. Its Description is
// "<kind>: <message>".
type Error struct {
	Code    Code   `json:"code" msgpack:"code"`
	Kind    string `json:"kind" msgpack:"kind"`
	Message string `json:"message" msgpack:"message"`
}

func (e *Error) Error() string { return e.Kind + ": " + e.Message }

// Description is the text for the Nats-Service-Error header.
func (e *Error) Description() string { return e.Kind + ": " + e.Message }

// Is matches another *Error with the same Kind (or, when the target has no
// Kind, the same Code), so errors.Is(err, &Error{Kind: KindInProgress}) works.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	if t.Kind != "" {
		return t.Kind == e.Kind
	}
	return t.Code == e.Code
}

// Errorf builds an *Error of kind with a formatted message. The code is the
// kind's standard code.
func Errorf(kind string, format string, args ...any) *Error {
	return &Error{Code: KindCode(kind), Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// KindCode is the standard code of kind; unknown kinds are internal.
func KindCode(kind string) Code {
	switch kind {
	case KindInvalid:
		return CodeInvalid
	case KindNoSuchTenant, KindNoSuchNode:
		return CodeNotFound
	case KindExists, KindConflict, KindInProgress, KindTooManySiblings,
		KindTenantNotEmpty, KindNodeActive, KindTooFewNodes, KindNodeLive, KindNodeRemoved,
		KindIdempotencyMismatch, KindNotOwner:
		return CodeConflict
	case KindTooLarge:
		return CodeTooLarge
	case KindOverloaded:
		return CodeOverloaded
	case KindUnavailable, KindMapBehind, KindRebuilding:
		return CodeUnavailable
	case KindTimeout:
		return CodeTimeout
	default:
		return CodeInternal
	}
}

// CodeKind is the default kind of code, for errors from servers that sent
// only a code.
func CodeKind(code Code) string {
	switch code {
	case CodeInvalid:
		return KindInvalid
	case CodeNotFound:
		return KindNoSuchTenant
	case CodeConflict:
		return KindConflict
	case CodeTooLarge:
		return KindTooLarge
	case CodeOverloaded:
		return KindOverloaded
	case CodeUnavailable:
		return KindUnavailable
	case CodeTimeout:
		return KindTimeout
	default:
		return KindInternal
	}
}

// Headers returns the headers that carry e on a reply, the nats.go micro
// way: ErrorHeader holds e.Description(), ErrorCodeHeader the code in
// decimal, and KindHeader the kind. [ErrorFromHeaders] reads them back.
// Every server answers errors with these headers, whatever the body; the
// returned header is new, and the caller may add to it.
func (e *Error) Headers() nats.Header {
	return nats.Header{
		ErrorHeader:     []string{e.Description()},
		ErrorCodeHeader: []string{strconv.Itoa(int(e.Code))},
		KindHeader:      []string{e.Kind},
	}
}

// ErrorFromHeaders rebuilds the *Error carried by a reply's headers, or nil
// when the reply is not an error.
func ErrorFromHeaders(get func(string) string) *Error {
	codeText := get(ErrorCodeHeader)
	desc := get(ErrorHeader)
	if codeText == "" && desc == "" {
		return nil
	}
	code, err := strconv.Atoi(codeText)
	if err != nil {
		code = int(CodeInternal)
	}
	kind := get(KindHeader)
	msg := desc
	if kind == "" {
		kind = CodeKind(Code(code))
	}
	if k, m, ok := strings.Cut(desc, ": "); ok && k == kind {
		msg = m
	}
	return &Error{Code: Code(code), Kind: kind, Message: msg}
}
