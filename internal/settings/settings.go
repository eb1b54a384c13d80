// Package settings holds the two rules every component's Config.validate
// follows, so they are written once: a zero setting takes its default, a
// negative one is refused by name; and a refused Config is an error that
// matches the package's ErrInvalidConfig with its own message.
package settings

import "fmt"

// Number is a setting that may be defaulted by Default: a count or a
// time.Duration.
type Number interface {
	~int | ~int64
}

// Default sets *v to def when it is zero. A negative *v is an error naming
// the setting (component and name, as "coordinator: max batch") and
// saying that 0 takes def.
func Default[T Number](name string, v *T, def T) error {
	switch {
	case *v < 0:
		return fmt.Errorf("%s %v is negative (0 takes the default, %v)", name, *v, def)
	case *v == 0:
		*v = def
	}
	return nil
}

// Invalid returns err, when not nil, marked so that errors.Is(result,
// sentinel) holds; the message stays err's.
func Invalid(err, sentinel error) error {
	if err == nil {
		return nil
	}
	return invalid{err, sentinel}
}

type invalid struct{ err, sentinel error }

func (e invalid) Error() string   { return e.err.Error() }
func (e invalid) Unwrap() []error { return []error{e.err, e.sentinel} }
