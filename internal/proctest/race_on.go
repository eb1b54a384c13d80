//go:build race

package proctest

// raceEnabled reports whether this test binary runs under the race
// detector; the product binary is then built with -race too.
const raceEnabled = true
