package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Hand-written msgpack for the messages on the data path: the storage-node
// batches and replies, and the client's Request, WriteReply and GetReply.
// msgpack's reflection costs more CPU than everything else a storage node
// does per item, so the hot path appends bytes directly.
//
// The contract with the reflection codec is exact: what these encoders
// write, msgpack.Unmarshal decodes to the same value; and whenever these
// decoders accept input, msgpack.Unmarshal accepts it too and yields the
// same value. Anything a decoder does not expect (a float where an integer
// goes, a field count that changed) makes it give up, and the caller falls
// back to DecodeMsgpack (checked, then the library), so errors and edge
// cases stay what they were. The fast decoders never allocate more than the
// input could hold, nor recurse deeper than maxSkipDepth.
// Tests check both directions and fuzz the second.
//
// Decoded []byte values alias the input (the library copies); NATS gives
// every message its own buffer, so nobody writes to it afterwards.

// msgpack format codes used here.
const (
	mpNil     = 0xc0
	mpFalse   = 0xc2
	mpTrue    = 0xc3
	mpBin8    = 0xc4
	mpBin16   = 0xc5
	mpBin32   = 0xc6
	mpUint8   = 0xcc
	mpUint16  = 0xcd
	mpUint32  = 0xce
	mpUint64  = 0xcf
	mpInt8    = 0xd0
	mpInt16   = 0xd1
	mpInt32   = 0xd2
	mpInt64   = 0xd3
	mpStr8    = 0xd9
	mpStr16   = 0xda
	mpStr32   = 0xdb
	mpArray16 = 0xdc
	mpArray32 = 0xdd
	mpMap16   = 0xde
	mpMap32   = 0xdf
)

// --- writing ---

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpArray16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, mpArray32), uint32(n))
}

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpMap16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, mpMap32), uint32(n))
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= math.MaxInt8:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, mpUint8, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpUint16), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, mpUint32), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, mpUint64), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, mpInt8, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, mpInt16), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, mpInt32), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, mpInt64), uint64(v))
}

func appendStrHeader(b []byte, n int) []byte {
	switch {
	case n < 32:
		return append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		return append(b, mpStr8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, mpStr16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, mpStr32), uint32(n))
}

func appendStr(b []byte, s string) []byte { return append(appendStrHeader(b, len(s)), s...) }

// appendBin writes v as bin, or nil when v is nil (as the library does).
func appendBin(b []byte, v []byte) []byte {
	n := len(v)
	switch {
	case v == nil:
		return append(b, mpNil)
	case n <= math.MaxUint8:
		b = append(b, mpBin8, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, mpBin16), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, mpBin32), uint32(n))
	}
	return append(b, v...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, mpTrue)
	}
	return append(b, mpFalse)
}

// AppendVersion appends v as msgpack (the array [[Counter, Actor], Value,
// Tombstone], with Expires appended when it is not 0, or nil) to b.
func AppendVersion(b []byte, v *vclock.Version) []byte {
	if v == nil {
		return append(b, mpNil)
	}
	if v.Expires != 0 {
		b = append(b, 0x94, 0x92)
	} else {
		b = append(b, 0x93, 0x92)
	}
	b = appendUint(b, v.Dot.Counter)
	b = appendStr(b, v.Dot.Actor)
	b = appendBin(b, v.Value)
	b = appendBool(b, v.Tombstone)
	if v.Expires != 0 {
		b = appendInt(b, v.Expires)
	}
	return b
}

// --- reading ---

// mpReader reads msgpack from b. The first unexpected byte sets bad; from
// then on every read returns a zero value, so decoders check bad once.
type mpReader struct {
	b   []byte
	bad bool
	// The last tenant and actor read: a batch repeats them item after
	// item, so equal ones are shared instead of allocated again.
	tenant, actor string
	// The unknown field names of the client message being read.
	unknown [][]byte
}

func (r *mpReader) fail() { r.bad, r.b = true, nil }

func (r *mpReader) take(n int) []byte {
	if n < 0 || n > len(r.b) {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *mpReader) code() byte {
	if len(r.b) == 0 {
		r.fail()
		return mpNil
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *mpReader) peek() byte {
	if len(r.b) == 0 {
		return 0xc1 // never used in msgpack
	}
	return r.b[0]
}

func (r *mpReader) be(n int) uint64 {
	p := r.take(n)
	if p == nil {
		return 0
	}
	var v uint64
	for _, x := range p {
		v = v<<8 | uint64(x)
	}
	return v
}

// arrayLen reads an array header: -1 for nil.
func (r *mpReader) arrayLen() int { return r.header(0x90, mpArray16, mpArray32) }

// mapLen reads a map header: -1 for nil.
func (r *mpReader) mapLen() int { return r.header(0x80, mpMap16, mpMap32) }

// header reads an array or map header (fixed code fix, or the 16- and
// 32-bit codes c16 and c32): -1 for nil.
func (r *mpReader) header(fix, c16, c32 byte) int {
	c := r.code()
	switch {
	case c&0xf0 == fix:
		return int(c & 0x0f)
	case c == mpNil:
		return -1
	case c == c16:
		return int(r.be(2))
	case c == c32:
		return r.count(r.be(4))
	}
	r.fail()
	return 0
}

// count guards a 32-bit element count: every element takes at least a
// byte, so a count beyond the remaining input is malformed.
func (r *mpReader) count(n uint64) int {
	if n > uint64(len(r.b)) {
		r.fail()
		return 0
	}
	return int(n)
}

// int reads any integer the way the library's DecodeInt64 does.
func (r *mpReader) int() int64 {
	c := r.code()
	switch {
	case c <= 0x7f:
		return int64(c)
	case c >= 0xe0:
		return int64(int8(c))
	}
	switch c {
	case mpUint8:
		return int64(r.be(1))
	case mpUint16:
		return int64(r.be(2))
	case mpUint32:
		return int64(r.be(4))
	case mpUint64:
		return int64(r.be(8))
	case mpInt8:
		return int64(int8(r.be(1)))
	case mpInt16:
		return int64(int16(r.be(2)))
	case mpInt32:
		return int64(int32(r.be(4)))
	case mpInt64:
		return int64(r.be(8))
	}
	r.fail() // nil, floats and the rest: leave them to the library
	return 0
}

// uint reads a non-negative integer; negative ones are left to the library.
func (r *mpReader) uint() uint64 {
	c := r.peek()
	if c >= 0xe0 || (c >= mpInt8 && c <= mpInt64) {
		r.fail()
		return 0
	}
	return uint64(r.int())
}

// rawBytes reads str or bin; nil is (nil, true).
func (r *mpReader) rawBytes() ([]byte, bool) {
	c := r.code()
	var n int
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == mpNil:
		return nil, true
	case c == mpStr8 || c == mpBin8:
		n = int(r.be(1))
	case c == mpStr16 || c == mpBin16:
		n = int(r.be(2))
	case c == mpStr32 || c == mpBin32:
		n = int(r.be(4))
	default:
		r.fail()
		return nil, false
	}
	return r.take(n), false
}

func (r *mpReader) str() string {
	b, _ := r.rawBytes()
	return string(b)
}

// strShared reads a string like str, returning *last (no allocation) when
// it is equal, else remembering the new one there.
func (r *mpReader) strShared(last *string) string {
	b, _ := r.rawBytes()
	if string(b) != *last { // the conversion in a comparison does not allocate
		*last = string(b)
	}
	return *last
}

// bytes reads bin or str as the library decodes a []byte: nil stays nil,
// an empty one is empty but not nil.
func (r *mpReader) bytes() []byte {
	b, isNil := r.rawBytes()
	if isNil || r.bad {
		return nil
	}
	if b == nil {
		return []byte{}
	}
	return b
}

func (r *mpReader) bool() bool {
	switch r.code() {
	case mpTrue:
		return true
	case mpFalse, mpNil:
		return false
	}
	r.fail()
	return false
}

// isNil consumes a nil if one is next.
func (r *mpReader) isNil() bool {
	if r.peek() == mpNil {
		r.b = r.b[1:]
		return true
	}
	return false
}

// skip passes over one value of any type but ext, nested at most
// maxSkipDepth deep (deeper input is left to the library's checks).
func (r *mpReader) skip() { r.skipDepth(0) }

const maxSkipDepth = 16

func (r *mpReader) skipDepth(depth int) {
	if depth > maxSkipDepth {
		r.fail()
		return
	}
	c := r.code()
	switch {
	case c <= 0x7f || c >= 0xe0 || c == mpNil || c == mpFalse || c == mpTrue:
		return
	case c&0xf0 == 0x80:
		r.skipN(2*int(c&0x0f), depth)
		return
	case c&0xf0 == 0x90:
		r.skipN(int(c&0x0f), depth)
		return
	case c&0xe0 == 0xa0:
		r.take(int(c & 0x1f))
		return
	}
	switch c {
	case mpUint8, mpInt8:
		r.take(1)
	case mpUint16, mpInt16:
		r.take(2)
	case mpUint32, mpInt32, 0xca:
		r.take(4)
	case mpUint64, mpInt64, 0xcb:
		r.take(8)
	case mpBin8, mpStr8:
		r.take(int(r.be(1)))
	case mpBin16, mpStr16:
		r.take(int(r.be(2)))
	case mpBin32, mpStr32:
		r.take(int(r.be(4)))
	case mpArray16:
		r.skipN(r.count(r.be(2)), depth)
	case mpArray32:
		r.skipN(r.count(r.be(4)), depth)
	case mpMap16:
		r.skipN(2*r.count(r.be(2)), depth)
	case mpMap32:
		r.skipN(2*r.count(r.be(4)), depth)
	default:
		r.fail() // ext and reserved codes: the library's business
	}
}

func (r *mpReader) skipN(n, depth int) {
	for i := 0; i < n && !r.bad; i++ {
		r.skipDepth(depth + 1)
	}
}

// structLen reads the header of an as_array struct with fields fields: an
// empty array or nil means the zero value (0); any other count than fields
// is the library's "number of fields changed" error.
func (r *mpReader) structLen(fields int) int {
	n := r.arrayLen()
	if n <= 0 {
		return 0
	}
	if n != fields {
		r.fail()
	}
	return n
}

// version reads an optional *vclock.Version.
func (r *mpReader) version() *vclock.Version {
	if r.isNil() {
		return nil
	}
	v := &vclock.Version{}
	n := r.arrayLen() // 3, or 4 with Expires
	if n <= 0 {
		return v
	}
	if n != 3 && n != 4 {
		r.fail()
		return v
	}
	if r.isNil() {
		// A nil Dot decodes to the zero Dot.
	} else if r.structLen(2) != 0 {
		v.Dot.Counter = r.uint()
		v.Dot.Actor = r.strShared(&r.actor)
	}
	v.Value = r.bytes()
	v.Tombstone = r.bool()
	if n == 4 {
		v.Expires = r.int()
	}
	return v
}

// DecodeVersion decodes a *vclock.Version (nil for msgpack nil) from the
// start of data and returns the rest. ok is false when the input is not
// what AppendVersion writes in any of its forms; decode it with msgpack
// then, which also reports the error.
func DecodeVersion(data []byte) (v *vclock.Version, rest []byte, ok bool) {
	r := mpReader{b: data}
	v = r.version()
	if r.bad {
		return nil, nil, false
	}
	return v, r.b, true
}

// appendLib appends v's library encoding, or nil when isNil: the siblings
// states are rare on the data path and have their own validating codec.
func appendLib(dst []byte, isNil bool, v any) []byte {
	if isNil {
		return append(dst, mpNil)
	}
	b, err := msgpack.Marshal(v)
	if err != nil {
		return append(dst, mpNil) // unreachable for these types; the reader then sees no state
	}
	return append(dst, b...)
}

// lib decodes the next value with the library (nil leaves v unset and
// returns false).
func (r *mpReader) lib(v any) bool {
	if r.isNil() {
		return false
	}
	start := r.b
	r.skip()
	if r.bad {
		return false
	}
	if err := msgpack.Unmarshal(start[:len(start)-len(r.b)], v); err != nil {
		r.fail()
		return false
	}
	return true
}

func (r *mpReader) dvv() *vclock.DVVSet {
	if r.isNil() { // the common case: no allocation
		return nil
	}
	s := new(vclock.DVVSet)
	if !r.lib(s) {
		return nil
	}
	return s
}

// --- storage-node messages (as_array structs) ---
//
// Every node message is an array: a batch is [proto, items, map version]
// ([proto, items] in node protocol 1, which decodes with map version 0)
// and a reply is [results, more]; each item or result is an as_array
// struct. appendItems and decodeNode hold that shape once; the per-type
// append functions below and mpReader.item write and read the fields of
// one item.
//
// The msgpack library reads only the 3-element batch form (it wants as
// many elements as the struct has fields); the hand-written decoders here
// read both, and every reader of node messages goes through them.

// legacyBatch reports whether a batch of node protocol proto is written
// in the 2-element form of protocol 1, without a map version.
func legacyBatch(proto int) bool { return proto == 1 }

// appendItems appends items as an array (nil as nil), each by item.
func appendItems[T any](dst []byte, items []T, item func([]byte, *T) []byte) []byte {
	if items == nil {
		return append(dst, mpNil)
	}
	dst = appendArrayLen(dst, len(items))
	for i := range items {
		dst = item(dst, &items[i])
	}
	return dst
}

// nodeItem is an item of a node message: the types mpReader.item reads.
type nodeItem interface {
	subjects.NodeWrite | subjects.NodeRead | subjects.NodeWriteResult | subjects.NodeReadResult
}

// decodeNode reads a node message: a batch [proto, items, mapVersion] or
// [proto, items] when proto is set, a reply [items, more] when more is
// set. Each item is an as_array struct of fields elements.
func decodeNode[T nodeItem](data []byte, proto *int, items *[]T, more *bool, mapVersion *uint64, fields int) bool {
	r := mpReader{b: data}
	n := r.arrayLen()
	if n > 0 && n != 2 && (n != 3 || mapVersion == nil) {
		r.fail()
	}
	if n <= 0 || r.bad {
		return !r.bad
	}
	if proto != nil {
		*proto = int(r.int())
	}
	if n := r.arrayLen(); n >= 0 {
		s := make([]T, r.count(uint64(n)))
		*items = s
		for i := 0; i < len(s) && !r.bad; i++ {
			if r.structLen(fields) != 0 {
				r.item(&s[i])
			}
		}
	}
	if more != nil {
		*more = r.bool()
	}
	if n == 3 {
		*mapVersion = r.uint()
	}
	return !r.bad
}

// item reads the fields of one node-message item into x. A type switch
// rather than a function value per type: a function value would take r
// to the heap (an allocation a message).
func (r *mpReader) item(x any) {
	switch x := x.(type) {
	case *subjects.NodeWrite:
		x.ID = r.uint()
		x.Tenant = r.strShared(&r.tenant)
		x.Key = r.str()
		x.LWW = r.version()
		x.DVV = r.dvv()
		if !r.isNil() {
			c := new(subjects.Coordinate)
			if r.lib(c) {
				x.Coordinate = c
			}
		}
	case *subjects.NodeRead:
		x.ID = r.uint()
		x.Tenant = r.strShared(&r.tenant)
		x.Key = r.str()
	case *subjects.NodeWriteResult:
		r.result(&x.ID, &x.Err, &x.LWW, &x.DVV)
		x.Kind = r.str()
	case *subjects.NodeReadResult:
		r.result(&x.ID, &x.Err, &x.LWW, &x.DVV)
	}
}

// appendResult appends the elements every node result starts with: ID,
// Err, LWW, DVV (a write result adds Kind).
func appendResult(dst []byte, id uint64, err string, lww *vclock.Version, dvv *vclock.DVVSet) []byte {
	dst = appendUint(dst, id)
	dst = appendStr(dst, err)
	dst = AppendVersion(dst, lww)
	return appendLib(dst, dvv == nil, dvv)
}

// result reads what appendResult appends.
func (r *mpReader) result(id *uint64, err *string, lww **vclock.Version, dvv **vclock.DVVSet) {
	*id = r.uint()
	*err = r.str()
	*lww = r.version()
	*dvv = r.dvv()
}

// unmarshalNode decodes data into v with fast, and when fast does not take
// it, with the library; v is overwritten either way.
func unmarshalNode[T any](data []byte, v *T, fast func([]byte, *T) bool) error {
	if fast(data, v) {
		return nil
	}
	var zero T
	*v = zero
	return DecodeMsgpack(data, v)
}

// MarshalNodeWriteBatch appends b's msgpack to dst: [Proto, Items,
// MapVersion], or [Proto, Items] when Proto is 1 (MapVersion is then not
// sent).
func MarshalNodeWriteBatch(dst []byte, b *subjects.NodeWriteBatch) []byte {
	dst = appendItems(appendInt(append(dst, batchArray(b.Proto)), int64(b.Proto)), b.Items, AppendNodeWrite)
	return AppendNodeBatchEnd(dst, b.Proto, b.MapVersion)
}

func batchArray(proto int) byte {
	if legacyBatch(proto) {
		return 0x92
	}
	return 0x93
}

// AppendNodeWriteBatchHeader appends the start of a NodeWriteBatch of n
// items in node protocol proto; AppendNodeWrite appends each item, and
// AppendNodeBatchEnd the end. Together they encode a batch without
// building a NodeWriteBatch.
func AppendNodeWriteBatchHeader(dst []byte, proto, n int) []byte {
	return appendArrayLen(appendInt(append(dst, batchArray(proto)), int64(proto)), n)
}

// AppendNodeBatchEnd appends what follows the items of a write or read
// batch of node protocol proto: mapVersion, or nothing in protocol 1.
func AppendNodeBatchEnd(dst []byte, proto int, mapVersion uint64) []byte {
	if legacyBatch(proto) {
		return dst
	}
	return appendUint(dst, mapVersion)
}

// AppendNodeWrite appends one item of a NodeWriteBatch.
func AppendNodeWrite(dst []byte, w *subjects.NodeWrite) []byte {
	dst = append(dst, 0x96)
	dst = appendUint(dst, w.ID)
	dst = appendStr(dst, w.Tenant)
	dst = appendStr(dst, w.Key)
	dst = AppendVersion(dst, w.LWW)
	dst = appendLib(dst, w.DVV == nil, w.DVV)
	return appendLib(dst, w.Coordinate == nil, w.Coordinate)
}

// UnmarshalNodeWriteBatch decodes data into b, which it overwrites.
func UnmarshalNodeWriteBatch(data []byte, b *subjects.NodeWriteBatch) error {
	return unmarshalNode(data, b, decodeNodeWriteBatch)
}

func decodeNodeWriteBatch(data []byte, b *subjects.NodeWriteBatch) bool {
	*b = subjects.NodeWriteBatch{}
	return decodeNode(data, &b.Proto, &b.Items, nil, &b.MapVersion, 6)
}

// MarshalNodeWriteReply appends r's msgpack to dst.
func MarshalNodeWriteReply(dst []byte, rep *subjects.NodeWriteReply) []byte {
	return appendBool(appendItems(append(dst, 0x92), rep.Results, appendNodeWriteResult), rep.More)
}

func appendNodeWriteResult(dst []byte, x *subjects.NodeWriteResult) []byte {
	return appendStr(appendResult(append(dst, 0x95), x.ID, x.Err, x.LWW, x.DVV), x.Kind)
}

// UnmarshalNodeWriteReply decodes data into rep, which it overwrites.
func UnmarshalNodeWriteReply(data []byte, rep *subjects.NodeWriteReply) error {
	return unmarshalNode(data, rep, decodeNodeWriteReply)
}

func decodeNodeWriteReply(data []byte, rep *subjects.NodeWriteReply) bool {
	*rep = subjects.NodeWriteReply{}
	return decodeNode(data, nil, &rep.Results, &rep.More, nil, 5)
}

// MarshalNodeReadBatch appends b's msgpack to dst, in the form
// MarshalNodeWriteBatch writes.
func MarshalNodeReadBatch(dst []byte, b *subjects.NodeReadBatch) []byte {
	dst = appendItems(appendInt(append(dst, batchArray(b.Proto)), int64(b.Proto)), b.Items, AppendNodeRead)
	return AppendNodeBatchEnd(dst, b.Proto, b.MapVersion)
}

// AppendNodeReadBatchHeader appends the start of a NodeReadBatch of n
// items; AppendNodeRead appends each item, and AppendNodeBatchEnd the end.
func AppendNodeReadBatchHeader(dst []byte, proto, n int) []byte {
	return AppendNodeWriteBatchHeader(dst, proto, n) // the same [proto, items] header
}

// AppendNodeRead appends one item of a NodeReadBatch.
func AppendNodeRead(dst []byte, x *subjects.NodeRead) []byte {
	dst = append(dst, 0x93)
	dst = appendUint(dst, x.ID)
	dst = appendStr(dst, x.Tenant)
	return appendStr(dst, x.Key)
}

// UnmarshalNodeReadBatch decodes data into b, which it overwrites.
func UnmarshalNodeReadBatch(data []byte, b *subjects.NodeReadBatch) error {
	return unmarshalNode(data, b, decodeNodeReadBatch)
}

func decodeNodeReadBatch(data []byte, b *subjects.NodeReadBatch) bool {
	*b = subjects.NodeReadBatch{}
	return decodeNode(data, &b.Proto, &b.Items, nil, &b.MapVersion, 3)
}

// MarshalNodeReadReply appends rep's msgpack to dst.
func MarshalNodeReadReply(dst []byte, rep *subjects.NodeReadReply) []byte {
	return appendBool(appendItems(append(dst, 0x92), rep.Results, appendNodeReadResult), rep.More)
}

func appendNodeReadResult(dst []byte, x *subjects.NodeReadResult) []byte {
	return appendResult(append(dst, 0x94), x.ID, x.Err, x.LWW, x.DVV)
}

// UnmarshalNodeReadReply decodes data into rep, which it overwrites.
func UnmarshalNodeReadReply(data []byte, rep *subjects.NodeReadReply) error {
	return unmarshalNode(data, rep, decodeNodeReadReply)
}

func decodeNodeReadReply(data []byte, rep *subjects.NodeReadReply) bool {
	*rep = subjects.NodeReadReply{}
	return decodeNode(data, nil, &rep.Results, &rep.More, nil, 4)
}

// --- client messages (maps keyed by field name) ---

// appendRequest writes r as the library does: omitempty fields left out
// when empty.
func appendRequest(dst []byte, r *subjects.Request) []byte {
	n := 1
	for _, present := range [...]bool{len(r.Value) > 0, r.Consistency != "", r.Context != "", r.IdempotencyKey != "", r.TimeoutMS != 0, r.TTLMs != 0} {
		if present {
			n++
		}
	}
	dst = appendMapLen(dst, n)
	dst = appendKey(appendStr(dst, "key"), r.Key)
	if len(r.Value) > 0 {
		dst = appendBin(appendStr(dst, "value"), r.Value)
	}
	if r.Consistency != "" {
		dst = appendStr(appendStr(dst, "consistency"), r.Consistency)
	}
	if r.Context != "" {
		dst = appendStr(appendStr(dst, "context"), r.Context)
	}
	if r.IdempotencyKey != "" {
		dst = appendStr(appendStr(dst, "idempotency_key"), r.IdempotencyKey)
	}
	if r.TimeoutMS != 0 {
		dst = appendInt(appendStr(dst, "timeout_ms"), r.TimeoutMS)
	}
	if r.TTLMs != 0 {
		dst = appendInt(appendStr(dst, "ttl_ms"), r.TTLMs)
	}
	return dst
}

// once marks field bit as read and fails on a second one: a repeated
// field is refused (the library path names it), never resolved by order.
func (r *mpReader) once(seen *uint32, bit uint32) {
	if *seen&bit != 0 {
		r.fail()
	}
	*seen |= bit
}

// fieldBit numbers a client message's known field names for once.
func fieldBit(k []byte) uint32 {
	switch string(k) {
	case "key":
		return 1 << 0
	case "value":
		return 1 << 1
	case "consistency":
		return 1 << 2
	case "context":
		return 1 << 3
	case "idempotency_key":
		return 1 << 4
	case "timeout_ms":
		return 1 << 5
	case "success":
		return 1 << 6
	case "is_duplicate":
		return 1 << 7
	case "replica_count":
		return 1 << 8
	case "found":
		return 1 << 9
	case "siblings":
		return 1 << 10
	case "ttl_ms":
		return 1 << 11
	}
	return 0
}

// maxUnknownFields is how many unknown fields a client message may carry
// on the fast path; more go to the library path, which finds repeats with
// a map instead of comparing each with each.
const maxUnknownFields = 8

// fieldName reads a map key and fails on one seen before in this map:
// known ones by bit, unknown ones (skipped, but still sent only once) by
// comparison with the few seen.
func (r *mpReader) fieldName(seen *uint32) []byte {
	k, _ := r.rawBytes()
	if bit := fieldBit(k); bit != 0 {
		r.once(seen, bit)
		return k
	}
	if len(r.unknown) == maxUnknownFields {
		r.fail()
		return k
	}
	for _, u := range r.unknown {
		if string(u) == string(k) {
			r.fail()
			return k
		}
	}
	r.unknown = append(r.unknown, k)
	return k
}

// done reports whether a client message decoded cleanly: no unexpected
// byte, a map (not nil), and nothing after it (trailing bytes go to the
// library path, which refuses them).
func (r *mpReader) done(n int) bool { return !r.bad && n >= 0 && len(r.b) == 0 }

// intOrZero reads an integer, nil as 0 (as the library decodes nil into
// an int field).
func (r *mpReader) intOrZero() int64 {
	if r.isNil() {
		return 0
	}
	return r.int()
}

// appendKey writes a client message's key as str when it is UTF-8 and as
// bin otherwise: msgpack's str is UTF-8 text, and keys are any bytes.
func appendKey(b []byte, key string) []byte {
	if utf8.ValidString(key) {
		return appendStr(b, key)
	}
	return appendBin(b, []byte(key))
}

// decodeRequest decodes a Request map into r, setting the fields present
// as the library does; false means "ask the library".
func decodeRequest(data []byte, req *subjects.Request) bool {
	r := mpReader{b: data}
	n := r.mapLen()
	var seen uint32
	for i := 0; i < n && !r.bad; i++ {
		switch string(r.fieldName(&seen)) {
		case "key":
			req.Key = r.str()
		case "value":
			req.Value = r.bytes()
		case "consistency":
			req.Consistency = r.str()
		case "context":
			req.Context = r.str()
		case "idempotency_key":
			req.IdempotencyKey = r.str()
		case "timeout_ms":
			req.TimeoutMS = r.intOrZero()
		case "ttl_ms":
			req.TTLMs = r.intOrZero()
		default:
			r.skip()
		}
	}
	return r.done(n)
}

func appendWriteReply(dst []byte, w *subjects.WriteReply) []byte {
	dst = append(dst, 0x87)
	dst = appendBool(appendStr(dst, "success"), w.Success)
	dst = appendKey(appendStr(dst, "key"), w.Key)
	dst = appendStr(appendStr(dst, "context"), w.Context)
	dst = appendStr(appendStr(dst, "idempotency_key"), w.IdempotencyKey)
	dst = appendBool(appendStr(dst, "is_duplicate"), w.IsDuplicate)
	dst = appendInt(appendStr(dst, "replica_count"), int64(w.ReplicaCount))
	return appendStr(appendStr(dst, "consistency"), w.Consistency)
}

func decodeWriteReply(data []byte, w *subjects.WriteReply) bool {
	r := mpReader{b: data}
	n := r.mapLen()
	var seen uint32
	for i := 0; i < n && !r.bad; i++ {
		switch string(r.fieldName(&seen)) {
		case "success":
			w.Success = r.bool()
		case "key":
			w.Key = r.str()
		case "context":
			w.Context = r.str()
		case "idempotency_key":
			w.IdempotencyKey = r.str()
		case "is_duplicate":
			w.IsDuplicate = r.bool()
		case "replica_count":
			w.ReplicaCount = int(r.intOrZero())
		case "consistency":
			w.Consistency = r.str()
		default:
			r.skip()
		}
	}
	return r.done(n)
}

func appendGetReply(dst []byte, g *subjects.GetReply) []byte {
	fields := byte(7)
	if len(g.Siblings) > 0 {
		fields++
	}
	if g.ExpiresAtMs != 0 {
		fields++
	}
	dst = append(dst, 0x80|fields)
	dst = appendBool(appendStr(dst, "success"), g.Success)
	dst = appendKey(appendStr(dst, "key"), g.Key)
	dst = appendBool(appendStr(dst, "found"), g.Found)
	dst = appendBin(appendStr(dst, "value"), g.Value)
	dst = appendStr(appendStr(dst, "context"), g.Context)
	if len(g.Siblings) > 0 {
		dst = appendArrayLen(appendStr(dst, "siblings"), len(g.Siblings))
		for _, s := range g.Siblings {
			dst = appendBin(dst, s)
		}
	}
	if g.ExpiresAtMs != 0 {
		dst = appendInt(appendStr(dst, "expires_at_ms"), g.ExpiresAtMs)
	}
	dst = appendInt(appendStr(dst, "replica_count"), int64(g.ReplicaCount))
	return appendStr(appendStr(dst, "consistency"), g.Consistency)
}

func decodeGetReply(data []byte, g *subjects.GetReply) bool {
	r := mpReader{b: data}
	n := r.mapLen()
	var seen uint32
	for i := 0; i < n && !r.bad; i++ {
		switch string(r.fieldName(&seen)) {
		case "success":
			g.Success = r.bool()
		case "key":
			g.Key = r.str()
		case "found":
			g.Found = r.bool()
		case "value":
			g.Value = r.bytes()
		case "context":
			g.Context = r.str()
		case "siblings":
			m := r.arrayLen()
			switch {
			case m < 0:
				g.Siblings = nil
			default:
				g.Siblings = make([][]byte, r.count(uint64(m)))
				for j := 0; j < len(g.Siblings) && !r.bad; j++ {
					g.Siblings[j] = r.bytes()
				}
			}
		case "expires_at_ms":
			g.ExpiresAtMs = r.intOrZero()
		case "replica_count":
			g.ReplicaCount = int(r.intOrZero())
		case "consistency":
			g.Consistency = r.str()
		default:
			r.skip()
		}
	}
	return r.done(n)
}

// marshalFast encodes the client messages without reflection; ok is false
// for every other type.
func marshalFast(v any) (b []byte, ok bool) {
	switch m := v.(type) {
	case *subjects.NodeWriteBatch:
		return MarshalNodeWriteBatch(nil, m), true
	case *subjects.NodeReadBatch:
		return MarshalNodeReadBatch(nil, m), true
	case *subjects.PartitionScan:
		b, err := MarshalPartitionScan(nil, m)
		return b, err == nil
	case *subjects.Request:
		return appendRequest(make([]byte, 0, 64+len(m.Key)+len(m.Value)), m), true
	case *subjects.WriteReply:
		return appendWriteReply(make([]byte, 0, 160+len(m.Key)), m), true
	case *subjects.GetReply:
		return appendGetReply(make([]byte, 0, 128+len(m.Key)+len(m.Value)), m), true
	}
	return nil, false
}

// unmarshalFast decodes the client messages without reflection; false
// means the caller must use the library (other types, or input the fast
// path does not take).
func unmarshalFast(data []byte, v any) bool {
	switch m := v.(type) {
	case *subjects.NodeWriteBatch:
		return decodeNodeWriteBatch(data, m)
	case *subjects.NodeReadBatch:
		return decodeNodeReadBatch(data, m)
	case *subjects.PartitionScan:
		return UnmarshalPartitionScan(data, m) == nil
	case *subjects.Request:
		return decodeRequest(data, m)
	case *subjects.WriteReply:
		return decodeWriteReply(data, m)
	case *subjects.GetReply:
		return decodeGetReply(data, m)
	}
	return false
}

// --- partition scans ---

// partitionScanV1 is PartitionScan as node protocol 1 writes it: six
// elements, no MapVersion.
type partitionScanV1 struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int
	Partitions int
	Partition  uint32
	Cursor     []byte
	Limit      int
	MaxBytes   int
}

// partitionScanV2 is PartitionScan without a tenant filter: the seven
// elements of node protocol 2 as first shipped.
type partitionScanV2 struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int
	Partitions int
	Partition  uint32
	Cursor     []byte
	Limit      int
	MaxBytes   int
	MapVersion uint64
}

// partitionScanV3 is the eight-element form: a tenant filter, no Rebuild.
type partitionScanV3 struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int
	Partitions int
	Partition  uint32
	Cursor     []byte
	Limit      int
	MaxBytes   int
	MapVersion uint64
	Tenants    []string
}

// MarshalPartitionScan appends s's msgpack to dst: the six elements of
// node protocol 1 when s.Proto is 1 (MapVersion and Tenants are then not
// sent), seven without a tenant filter, eight with one, nine for a
// rebuild's scan (PartitionScan.Rebuild).
func MarshalPartitionScan(dst []byte, s *subjects.PartitionScan) ([]byte, error) {
	var v any = s
	switch {
	case legacyBatch(s.Proto):
		v = &partitionScanV1{Proto: s.Proto, Partitions: s.Partitions, Partition: s.Partition, Cursor: s.Cursor, Limit: s.Limit, MaxBytes: s.MaxBytes}
	case len(s.Tenants) == 0 && !s.Rebuild:
		v = &partitionScanV2{Proto: s.Proto, Partitions: s.Partitions, Partition: s.Partition, Cursor: s.Cursor, Limit: s.Limit, MaxBytes: s.MaxBytes, MapVersion: s.MapVersion}
	case !s.Rebuild:
		v = &partitionScanV3{Proto: s.Proto, Partitions: s.Partitions, Partition: s.Partition, Cursor: s.Cursor, Limit: s.Limit, MaxBytes: s.MaxBytes, MapVersion: s.MapVersion, Tenants: s.Tenants}
	}
	b, err := msgpack.Marshal(v)
	if err != nil {
		return dst, fmt.Errorf("encode partition scan: %w", err)
	}
	return append(dst, b...), nil
}

// UnmarshalPartitionScan decodes data, in any form MarshalPartitionScan
// writes, into s, which it overwrites; the six-element form decodes with
// MapVersion 0, the six- and seven-element forms with no tenant filter.
// Bytes after the message are refused.
func UnmarshalPartitionScan(data []byte, s *subjects.PartitionScan) error {
	*s = subjects.PartitionScan{}
	if len(data) == 0 {
		return errors.New("empty partition scan")
	}
	if err := checkMsgpackMessage(data); err != nil {
		return err
	}
	switch data[0] {
	case 0x96:
		var v1 partitionScanV1
		if err := msgpack.Unmarshal(data, &v1); err != nil {
			return err
		}
		*s = subjects.PartitionScan{Proto: v1.Proto, Partitions: v1.Partitions, Partition: v1.Partition, Cursor: v1.Cursor, Limit: v1.Limit, MaxBytes: v1.MaxBytes}
		return nil
	case 0x97:
		var v2 partitionScanV2
		if err := msgpack.Unmarshal(data, &v2); err != nil {
			return err
		}
		*s = subjects.PartitionScan{Proto: v2.Proto, Partitions: v2.Partitions, Partition: v2.Partition, Cursor: v2.Cursor, Limit: v2.Limit, MaxBytes: v2.MaxBytes, MapVersion: v2.MapVersion}
		return nil
	case 0x98:
		var v3 partitionScanV3
		if err := msgpack.Unmarshal(data, &v3); err != nil {
			return err
		}
		*s = subjects.PartitionScan{Proto: v3.Proto, Partitions: v3.Partitions, Partition: v3.Partition, Cursor: v3.Cursor, Limit: v3.Limit, MaxBytes: v3.MaxBytes, MapVersion: v3.MapVersion, Tenants: v3.Tenants}
		return nil
	}
	return msgpack.Unmarshal(data, s)
}

// --- partition scan replies ---

// AppendPartitionScanReply appends rep's msgpack to dst, byte for byte
// what the library writes ([Records, Cursor], each record [Tenant, Key,
// State]), without reflection or the library's buffer growth: a scan page
// is up to a megabyte of records, written once into a buffer sized by
// the caller.
func AppendPartitionScanReply(dst []byte, rep *subjects.PartitionScanReply) []byte {
	dst = append(dst, 0x92)
	if rep.Records == nil {
		dst = append(dst, mpNil)
	} else {
		dst = appendArrayLen(dst, len(rep.Records))
		for i := range rep.Records {
			dst = AppendPartitionRecord(dst, rep.Records[i].Tenant, rep.Records[i].Key, rep.Records[i].State)
		}
	}
	return appendBin(dst, rep.Cursor)
}

// AppendPartitionScanReplyHeader appends the start of a PartitionScanReply
// of n records (n >= 0); AppendPartitionRecord appends each, then
// appendBin the cursor (AppendPartitionScanReplyEnd). Together they write
// what AppendPartitionScanReply writes, for a caller that encodes records
// as it reads them.
func AppendPartitionScanReplyHeader(dst []byte, n int) []byte {
	return appendArrayLen(append(dst, 0x92), n)
}

// AppendPartitionRecord appends one subjects.PartitionRecord.
func AppendPartitionRecord(dst []byte, tenant, key string, state []byte) []byte {
	return appendBin(appendStr(appendStr(append(dst, 0x93), tenant), key), state)
}

// AppendPartitionRecordBytes is AppendPartitionRecord for a tenant and
// key held as bytes (a store iterator's), converting nothing.
func AppendPartitionRecordBytes(dst []byte, tenant, key, state []byte) []byte {
	dst = append(appendStrHeader(append(dst, 0x93), len(tenant)), tenant...)
	dst = append(appendStrHeader(dst, len(key)), key...)
	return appendBin(dst, state)
}

// AppendPartitionScanReplyEnd appends the cursor that ends a reply begun
// by AppendPartitionScanReplyHeader.
func AppendPartitionScanReplyEnd(dst []byte, cursor []byte) []byte {
	return appendBin(dst, cursor)
}

// UnmarshalPartitionScanReply decodes data into rep, which it overwrites,
// as the library would, except that each record's State aliases data (the
// caller keeps data while it uses them). Input the fast path does not
// take goes to the library.
func UnmarshalPartitionScanReply(data []byte, rep *subjects.PartitionScanReply) error {
	return unmarshalNode(data, rep, decodePartitionScanReply)
}

func decodePartitionScanReply(data []byte, rep *subjects.PartitionScanReply) bool {
	*rep = subjects.PartitionScanReply{}
	r := mpReader{b: data}
	if r.structLen(2) != 2 {
		return false
	}
	if n := r.arrayLen(); n >= 0 && !r.bad {
		if n > len(r.b) { // each record takes at least a byte
			return false
		}
		rep.Records = make([]subjects.PartitionRecord, n)
		var tenant string
		for i := range rep.Records {
			if r.structLen(3) != 3 {
				return false
			}
			rec := &rep.Records[i]
			rec.Tenant = r.strShared(&tenant)
			rec.Key = r.str()
			rec.State = r.bytes()
		}
	}
	rep.Cursor = r.bytes()
	return !r.bad && len(r.b) == 0
}
