// Package idempotencytest is the conformance suite every idempotency.Store
// implementation must pass.
package idempotencytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/idempotency"
)

const (
	// shortTTL is the pending and response TTL of the expiry tests. JetStream
	// rounds TTLs up to whole seconds and expires within about a second.
	shortTTL = 1500 * time.Millisecond
	// expiryDeadline bounds how long an expiry test waits past shortTTL.
	expiryDeadline = 10 * time.Second
	// pollEvery is the expiry tests' polling interval.
	pollEvery = 50 * time.Millisecond
	// opTimeout bounds each single Store call.
	opTimeout = 10 * time.Second
	// longTTL outlives every test.
	longTTL = time.Hour
	// concurrency is how many goroutines race for one key.
	concurrency = 50
)

// Run runs the conformance suite against the Store that open returns. Its
// subtests run in parallel and call open once each, with their own *testing.T;
// open must return a Store whose keys no other subtest sees (its own key
// prefix, bucket or server), arrange for it to be closed and cleaned up by
// t.Cleanup, and fail t rather than return nil.
//
// Contract details the suite pins down beyond the interface's doc comments:
//   - a nil response and an empty response are both returned to later
//     Begins as a non-nil empty slice;
//   - Complete and Abort with an empty or malformed token return ErrNotOwner;
//   - a completed or aborted claim's token no longer owns the key;
//   - Begin reports ErrMismatch before ErrInProgress: a pending marker with
//     another fingerprint is a mismatch;
//   - an entry stored without a fingerprint (an older version's) matches
//     every request, and a Begin without one matches every entry.
func Run(t *testing.T, open func(t *testing.T) idempotency.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s idempotency.Store)
	}{
		{"FreshClaim", testFreshClaim},
		{"DuplicateAfterComplete", testDuplicateAfterComplete},
		{"InProgressWhilePending", testInProgressWhilePending},
		{"AbortLetsRetryClaim", testAbortLetsRetryClaim},
		{"KeysAreIndependent", testKeysAreIndependent},
		{"PendingMarkerExpires", testPendingMarkerExpires},
		{"CompletedResponseExpires", testCompletedResponseExpires},
		{"WrongTokenIsNotOwner", testWrongTokenIsNotOwner},
		{"OldOwnerAfterExpiryAndReclaim", testOldOwnerAfterExpiryAndReclaim},
		{"FinishedClaimIsNotOwner", testFinishedClaimIsNotOwner},
		{"ConcurrentBeginHasOneOwner", testConcurrentBeginHasOneOwner},
		{"ConcurrentBeginAfterAbortHasOneOwner", testConcurrentBeginAfterAbortHasOneOwner},
		{"BinaryResponse", testBinaryResponse},
		{"EmptyAndNilResponse", testEmptyAndNilResponse},
		{"InvalidTTL", testInvalidTTL},
		{"MismatchAfterComplete", testMismatchAfterComplete},
		{"MismatchWhilePending", testMismatchWhilePending},
		{"EntryWithoutFingerprintMatchesAll", testEntryWithoutFingerprintMatchesAll},
		{"LongestFingerprint", testLongestFingerprint},
		{"FingerprintTooLong", testFingerprintTooLong},
		{"ConcurrentBeginWithTwoFingerprints", testConcurrentBeginWithTwoFingerprints},
		{"Record", testRecord},
		{"RecordExpires", testRecordExpires},
		{"RecordInvalidArguments", testRecordInvalidArguments},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			if s == nil {
				t.Fatal("idempotencytest: open returned a nil Store")
			}
			tc.fn(t, s)
		})
	}
}

// newKey returns a fresh store key for this test, derived with
// idempotency.Key from a data key that holds awkward bytes.
func newKey(t *testing.T) string {
	t.Helper()
	return idempotency.Key("tenant-"+rand.Text()[:8], "data/key.*>\x00 é\xff", t.Name()+"/"+rand.Text())
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), opTimeout)
	t.Cleanup(cancel)
	return c
}

// Fingerprints of the tests: fp is what every test uses unless it says
// otherwise; fpOther is another request's. Both hold awkward bytes.
var (
	fp      = []byte("put\x00key\xff\x00value-hash")
	fpOther = []byte("delete\x00key\xff\x00")
)

// begin calls Begin with fp and fails t on an error other than ErrInProgress.
func begin(t *testing.T, s idempotency.Store, key string, pendingTTL time.Duration) (idempotency.Claim, error) {
	t.Helper()
	return beginFP(t, s, key, fp, pendingTTL)
}

// beginFP calls Begin with fingerprint and fails t on an error other than
// ErrInProgress and ErrMismatch.
func beginFP(t *testing.T, s idempotency.Store, key string, fingerprint []byte, pendingTTL time.Duration) (idempotency.Claim, error) {
	t.Helper()
	c, err := s.Begin(ctx(t), key, fingerprint, pendingTTL)
	if err != nil && !errors.Is(err, idempotency.ErrInProgress) && !errors.Is(err, idempotency.ErrMismatch) {
		t.Fatalf("Begin(%q): unexpected error: %v", key, err)
	}
	if err == nil && c.Owned() == (c.Response != nil) {
		t.Fatalf("Begin(%q) = %+v: want exactly one of Token and Response", key, c)
	}
	return c, err
}

// mustOwn claims key and fails t unless the claim is owned.
func mustOwn(t *testing.T, s idempotency.Store, key string, pendingTTL time.Duration) string {
	t.Helper()
	c, err := begin(t, s, key, pendingTTL)
	if err != nil || !c.Owned() {
		t.Fatalf("Begin(%q) = %+v, %v: want an owned claim", key, c, err)
	}
	return c.Token
}

func mustInProgress(t *testing.T, s idempotency.Store, key string) {
	t.Helper()
	c, err := begin(t, s, key, longTTL)
	if !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("Begin(%q) = %+v, %v: want ErrInProgress", key, c, err)
	}
}

func mustDuplicate(t *testing.T, s idempotency.Store, key string, want []byte) {
	t.Helper()
	c, err := begin(t, s, key, longTTL)
	if err != nil || c.Owned() || c.Response == nil {
		t.Fatalf("Begin(%q) = %+v, %v: want a duplicate", key, c, err)
	}
	if !bytes.Equal(c.Response, want) {
		t.Fatalf("Begin(%q) duplicate response = %q, want %q", key, c.Response, want)
	}
}

func mustComplete(t *testing.T, s idempotency.Store, key, token string, resp []byte, ttl time.Duration) {
	t.Helper()
	if err := s.Complete(ctx(t), key, token, resp, ttl); err != nil {
		t.Fatalf("Complete(%q, %q): %v", key, token, err)
	}
}

func mustNotOwner(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("%s: err = %v, want ErrNotOwner", what, err)
	}
}

// waitOwned polls Begin until it returns an owned claim, failing t if it
// returns one before minWait has passed since start or none within
// expiryDeadline. Only the results allowed before expiry (ErrInProgress, or
// a duplicate of want when want is non-nil) are tolerated meanwhile.
func waitOwned(t *testing.T, s idempotency.Store, key string, start time.Time, minWait time.Duration, want []byte) string {
	t.Helper()
	deadline := start.Add(minWait + expiryDeadline)
	for {
		c, err := begin(t, s, key, longTTL)
		now := time.Now()
		switch {
		case err == nil && c.Owned():
			if elapsed := now.Sub(start); elapsed < minWait {
				t.Fatalf("Begin(%q) claimed the key after %v, before it should expire (%v)", key, elapsed, minWait)
			}
			return c.Token
		case err == nil && (want == nil || !bytes.Equal(c.Response, want)):
			t.Fatalf("Begin(%q) = duplicate %q while waiting for expiry, want %q", key, c.Response, want)
		case err != nil && want != nil:
			t.Fatalf("Begin(%q) = %v while waiting for a response to expire", key, err)
		}
		if now.After(deadline) {
			t.Fatalf("Begin(%q): key not expired %v after start (ttl %v)", key, now.Sub(start), minWait)
		}
		time.Sleep(pollEvery)
	}
}

func testFreshClaim(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	c, err := s.Begin(ctx(t), key, fp, idempotency.DefaultPendingTTL)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if !c.Owned() || c.Token == "" || c.Response != nil {
		t.Fatalf("Begin = %+v: want an owned claim with no response", c)
	}
	t.Cleanup(func() { _ = s.Abort(context.Background(), key, c.Token) })
}

func testDuplicateAfterComplete(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	resp := []byte(`{"version":7,"status":"ok"}`)
	mustComplete(t, s, key, tok, resp, longTTL)
	resp[0] = 'X' // the store must have copied it
	for range 3 {
		mustDuplicate(t, s, key, []byte(`{"version":7,"status":"ok"}`))
	}
}

func testInProgressWhilePending(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	mustInProgress(t, s, key)
	mustInProgress(t, s, key)
	// The claim survives the rejected Begins.
	mustComplete(t, s, key, tok, []byte("done"), longTTL)
	mustDuplicate(t, s, key, []byte("done"))
}

func testAbortLetsRetryClaim(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok1 := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	if err := s.Abort(ctx(t), key, tok1); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	tok2 := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	if tok2 == tok1 {
		t.Fatalf("second claim reused token %q", tok1)
	}
	mustNotOwner(t, "Complete with the aborted token", s.Complete(ctx(t), key, tok1, []byte("old"), longTTL))
	mustNotOwner(t, "Abort with the aborted token", s.Abort(ctx(t), key, tok1))
	mustComplete(t, s, key, tok2, []byte("new"), longTTL)
	mustDuplicate(t, s, key, []byte("new"))
}

func testKeysAreIndependent(t *testing.T, s idempotency.Store) {
	tenant := "tenant-" + rand.Text()[:8]
	k1 := idempotency.Key(tenant, "k", "idem-1")
	k2 := idempotency.Key(tenant, "k", "idem-2")
	k3 := idempotency.Key(tenant, "other", "idem-1")
	k4 := idempotency.Key(tenant+"x", "k", "idem-1")
	tok1 := mustOwn(t, s, k1, idempotency.DefaultPendingTTL)
	tok2 := mustOwn(t, s, k2, idempotency.DefaultPendingTTL)
	tok3 := mustOwn(t, s, k3, idempotency.DefaultPendingTTL)
	tok4 := mustOwn(t, s, k4, idempotency.DefaultPendingTTL)
	mustNotOwner(t, "Complete of k1 with k2's token", s.Complete(ctx(t), k1, tok2, []byte("x"), longTTL))
	mustComplete(t, s, k1, tok1, []byte("one"), longTTL)
	mustInProgress(t, s, k2)
	if err := s.Abort(ctx(t), k2, tok2); err != nil {
		t.Fatalf("Abort k2: %v", err)
	}
	mustDuplicate(t, s, k1, []byte("one"))
	mustInProgress(t, s, k3)
	mustComplete(t, s, k3, tok3, []byte("three"), longTTL)
	mustComplete(t, s, k4, tok4, []byte("four"), longTTL)
	mustDuplicate(t, s, k3, []byte("three"))
	mustDuplicate(t, s, k4, []byte("four"))
	mustDuplicate(t, s, k1, []byte("one"))
}

func testPendingMarkerExpires(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	start := time.Now()
	mustOwn(t, s, key, shortTTL)
	mustInProgress(t, s, key)
	tok := waitOwned(t, s, key, start, shortTTL-100*time.Millisecond, nil)
	mustComplete(t, s, key, tok, []byte("after expiry"), longTTL)
	mustDuplicate(t, s, key, []byte("after expiry"))
}

func testCompletedResponseExpires(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	start := time.Now()
	mustComplete(t, s, key, tok, []byte("short-lived"), shortTTL)
	mustDuplicate(t, s, key, []byte("short-lived"))
	tok2 := waitOwned(t, s, key, start, shortTTL-100*time.Millisecond, []byte("short-lived"))
	mustNotOwner(t, "Complete with the completed claim's token", s.Complete(ctx(t), key, tok, []byte("x"), longTTL))
	mustComplete(t, s, key, tok2, []byte("second"), longTTL)
	mustDuplicate(t, s, key, []byte("second"))
}

func testWrongTokenIsNotOwner(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	for _, bad := range []string{"", "bogus", tok + "0", "1", "18446744073709551615", "p" + tok} {
		if bad == tok {
			continue
		}
		mustNotOwner(t, "Complete with token "+bad, s.Complete(ctx(t), key, bad, []byte("evil"), longTTL))
		mustNotOwner(t, "Abort with token "+bad, s.Abort(ctx(t), key, bad))
	}
	// A valid token of another key does not own this one.
	other := newKey(t)
	otherTok := mustOwn(t, s, other, idempotency.DefaultPendingTTL)
	mustNotOwner(t, "Complete with another key's token", s.Complete(ctx(t), key, otherTok, []byte("evil"), longTTL))
	mustNotOwner(t, "Abort with another key's token", s.Abort(ctx(t), key, otherTok))
	// The rightful claim is untouched.
	mustInProgress(t, s, key)
	mustComplete(t, s, key, tok, []byte("mine"), longTTL)
	mustDuplicate(t, s, key, []byte("mine"))
	// A token for a key that was never claimed owns nothing.
	mustNotOwner(t, "Complete of an unclaimed key", s.Complete(ctx(t), newKey(t), tok, []byte("x"), longTTL))
	mustNotOwner(t, "Abort of an unclaimed key", s.Abort(ctx(t), newKey(t), tok))
}

func testOldOwnerAfterExpiryAndReclaim(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	start := time.Now()
	old := mustOwn(t, s, key, shortTTL)
	cur := waitOwned(t, s, key, start, shortTTL-100*time.Millisecond, nil)
	if cur == old {
		t.Fatalf("reclaim reused token %q", old)
	}
	mustNotOwner(t, "Complete by the expired owner", s.Complete(ctx(t), key, old, []byte("stale"), longTTL))
	mustNotOwner(t, "Abort by the expired owner", s.Abort(ctx(t), key, old))
	mustInProgress(t, s, key) // the new claim stands
	mustComplete(t, s, key, cur, []byte("fresh"), longTTL)
	mustDuplicate(t, s, key, []byte("fresh"))
	mustNotOwner(t, "Complete by the expired owner after completion", s.Complete(ctx(t), key, old, []byte("stale"), longTTL))
	mustDuplicate(t, s, key, []byte("fresh"))
}

func testFinishedClaimIsNotOwner(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	mustComplete(t, s, key, tok, []byte("first"), longTTL)
	mustNotOwner(t, "second Complete", s.Complete(ctx(t), key, tok, []byte("second"), longTTL))
	mustNotOwner(t, "Abort after Complete", s.Abort(ctx(t), key, tok))
	mustDuplicate(t, s, key, []byte("first"))

	key2 := newKey(t)
	tok2 := mustOwn(t, s, key2, idempotency.DefaultPendingTTL)
	if err := s.Abort(ctx(t), key2, tok2); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	mustNotOwner(t, "second Abort", s.Abort(ctx(t), key2, tok2))
	mustNotOwner(t, "Complete after Abort", s.Complete(ctx(t), key2, tok2, []byte("x"), longTTL))
}

// raceBegin runs concurrency Begins on key at once and checks that exactly
// one owns it and all others get ErrInProgress. It returns the owner's token.
func raceBegin(t *testing.T, s idempotency.Store, key string) string {
	t.Helper()
	type result struct {
		c   idempotency.Claim
		err error
	}
	results := make([]result, concurrency)
	c := ctx(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			<-start
			cl, err := s.Begin(c, key, fp, idempotency.DefaultPendingTTL)
			results[i] = result{cl, err}
		})
	}
	close(start)
	wg.Wait()
	var owners []string
	for i, r := range results {
		switch {
		case r.err == nil && r.c.Owned():
			owners = append(owners, r.c.Token)
		case errors.Is(r.err, idempotency.ErrInProgress):
		default:
			t.Errorf("Begin #%d = %+v, %v: want an owned claim or ErrInProgress", i, r.c, r.err)
		}
	}
	if len(owners) != 1 {
		t.Fatalf("%d of %d concurrent Begins own the key, want exactly 1", len(owners), concurrency)
	}
	return owners[0]
}

func testConcurrentBeginHasOneOwner(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := raceBegin(t, s, key)
	mustComplete(t, s, key, tok, []byte("winner"), longTTL)
	mustDuplicate(t, s, key, []byte("winner"))
}

func testConcurrentBeginAfterAbortHasOneOwner(t *testing.T, s idempotency.Store) {
	// Once aborted, a key may be stored differently (a delete marker, say)
	// from one never claimed; the race must be just as tight.
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	if err := s.Abort(ctx(t), key, tok); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	tok = raceBegin(t, s, key)
	mustComplete(t, s, key, tok, []byte("winner"), longTTL)
	mustDuplicate(t, s, key, []byte("winner"))
}

func testBinaryResponse(t *testing.T, s idempotency.Store) {
	all := make([]byte, 0, 3*256)
	for i := range 256 {
		all = append(all, byte(i))
	}
	for i := range 256 {
		all = append(all, byte(255-i), 0)
	}
	big := make([]byte, 256<<10)
	_, _ = rand.Read(big)
	for name, resp := range map[string][]byte{
		"all bytes":            all,
		"starts with p":        []byte("p"),
		"starts with c":        []byte("c:xyz"),
		"NUL":                  {0},
		"invalid UTF-8":        {0xff, 0xfe, 0x80},
		"256KiB random":        big,
		"trailing NULs":        {'a', 0, 0, 0},
		"looks like a marker":  []byte("p:" + rand.Text()),
		"CRLF and RESP syntax": []byte("+OK\r\n$-1\r\n"),
	} {
		key := newKey(t)
		tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
		mustComplete(t, s, key, tok, resp, longTTL)
		c, err := begin(t, s, key, longTTL)
		if err != nil || !bytes.Equal(c.Response, resp) {
			t.Errorf("%s: Begin after Complete = %d bytes, %v; want the %d bytes stored", name, len(c.Response), err, len(resp))
		}
	}
}

func testEmptyAndNilResponse(t *testing.T, s idempotency.Store) {
	for name, resp := range map[string][]byte{"empty": {}, "nil": nil} {
		key := newKey(t)
		tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
		mustComplete(t, s, key, tok, resp, longTTL)
		c, err := begin(t, s, key, longTTL)
		if err != nil || c.Owned() || c.Response == nil || len(c.Response) != 0 {
			t.Errorf("%s response: Begin after Complete = %+v (nil response: %t), %v; want a duplicate with a non-nil empty response",
				name, c, c.Response == nil, err)
		}
	}
}

func testInvalidTTL(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	for _, d := range []time.Duration{0, -time.Second} {
		if c, err := s.Begin(ctx(t), key, fp, d); err == nil || errors.Is(err, idempotency.ErrInProgress) || errors.Is(err, idempotency.ErrUnavailable) {
			t.Errorf("Begin with pendingTTL %v = %+v, %v: want an argument error", d, c, err)
		}
	}
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	for _, d := range []time.Duration{0, -time.Second} {
		if err := s.Complete(ctx(t), key, tok, []byte("x"), d); err == nil || errors.Is(err, idempotency.ErrNotOwner) || errors.Is(err, idempotency.ErrUnavailable) {
			t.Errorf("Complete with ttl %v = %v: want an argument error", d, err)
		}
	}
	// The rejected calls changed nothing.
	mustInProgress(t, s, key)
	mustComplete(t, s, key, tok, []byte("ok"), longTTL)
	mustDuplicate(t, s, key, []byte("ok"))
}

func mustMismatch(t *testing.T, s idempotency.Store, key string, fingerprint []byte) {
	t.Helper()
	c, err := beginFP(t, s, key, fingerprint, longTTL)
	if !errors.Is(err, idempotency.ErrMismatch) {
		t.Fatalf("Begin(%q, fingerprint %q) = %+v, %v: want ErrMismatch", key, fingerprint, c, err)
	}
}

func mustDuplicateFP(t *testing.T, s idempotency.Store, key string, fingerprint, want []byte) {
	t.Helper()
	c, err := beginFP(t, s, key, fingerprint, longTTL)
	if err != nil || c.Owned() || c.Response == nil || !bytes.Equal(c.Response, want) {
		t.Fatalf("Begin(%q, fingerprint %q) = %+v, %v: want the duplicate %q", key, fingerprint, c, err, want)
	}
}

func mustInProgressFP(t *testing.T, s idempotency.Store, key string, fingerprint []byte) {
	t.Helper()
	c, err := beginFP(t, s, key, fingerprint, longTTL)
	if !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("Begin(%q, fingerprint %q) = %+v, %v: want ErrInProgress", key, fingerprint, c, err)
	}
}

func testMismatchAfterComplete(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	mustComplete(t, s, key, tok, []byte("first"), longTTL)
	mustMismatch(t, s, key, fpOther)
	mustMismatch(t, s, key, append(bytes.Clone(fp), 0)) // a prefix is not a match
	mustMismatch(t, s, key, fp[:len(fp)-1])
	// The refused Begins changed nothing.
	mustDuplicate(t, s, key, []byte("first"))
	mustDuplicateFP(t, s, key, nil, []byte("first"))
}

func testMismatchWhilePending(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	mustMismatch(t, s, key, fpOther)
	mustInProgress(t, s, key)
	mustInProgressFP(t, s, key, nil)
	// The claim survives, and completes under its own fingerprint.
	mustComplete(t, s, key, tok, []byte("done"), longTTL)
	mustMismatch(t, s, key, fpOther)
	mustDuplicate(t, s, key, []byte("done"))
}

func testEntryWithoutFingerprintMatchesAll(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	c, err := beginFP(t, s, key, nil, idempotency.DefaultPendingTTL)
	if err != nil || !c.Owned() {
		t.Fatalf("Begin without a fingerprint = %+v, %v: want an owned claim", c, err)
	}
	mustInProgress(t, s, key)
	mustInProgressFP(t, s, key, fpOther)
	mustComplete(t, s, key, c.Token, []byte("legacy"), longTTL)
	mustDuplicate(t, s, key, []byte("legacy"))
	mustDuplicateFP(t, s, key, fpOther, []byte("legacy"))
	mustDuplicateFP(t, s, key, nil, []byte("legacy"))
}

func testLongestFingerprint(t *testing.T, s idempotency.Store) {
	long := make([]byte, idempotency.MaxFingerprintBytes)
	_, _ = rand.Read(long)
	key := newKey(t)
	c, err := beginFP(t, s, key, long, idempotency.DefaultPendingTTL)
	if err != nil || !c.Owned() {
		t.Fatalf("Begin with a %d-byte fingerprint = %+v, %v: want an owned claim", len(long), c, err)
	}
	mustInProgressFP(t, s, key, long)
	mustMismatch(t, s, key, long[:len(long)-1])
	mustComplete(t, s, key, c.Token, []byte("long"), longTTL)
	mustDuplicateFP(t, s, key, long, []byte("long"))
	mustMismatch(t, s, key, fp)

	key2 := newKey(t)
	if err := s.Record(ctx(t), key2, long, []byte("recorded"), longTTL); err != nil {
		t.Fatalf("Record with a %d-byte fingerprint: %v", len(long), err)
	}
	mustDuplicateFP(t, s, key2, long, []byte("recorded"))
	mustMismatch(t, s, key2, fp)
}

func testFingerprintTooLong(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	tooLong := make([]byte, idempotency.MaxFingerprintBytes+1)
	c, err := s.Begin(ctx(t), key, tooLong, longTTL)
	if err == nil || errors.Is(err, idempotency.ErrInProgress) || errors.Is(err, idempotency.ErrMismatch) || errors.Is(err, idempotency.ErrUnavailable) {
		t.Fatalf("Begin with a %d-byte fingerprint = %+v, %v: want an argument error", len(tooLong), c, err)
	}
	if err := s.Record(ctx(t), key, tooLong, []byte("x"), longTTL); err == nil || errors.Is(err, idempotency.ErrUnavailable) {
		t.Fatalf("Record with a %d-byte fingerprint = %v: want an argument error", len(tooLong), err)
	}
	// Nothing was stored.
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	mustComplete(t, s, key, tok, []byte("ok"), longTTL)
}

// testConcurrentBeginWithTwoFingerprints: of concurrency Begins with two
// fingerprints, exactly one owns the key; the others are in progress when
// they share its fingerprint and a mismatch when they do not.
func testConcurrentBeginWithTwoFingerprints(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	fps := [][]byte{fp, fpOther}
	type result struct {
		c   idempotency.Claim
		err error
	}
	results := make([]result, concurrency)
	c := ctx(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			<-start
			cl, err := s.Begin(c, key, fps[i%2], idempotency.DefaultPendingTTL)
			results[i] = result{cl, err}
		})
	}
	close(start)
	wg.Wait()
	owner := -1
	for i, r := range results {
		if r.err == nil && r.c.Owned() {
			if owner >= 0 {
				t.Fatalf("Begins #%d and #%d both own the key", owner, i)
			}
			owner = i
		}
	}
	if owner < 0 {
		t.Fatalf("none of %d concurrent Begins owns the key: %+v", concurrency, results)
	}
	for i, r := range results {
		switch {
		case i == owner:
		case i%2 == owner%2 && !errors.Is(r.err, idempotency.ErrInProgress):
			t.Errorf("Begin #%d with the owner's fingerprint = %+v, %v: want ErrInProgress", i, r.c, r.err)
		case i%2 != owner%2 && !errors.Is(r.err, idempotency.ErrMismatch):
			t.Errorf("Begin #%d with another fingerprint = %+v, %v: want ErrMismatch", i, r.c, r.err)
		}
	}
	mustComplete(t, s, key, results[owner].c.Token, []byte("winner"), longTTL)
	mustDuplicateFP(t, s, key, fps[owner%2], []byte("winner"))
	mustMismatch(t, s, key, fps[1-owner%2])
}

func testRecord(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	resp := []byte("c\x00recorded\xff")
	if err := s.Record(ctx(t), key, fp, resp, longTTL); err != nil {
		t.Fatalf("Record: %v", err)
	}
	resp[0] = 'X' // the store must have copied it
	for range 2 {
		mustDuplicate(t, s, key, []byte("c\x00recorded\xff"))
	}
	mustMismatch(t, s, key, fpOther)
	mustDuplicateFP(t, s, key, nil, []byte("c\x00recorded\xff"))

	// Without a fingerprint the entry matches every request.
	key2 := newKey(t)
	if err := s.Record(ctx(t), key2, nil, []byte("any"), longTTL); err != nil {
		t.Fatalf("Record without a fingerprint: %v", err)
	}
	mustDuplicateFP(t, s, key2, fpOther, []byte("any"))

	// Empty and nil responses come back as non-nil empty ones.
	for name, r := range map[string][]byte{"empty": {}, "nil": nil} {
		k := newKey(t)
		if err := s.Record(ctx(t), k, fp, r, longTTL); err != nil {
			t.Fatalf("Record of a %s response: %v", name, err)
		}
		c, err := begin(t, s, k, longTTL)
		if err != nil || c.Owned() || c.Response == nil || len(c.Response) != 0 {
			t.Errorf("%s response: Begin after Record = %+v (nil response: %t), %v; want a duplicate with a non-nil empty response",
				name, c, c.Response == nil, err)
		}
	}
}

func testRecordExpires(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	start := time.Now()
	if err := s.Record(ctx(t), key, fp, []byte("short-lived"), shortTTL); err != nil {
		t.Fatalf("Record: %v", err)
	}
	mustDuplicate(t, s, key, []byte("short-lived"))
	tok := waitOwned(t, s, key, start, shortTTL-100*time.Millisecond, []byte("short-lived"))
	mustComplete(t, s, key, tok, []byte("second"), longTTL)
	mustDuplicate(t, s, key, []byte("second"))
}

func testRecordInvalidArguments(t *testing.T, s idempotency.Store) {
	key := newKey(t)
	for _, d := range []time.Duration{0, -time.Second} {
		if err := s.Record(ctx(t), key, fp, []byte("x"), d); err == nil || errors.Is(err, idempotency.ErrUnavailable) {
			t.Errorf("Record with ttl %v = %v: want an argument error", d, err)
		}
	}
	// The rejected calls stored nothing.
	tok := mustOwn(t, s, key, idempotency.DefaultPendingTTL)
	mustComplete(t, s, key, tok, []byte("ok"), longTTL)
}
