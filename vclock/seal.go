package vclock

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrUnauthenticContext is wrapped by every error [ContextKeys.Open]
// returns for a context that does not verify: not issued by this store
// (forged, altered, in a retired format, or sealed under a key no longer
// accepted) or issued for another tenant.
var ErrUnauthenticContext = errors.New("context was not issued by this store")

// Authenticated context prefixes. A sealed context is its prefix followed
// by the unpadded URL-safe base64 of the unsealed payload (what follows
// [LWWContextPrefix] or [DVVContextPrefix], decoded) and a [ContextTagLen]
// byte tag. The unauthenticated "l1."/"d1." forms never reach clients.
const (
	SealedLWWPrefix = "l2."
	SealedDVVPrefix = "d2."
)

// ContextTagLen is the length of a sealed context's tag: HMAC-SHA256
// truncated to 128 bits.
const ContextTagLen = 16

// MinContextSecret is the shortest secret [NewContextKeys] accepts.
const MinContextSecret = 32

// sealDomain separates these tags from any other use of the same secret.
const sealDomain = "quorumkv/context/v2\x00"

// ContextKeys seals the contexts a coordinator issues and opens the ones
// clients hand back. A tag is an HMAC-SHA256 over the policy, the tenant
// id and the context's payload, so a context cannot be forged, altered,
// moved to another tenant or relabelled as the other policy. It seals with
// the current secret and opens contexts sealed with the current or the
// previous one, which lets operators rotate the secret across coordinators
// (see docs/OPERATIONS.md). It is pure, deterministic (sealing the same
// context twice yields the same string) and safe for concurrent use.
type ContextKeys struct {
	current  []byte
	previous []byte // nil: none
}

// NewContextKeys returns keys that seal with current and also open
// contexts sealed with previous (nil or empty: none). Each secret must be
// at least [MinContextSecret] bytes. The secrets are copied.
func NewContextKeys(current, previous []byte) (*ContextKeys, error) {
	if len(current) < MinContextSecret {
		return nil, fmt.Errorf("vclock: context secret is %d bytes; at least %d are needed", len(current), MinContextSecret)
	}
	if len(previous) > 0 && len(previous) < MinContextSecret {
		return nil, fmt.Errorf("vclock: previous context secret is %d bytes; at least %d are needed", len(previous), MinContextSecret)
	}
	k := &ContextKeys{current: append([]byte(nil), current...)}
	if len(previous) > 0 {
		k.previous = append([]byte(nil), previous...)
	}
	return k, nil
}

// Seal turns a context made by [EncodeContext] or [EncodeDVVContext] into
// the authenticated form issued for tenant. The empty context stays empty:
// it names no version, so there is nothing to forge. Seal fails only on a
// string neither encoder produces.
func (k *ContextKeys) Seal(tenant, ctx string) (string, error) {
	if ctx == "" {
		return "", nil
	}
	policy, sealedPrefix, payload, err := splitPlain(ctx)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(payload, "\r\n") {
		return "", fmt.Errorf("%w: bad base64", ErrBadContext)
	}
	var rawBuf [128]byte
	raw, err := ctxEncoding.AppendDecode(rawBuf[:0], []byte(payload))
	if err != nil {
		return "", fmt.Errorf("%w: bad base64", ErrBadContext)
	}
	if len(raw) == 0 {
		return "", fmt.Errorf("%w: empty payload", ErrBadContext)
	}
	raw = k.tag(k.current, policy, tenant, raw, raw)
	out := make([]byte, 0, len(sealedPrefix)+ctxEncoding.EncodedLen(len(raw)))
	out = append(out, sealedPrefix...)
	out = ctxEncoding.AppendEncode(out, raw)
	return string(out), nil
}

// Open verifies a context sealed by Seal for tenant and returns the plain
// context it carries, for [DecodeContext] or [DecodeDVVContext]. The empty
// string opens to "". Every string Seal (under the current or the previous
// secret) did not produce for this tenant yields an error wrapping
// [ErrUnauthenticContext]; a context whose tag verifies but whose payload
// is malformed cannot occur unless the secret leaked, and is reported the
// same way. Open never panics.
func (k *ContextKeys) Open(tenant, sealed string) (string, error) {
	if sealed == "" {
		return "", nil
	}
	var policy byte
	var plainPrefix, payload string
	switch {
	case strings.HasPrefix(sealed, SealedLWWPrefix):
		policy, plainPrefix, payload = 'l', LWWContextPrefix, sealed[len(SealedLWWPrefix):]
	case strings.HasPrefix(sealed, SealedDVVPrefix):
		policy, plainPrefix, payload = 'd', DVVContextPrefix, sealed[len(SealedDVVPrefix):]
	case strings.HasPrefix(sealed, LWWContextPrefix), strings.HasPrefix(sealed, DVVContextPrefix):
		return "", fmt.Errorf("%w: %q contexts are no longer accepted (read the key again for a current context)", ErrUnauthenticContext, sealed[:3])
	default:
		return "", fmt.Errorf("%w: unknown format", ErrUnauthenticContext)
	}
	// The base64 decoder skips CR and LF even in strict mode.
	if strings.ContainsAny(payload, "\r\n") {
		return "", fmt.Errorf("%w: bad encoding", ErrUnauthenticContext)
	}
	raw, err := ctxEncoding.DecodeString(payload)
	if err != nil || len(raw) < ContextTagLen {
		return "", fmt.Errorf("%w: bad encoding", ErrUnauthenticContext)
	}
	body, tag := raw[:len(raw)-ContextTagLen], raw[len(raw)-ContextTagLen:]
	if len(body) == 0 || !k.verify(policy, tenant, body, tag) {
		return "", fmt.Errorf("%w: it does not verify for this tenant", ErrUnauthenticContext)
	}
	out := make([]byte, 0, len(plainPrefix)+ctxEncoding.EncodedLen(len(body)))
	out = append(out, plainPrefix...)
	out = ctxEncoding.AppendEncode(out, body)
	return string(out), nil
}

// PolicyOf names the policy a context (sealed or plain) is for: "lww",
// "siblings", or "" when its prefix names neither. It checks nothing else.
func PolicyOf(ctx string) string {
	switch {
	case strings.HasPrefix(ctx, SealedLWWPrefix), strings.HasPrefix(ctx, LWWContextPrefix):
		return "lww"
	case strings.HasPrefix(ctx, SealedDVVPrefix), strings.HasPrefix(ctx, DVVContextPrefix):
		return "siblings"
	}
	return ""
}

// InspectContext returns the plain context a sealed one carries WITHOUT
// verifying it, for tests and debugging tools that want to look inside.
// Never act on its result: only [ContextKeys.Open] says a context is
// genuine.
func InspectContext(sealed string) (string, error) {
	var plainPrefix, payload string
	switch {
	case strings.HasPrefix(sealed, SealedLWWPrefix):
		plainPrefix, payload = LWWContextPrefix, sealed[len(SealedLWWPrefix):]
	case strings.HasPrefix(sealed, SealedDVVPrefix):
		plainPrefix, payload = DVVContextPrefix, sealed[len(SealedDVVPrefix):]
	default:
		return "", fmt.Errorf("%w: not a sealed context", ErrBadContext)
	}
	raw, err := ctxEncoding.DecodeString(payload)
	if err != nil || len(raw) <= ContextTagLen {
		return "", fmt.Errorf("%w: bad encoding", ErrBadContext)
	}
	return plainPrefix + ctxEncoding.EncodeToString(raw[:len(raw)-ContextTagLen]), nil
}

// splitPlain splits a plain context into its policy byte, the prefix of
// its sealed form and its base64 payload.
func splitPlain(ctx string) (policy byte, sealedPrefix, payload string, err error) {
	switch {
	case strings.HasPrefix(ctx, LWWContextPrefix):
		return 'l', SealedLWWPrefix, ctx[len(LWWContextPrefix):], nil
	case strings.HasPrefix(ctx, DVVContextPrefix):
		return 'd', SealedDVVPrefix, ctx[len(DVVContextPrefix):], nil
	}
	return 0, "", "", fmt.Errorf("%w: unknown policy prefix", ErrBadContext)
}

// tag appends to dst the truncated HMAC of (policy, tenant, body) under
// secret. The tenant is length-prefixed, so no (tenant, body) pair is
// another's with the boundary moved.
func (k *ContextKeys) tag(secret []byte, policy byte, tenant string, body, dst []byte) []byte {
	m := hmac.New(sha256.New, secret)
	var hdr [len(sealDomain) + 1 + binary.MaxVarintLen64]byte
	h := append(hdr[:0], sealDomain...)
	h = append(h, policy)
	h = binary.AppendUvarint(h, uint64(len(tenant)))
	m.Write(h)
	m.Write([]byte(tenant))
	m.Write(body)
	var sum [sha256.Size]byte
	return append(dst, m.Sum(sum[:0])[:ContextTagLen]...)
}

// verify reports whether tag is body's tag under the current or the
// previous secret.
func (k *ContextKeys) verify(policy byte, tenant string, body, tag []byte) bool {
	var buf [ContextTagLen]byte
	if hmac.Equal(k.tag(k.current, policy, tenant, body, buf[:0]), tag) {
		return true
	}
	return k.previous != nil && hmac.Equal(k.tag(k.previous, policy, tenant, body, buf[:0]), tag)
}

// Token kinds for [ContextKeys.SealToken]: a byte distinct from the
// context policies ('l', 'd'), so no token verifies as a context and no
// context as a token.
const (
	TokenIdempotency byte = 'i' // a coordinator's generated idempotency key
)

// ErrTokenKind reports a token kind that is a context policy.
var ErrTokenKind = errors.New("vclock: token kind collides with a context policy")

// SealToken appends to dst body followed by its [ContextTagLen]-byte tag for
// tenant under the current secret, the way contexts are sealed but under
// kind instead of a policy: coordinators use it for stateless tokens they
// hand to clients and must recognise later. It fails only for a kind that
// is a context policy.
func (k *ContextKeys) SealToken(kind byte, tenant string, body, dst []byte) ([]byte, error) {
	if kind == 'l' || kind == 'd' {
		return nil, ErrTokenKind
	}
	dst = append(dst, body...)
	return k.tag(k.current, kind, tenant, body, dst), nil
}

// OpenToken returns the body of sealed (body followed by its tag, as
// SealToken made it) when its tag verifies for kind and tenant under the
// current or the previous secret; ok is false otherwise. The body aliases
// sealed. It never panics.
func (k *ContextKeys) OpenToken(kind byte, tenant string, sealed []byte) (body []byte, ok bool) {
	if kind == 'l' || kind == 'd' || len(sealed) < ContextTagLen {
		return nil, false
	}
	body, tag := sealed[:len(sealed)-ContextTagLen], sealed[len(sealed)-ContextTagLen:]
	if !k.verify(kind, tenant, body, tag) {
		return nil, false
	}
	return body, true
}
