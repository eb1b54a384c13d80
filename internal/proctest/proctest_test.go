package proctest

import (
	"debug/buildinfo"
	"fmt"
	"testing"
)

// recordTB records Errorf calls instead of failing the test.
type recordTB struct {
	testing.TB
	errors []string
}

func (r *recordTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func TestCheckRacesFailsOnARaceReport(t *testing.T) {
	for _, tc := range []struct {
		name   string
		output string
		fails  bool
	}{
		{"clean", "level=INFO msg=ready\n", false},
		{"race", "==================\nWARNING: DATA RACE\nWrite at 0x00c000 by goroutine 7:\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordTB{TB: t}
			p := &Process{tb: rec, args: []string{"storage"}, out: &syncBuffer{}}
			_, _ = p.out.Write([]byte(tc.output))
			p.checkRaces()
			if got := len(rec.errors) > 0; got != tc.fails {
				t.Fatalf("checkRaces on %q: failed=%v, want %v (%v)", tc.output, got, tc.fails, rec.errors)
			}
		})
	}
}

// The product binary is race-enabled exactly when this test binary is, as
// its build settings record.
func TestBinaryMatchesRaceMode(t *testing.T) {
	path := Binary(t)
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("read build info of %s: %v", path, err)
	}
	race := false
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			race = true
		}
	}
	if race != raceEnabled {
		t.Fatalf("binary %s built with -race=%v; the test binary has race=%v", path, race, raceEnabled)
	}
}
