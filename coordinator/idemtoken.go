package coordinator

import (
	"encoding/base64"
	"encoding/binary"
	"strings"
	"time"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Generated idempotency keys are stateless tokens (docs/ARCHITECTURE.md,
// "Idempotency"). A write without a key used to cost one more idempotency
// store round trip before its answer (recording the response under a fresh
// random key), which halved put throughput. A generated key is now the
// response itself, sealed: "g1." followed by the unpadded URL-safe base64
// of
//
//	format(1) issued(uvarint, Unix ms) replicas(uvarint) level(1)
//	fingerprint(16) context(rest, plain)
//
// and the 16-byte tag vclock.ContextKeys.SealToken puts after it (bound to
// the tenant, under the context secret, so rotation works as for
// contexts). A retry carrying it is answered from the token: the same
// reply with is_duplicate set, or 409 idempotency_mismatch when the
// request differs. Only a reply holds the token, so the write it names
// was done. After the idempotency TTL a token is an ordinary client key.
// A reply whose token would pass the 256-byte key limit (a large siblings
// context) falls back to a random key recorded in the store.

const (
	idemTokenPrefix = "g1."
	idemTokenFormat = 1
	// maxIdempotencyKey is the longest idempotency_key a request may carry.
	maxIdempotencyKey = 256
)

var idemTokenEncoding = base64.RawURLEncoding.Strict()

// idemToken is what a generated idempotency key carries.
type idemToken struct {
	issued      time.Time
	replicas    int
	consistency string
	fingerprint []byte // fingerprintBytes
	context     string // plain, as the reply was built
}

// levelCodes number the consistency levels in a token; 0 is invalid.
var levelCodes = [...]string{1: subjects.One, 2: subjects.Quorum, 3: subjects.All}

func levelCode(level string) byte {
	for i, l := range levelCodes {
		if i > 0 && l == level {
			return byte(i)
		}
	}
	return 0
}

// mintIdemToken returns the generated key for reply to a write of tenant
// with fingerprint fp, issued at now; ok is false when it would not fit
// maxIdempotencyKey (or the level is unknown).
func (c *Coordinator) mintIdemToken(tenant string, fp []byte, reply *subjects.WriteReply, now time.Time) (string, bool) {
	code := levelCode(reply.Consistency)
	if code == 0 || len(fp) != fingerprintBytes || reply.ReplicaCount < 0 {
		return "", false
	}
	var buf [160]byte
	body := append(buf[:0], idemTokenFormat)
	body = binary.AppendUvarint(body, uint64(now.UnixMilli()))
	body = binary.AppendUvarint(body, uint64(reply.ReplicaCount))
	body = append(body, code)
	body = append(body, fp...)
	body = append(body, reply.Context...)
	if len(idemTokenPrefix)+idemTokenEncoding.EncodedLen(len(body)+vclock.ContextTagLen) > maxIdempotencyKey {
		return "", false
	}
	sealed, err := c.keys.SealToken(vclock.TokenIdempotency, tenant, body, nil)
	if err != nil {
		return "", false
	}
	return idemTokenPrefix + idemTokenEncoding.EncodeToString(sealed), true
}

// openIdemToken returns the token key carries when key is a generated key
// this store issued for tenant and it is younger than ttl at now. Any
// other key (a client's own, a forged or foreign token, an expired one)
// gives ok false and is handled as a client key.
func (c *Coordinator) openIdemToken(tenant, key string, now time.Time, ttl time.Duration) (idemToken, bool) {
	payload, found := strings.CutPrefix(key, idemTokenPrefix)
	if !found || strings.ContainsAny(payload, "\r\n") {
		return idemToken{}, false
	}
	raw, err := idemTokenEncoding.DecodeString(payload)
	if err != nil {
		return idemToken{}, false
	}
	body, ok := c.keys.OpenToken(vclock.TokenIdempotency, tenant, raw)
	if !ok || len(body) < 1 || body[0] != idemTokenFormat {
		return idemToken{}, false
	}
	body = body[1:]
	issued, n := binary.Uvarint(body)
	if n <= 0 {
		return idemToken{}, false
	}
	body = body[n:]
	replicas, n := binary.Uvarint(body)
	if n <= 0 || replicas > 64 {
		return idemToken{}, false
	}
	body = body[n:]
	if len(body) < 1+fingerprintBytes || int(body[0]) >= len(levelCodes) || body[0] == 0 {
		return idemToken{}, false
	}
	t := idemToken{
		issued:      time.UnixMilli(int64(issued)),
		replicas:    int(replicas),
		consistency: levelCodes[body[0]],
		fingerprint: body[1 : 1+fingerprintBytes],
		context:     string(body[1+fingerprintBytes:]),
	}
	if age := now.Sub(t.issued); age > ttl || age < -time.Hour {
		return idemToken{}, false
	}
	return t, true
}
