package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
)

// command is one subcommand of the binary.
type command struct {
	name    string
	args    string // positional arguments, for usage
	summary string
	run     func(args []string) error
}

// usageError is bad command-line input: printed with the usage, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// newFlags returns a FlagSet for cmd whose usage lists every flag with its
// QUORUMKV_ environment fallback.
func newFlags(cmd, args, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: quorumkv %s [flags] %s\n\n%s\n\nflags (each also read from the environment variable shown):\n", cmd, args, summary)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "" && f.DefValue != "false" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(w, "  --%s  [%s]\n        %s%s\n", f.Name, envName(f.Name), f.Usage, def)
		})
	}
	return fs
}

func envName(flagName string) string {
	return "QUORUMKV_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse parses args into fs, allowing flags after positional arguments
// ("put KEY VALUE --tenant t"); everything after "--" is positional. Flags
// not given fall back to their QUORUMKV_ environment variable.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			// A malformed flag value is bad input like any other: exit 2.
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = usagef("%s=%q: %v", envName(f.Name), v, e)
			}
		}
	})
	return append(pos, tail...), err
}

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	level  string
	format string
}

// register adds the flags; a level already set in l is the default.
func (l *logFlags) register(fs *flag.FlagSet) {
	if l.level == "" {
		l.level = "info"
	}
	fs.StringVar(&l.level, "log-level", l.level, "debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "auto", "text (colour, for terminals), json, or auto (text on a terminal, else json)")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", l.level)
	}
	format := l.format
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	switch format {
	case "text":
		return slog.New(tint.NewHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly})), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
	}
	return nil, usagef("--log-format %q: use text, json or auto", l.format)
}

// natsFlags are the connection flags every command that talks to NATS
// takes.
type natsFlags struct {
	url      string
	creds    string
	user     string
	password string
	token    string
	inbox    string
	name     string
}

func (n *natsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&n.url, "nats", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&n.creds, "creds", "", "NATS credentials file (JWT + NKey)")
	fs.StringVar(&n.user, "user", "", "NATS user name")
	fs.StringVar(&n.password, "password", "", "NATS password")
	fs.StringVar(&n.token, "token", "", "NATS token")
	fs.StringVar(&n.inbox, "inbox-prefix", "", "custom inbox prefix for replies (when permissions restrict _INBOX)")
}

// connect dials NATS, retrying the first connection briefly so that
// processes started together (docker compose) find their server.
func (n *natsFlags) connect(name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(false),
	}
	if n.creds != "" {
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.user != "" || n.password != "" {
		opts = append(opts, nats.UserInfo(n.user, n.password))
	}
	if n.token != "" {
		opts = append(opts, nats.Token(n.token))
	}
	if n.inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(n.inbox))
	}
	if log != nil {
		opts = append(opts,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					log.Warn("NATS disconnected", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
		)
	}
	nc, err := nats.Connect(n.url, opts...)
	if err != nil {
		if errors.Is(err, nats.ErrNoServers) {
			return nil, fmt.Errorf("cannot reach NATS at %s (start one, or run `quorumkv dev`): %w: %w", n.url, client.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("connect to NATS at %s: %w", n.url, err)
	}
	return nc, nil
}
