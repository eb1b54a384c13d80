package subjects

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
	var stack [MaxMsgpackDepth + 1]int // values still expected, per open container
	depth := 0
	stack[0] = 1
	i := 0
	for depth >= 0 {
		if stack[depth] == 0 {
			depth--
			continue
		}
		stack[depth]--
		if i >= len(b) {
			return fmt.Errorf("msgpack: truncated at byte %d", i)
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
				return fmt.Errorf("msgpack: invalid byte 0x%02x at %d", c, i-1)
			}
		}
		if err != nil {
			return err
		}
		if skip > len(b)-i {
			return fmt.Errorf("msgpack: value at byte %d needs %d bytes, %d remain", i, skip, len(b)-i)
		}
		i += skip
		if items > 0 {
			if items > len(b)-i {
				return fmt.Errorf("msgpack: container at byte %d declares %d elements, only %d bytes remain", i, items, len(b)-i)
			}
			if depth == MaxMsgpackDepth {
				return fmt.Errorf("msgpack: nested deeper than %d", MaxMsgpackDepth)
			}
			depth++
			stack[depth] = items
		}
	}
	return nil
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
