package repair

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// Encode checks r and encodes it as msgpack.
func Encode(r *subjects.RepairRequest) ([]byte, error) {
	if err := check(r); err != nil {
		return nil, err
	}
	data, err := msgpack.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("repair: encode request: %w", err)
	}
	return data, nil
}

// Decode decodes and checks a repair request. It never panics.
func Decode(data []byte) (*subjects.RepairRequest, error) {
	var r subjects.RepairRequest
	if err := wire.Unmarshal(false, data, &r); err != nil {
		return nil, fmt.Errorf("repair: decode request: %w", err)
	}
	if err := check(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

// check reports why r cannot be carried out, or nil.
func check(r *subjects.RepairRequest) error {
	if err := subjects.ValidateTenantID(r.Tenant); err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	switch {
	case len(r.Key) == 0 || len(r.Key) > subjects.MaxKeyBytes:
		return fmt.Errorf("repair: key of %d bytes; want 1..%d", len(r.Key), subjects.MaxKeyBytes)
	case (r.LWW == nil || r.LWW.Dot.IsZero()) && r.DVV == nil:
		return errors.New("repair: request carries no version")
	case r.LWW != nil && r.DVV != nil:
		return errors.New("repair: request carries versions of both policies")
	case r.DVV != nil && r.DVV.Validate() != nil:
		return fmt.Errorf("repair: invalid siblings state: %w", r.DVV.Validate())
	case len(r.Targets) == 0:
		return errors.New("repair: request names no target node")
	}
	for _, t := range r.Targets {
		if err := subjects.ValidateNodeID(t); err != nil {
			return fmt.Errorf("repair: target: %w", err)
		}
	}
	return nil
}

// MsgID is the Nats-Msg-Id of r: a digest of everything that defines the
// work (tenant, key, version, sorted targets, reason), so the same repair
// published again within the stream's duplicate window, by this
// coordinator or another, is stored once.
func MsgID(r *subjects.RepairRequest) string {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(r.Tenant)
	field(r.Key)
	field(r.Reason)
	if v := r.LWW; v != nil {
		var c [8]byte
		binary.BigEndian.PutUint64(c[:], v.Dot.Counter)
		h.Write(c[:])
		field(v.Dot.Actor)
		if v.Tombstone {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
		field(string(v.Value))
		if v.Expires != 0 { // only when set: ids of versions without it are unchanged
			var x [8]byte
			binary.BigEndian.PutUint64(x[:], uint64(v.Expires))
			h.Write(x[:])
		}
	}
	if st := r.DVV; st != nil {
		for _, e := range st.Entries {
			field(e.Actor)
			var c [8]byte
			binary.BigEndian.PutUint64(c[:], e.Counter)
			h.Write(c[:])
			for _, v := range e.Values {
				if v.Tombstone {
					h.Write([]byte{1})
				} else {
					h.Write([]byte{0})
				}
				field(string(v.Data))
				if v.Expires != 0 {
					var x [8]byte
					binary.BigEndian.PutUint64(x[:], uint64(v.Expires))
					h.Write([]byte{2})
					h.Write(x[:])
				}
			}
		}
	}
	targets := slices.Clone(r.Targets)
	slices.Sort(targets)
	for _, t := range targets {
		field(t)
	}
	return "r1-" + hex.EncodeToString(h.Sum(nil)[:16])
}
