package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// MaxMsgpackDepth is how deeply containers may nest in a message. quorumkv
// messages nest at most five deep.
const MaxMsgpackDepth = 32

// CheckMsgpack walks the first msgpack value in b without decoding it and
// rejects what the decoder would choke on: a container that declares more
// elements than there are bytes left (msgpack v5.4 allocates the declared
// length up front, so 6 bytes could ask for hundreds of gigabytes), a
// string, binary or extension longer than the input, nesting deeper than
// MaxMsgpackDepth (the decoder recurses), and the never-used byte 0xc1.
// It allocates nothing and costs one pass over the headers.
func CheckMsgpack(b []byte) error {
	_, err := checkMsgpack(b, 0)
	return err
}

// checkMsgpack checks the value at b[i:] as CheckMsgpack does and returns
// where it ends.
func checkMsgpack(b []byte, i int) (int, error) {
	var stack [MaxMsgpackDepth + 1]int // values still expected, per open container
	depth := 0
	stack[0] = 1
	for depth >= 0 {
		if stack[depth] == 0 {
			depth--
			continue
		}
		stack[depth]--
		if i >= len(b) {
			return 0, fmt.Errorf("msgpack: truncated at byte %d", i)
		}
		c := b[i]
		i++
		var (
			skip  int // payload bytes after the header
			items int // values a container adds
			err   error
		)
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			items = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			items = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		default:
			switch c {
			case 0xc4, 0xd9: // bin8, str8
				skip, i, err = length(b, i, 1)
			case 0xc5, 0xda: // bin16, str16
				skip, i, err = length(b, i, 2)
			case 0xc6, 0xdb: // bin32, str32
				skip, i, err = length(b, i, 4)
			case 0xc7, 0xc8, 0xc9: // ext8/16/32: length, then a type byte
				skip, i, err = length(b, i, 1<<(c-0xc7))
				skip++
			case 0xca, 0xce, 0xd2:
				skip = 4
			case 0xcb, 0xcf, 0xd3:
				skip = 8
			case 0xcc, 0xd0:
				skip = 1
			case 0xcd, 0xd1:
				skip = 2
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 plus a type byte
				skip = 1 + 1<<(c-0xd4)
			case 0xdc:
				items, i, err = length(b, i, 2)
			case 0xdd:
				items, i, err = length(b, i, 4)
			case 0xde:
				items, i, err = length(b, i, 2)
				items *= 2
			case 0xdf:
				items, i, err = length(b, i, 4)
				items *= 2
			default:
				return 0, fmt.Errorf("msgpack: invalid byte 0x%02x at %d", c, i-1)
			}
		}
		if err != nil {
			return 0, err
		}
		if skip > len(b)-i {
			return 0, fmt.Errorf("msgpack: value at byte %d needs %d bytes, %d remain", i, skip, len(b)-i)
		}
		i += skip
		if items > 0 {
			if items > len(b)-i {
				return 0, fmt.Errorf("msgpack: container at byte %d declares %d elements, only %d bytes remain", i, items, len(b)-i)
			}
			if depth == MaxMsgpackDepth {
				return 0, fmt.Errorf("msgpack: nested deeper than %d", MaxMsgpackDepth)
			}
			depth++
			stack[depth] = items
		}
	}
	return i, nil
}

// length reads an n-byte big-endian length at b[i:].
func length(b []byte, i, n int) (int, int, error) {
	if len(b)-i < n {
		return 0, i, fmt.Errorf("msgpack: truncated length at byte %d", i)
	}
	var v uint64
	switch n {
	case 1:
		v = uint64(b[i])
	case 2:
		v = uint64(binary.BigEndian.Uint16(b[i:]))
	default:
		v = uint64(binary.BigEndian.Uint32(b[i:]))
	}
	return int(v), i + n, nil
}

// DecodeMsgpack checks data with CheckMsgpack, then decodes it into v. Use
// it for every message that arrives over the network.
func DecodeMsgpack(data []byte, v any) error {
	if err := CheckMsgpack(data); err != nil {
		return err
	}
	return msgpack.Unmarshal(data, v)
}

// checkMsgpackMessage checks a client message (a request or reply, or an
// admin request) as CheckMsgpack does, and also refuses what the library
// would decode without a word: bytes after the message, and a key that
// appears twice in its top-level map (the library lets the last win).
func checkMsgpackMessage(b []byte) error {
	end, err := checkMsgpack(b, 0)
	if err != nil {
		return err
	}
	if end != len(b) {
		return fmt.Errorf("%d bytes after the message; send exactly one msgpack value", len(b)-end)
	}
	n, i := 0, 1
	switch c := b[0]; {
	case c >= 0x80 && c <= 0x8f:
		n = int(c & 0x0f)
	case c == 0xde:
		n, i = int(binary.BigEndian.Uint16(b[1:])), 3
	case c == 0xdf:
		n, i = int(binary.BigEndian.Uint32(b[1:])), 5
	default:
		return nil
	}
	seen := make(map[string]struct{}, n)
	for range n {
		kEnd, _ := checkMsgpack(b, i) // checked above
		k := mapKeyText(b[i:kEnd])
		if _, dup := seen[k]; dup {
			return fmt.Errorf("map key %q appears more than once; send each field once", k)
		}
		seen[k] = struct{}{}
		i, _ = checkMsgpack(b, kEnd)
	}
	return nil
}

// mapKeyText is the text of an encoded map key: the payload of a str or
// bin (the library reads either as a field name), else the encoding.
func mapKeyText(k []byte) string {
	c := k[0]
	switch {
	case c >= 0xa0 && c <= 0xbf:
		return string(k[1:])
	case c == 0xc4 || c == 0xd9:
		return string(k[2:])
	case c == 0xc5 || c == 0xda:
		return string(k[3:])
	case c == 0xc6 || c == 0xdb:
		return string(k[5:])
	}
	return string(k)
}
