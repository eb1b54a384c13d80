package settings

import (
	"errors"
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	n := 0
	if err := Default("x: n", &n, 7); err != nil || n != 7 {
		t.Fatalf("zero: %d, %v", n, err)
	}
	d := 3 * time.Second
	if err := Default("x: d", &d, time.Second); err != nil || d != 3*time.Second {
		t.Fatalf("set: %s, %v", d, err)
	}
	neg := -1
	if err := Default("x: neg", &neg, 7); err == nil || err.Error() != "x: neg -1 is negative (0 takes the default, 7)" {
		t.Fatalf("negative: %v", err)
	}
}

func TestInvalid(t *testing.T) {
	sentinel, cause := errors.New("invalid configuration"), errors.New("x: bad")
	err := Invalid(cause, sentinel)
	if !errors.Is(err, sentinel) || !errors.Is(err, cause) || err.Error() != "x: bad" {
		t.Fatalf("Invalid: %v", err)
	}
	if Invalid(nil, sentinel) != nil {
		t.Fatal("Invalid(nil) is not nil")
	}
}
