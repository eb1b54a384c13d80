package deploy_test

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// confPath is the shipped NATS configuration, relative to this package.
const confPath = "../nats.conf"

// confVarRE finds the environment variables nats.conf refers to.
var confVarRE = regexp.MustCompile(`\$(QKV_[A-Z0-9_]+)`)

// secret is the test value of nats.conf's variable name: letters only, as
// nats.conf asks of real passwords.
func secret(name string) string {
	return "test" + strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "QKV_"), "_", ""))
}

// Users of nats.conf and the variables holding their passwords.
var userPasswordVar = map[string]string{
	"sys":         "QKV_SYS_PASSWORD",
	"admin":       "QKV_ADMIN_PASSWORD",
	"coordinator": "QKV_COORDINATOR_PASSWORD",
	"storage":     "QKV_STORAGE_PASSWORD",
	"repair":      "QKV_REPAIR_PASSWORD",
	"default":     "QKV_TENANT_DEFAULT_PASSWORD",
	"acme":        "QKV_TENANT_ACME_PASSWORD",
}

// password is user's password in the test configuration.
func password(tb testing.TB, user string) string {
	tb.Helper()
	v, ok := userPasswordVar[user]
	if !ok {
		tb.Fatalf("no user %q in nats.conf", user)
	}
	return secret(v)
}

// inboxPrefix is the inbox prefix nats.conf gives role, or "" for tenants
// (whose replies stay in their own account under the default _INBOX).
func inboxPrefix(user string) string {
	switch user {
	case "admin", "coordinator", "storage", "repair":
		return "_INBOX_" + user
	}
	return ""
}

// setConfEnv sets every variable nats.conf refers to: passwords to their
// test values, the server name, and routes (given, or none).
func setConfEnv(tb testing.TB, routes []string) {
	tb.Helper()
	text, err := os.ReadFile(confPath)
	if err != nil {
		tb.Fatalf("read nats.conf: %v", err)
	}
	vars := confVarRE.FindAllStringSubmatch(string(text), -1)
	if len(vars) == 0 {
		tb.Fatal("nats.conf refers to no QKV_ variables; the tests expect its secrets to come from the environment")
	}
	for _, m := range vars {
		switch name := m[1]; name {
		case "QKV_SERVER_NAME":
			tb.Setenv(name, "test")
		case "QKV_ROUTES":
			tb.Setenv(name, "["+strings.Join(routes, ", ")+"]")
		default:
			tb.Setenv(name, secret(name))
		}
	}
}

// loadConf parses the shipped nats.conf with test secrets and overrides
// what must differ in a test: addresses, store directory, logging.
func loadConf(tb testing.TB, routes []string) *server.Options {
	tb.Helper()
	setConfEnv(tb, routes)
	opts, err := server.ProcessConfigFile(confPath)
	if err != nil {
		tb.Fatalf("nats.conf: %v", err)
	}
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.HTTPPort = 0
	opts.StoreDir = tb.TempDir()
	opts.NoLog = os.Getenv("NATS_LOGGING") == ""
	opts.NoSigs = true
	return opts
}

// runServer starts one nats-server from nats.conf, without clustering.
func runServer(tb testing.TB) *server.Server {
	tb.Helper()
	opts := loadConf(tb, nil)
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.ServerName = "test"
	return startServer(tb, opts)
}

func startServer(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("nats-server: %v", err)
	}
	if os.Getenv("NATS_LOGGING") == "debug" {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		tb.Fatal("nats-server not ready within 10s")
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// conn is a client connection that records the server's asynchronous
// errors, where permission violations arrive.
type conn struct {
	*nats.Conn
	user string

	mu   sync.Mutex
	errs []error
}

// dial connects to url as user with its password and inbox prefix.
func dial(tb testing.TB, url, user string, extra ...nats.Option) *conn {
	tb.Helper()
	c, err := tryDial(url, user, password(tb, user), extra...)
	if err != nil {
		tb.Fatalf("connect as %s: %v", user, err)
	}
	tb.Cleanup(c.Close)
	return c
}

func tryDial(url, user, pass string, extra ...nats.Option) (*conn, error) {
	c := &conn{user: user}
	opts := []nats.Option{
		nats.Name("deploy-test-" + user),
		nats.UserInfo(user, pass),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			c.errs = append(c.errs, err)
			c.mu.Unlock()
		}),
	}
	if p := inboxPrefix(user); p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, err
	}
	c.Conn = nc
	return c, nil
}

// violation waits until the server reported a permissions violation whose
// text contains want, and reports whether it did.
func (c *conn) violation(want string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, err := range c.errs {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), want) {
				c.mu.Unlock()
				return true
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// mustNotPublish proves the server refuses c's publish to subject.
func (c *conn) mustNotPublish(tb testing.TB, subject string) {
	tb.Helper()
	if err := c.Publish(subject, []byte("x")); err != nil {
		tb.Fatalf("%s: publish %s: %v", c.user, subject, err)
	}
	if err := c.Flush(); err != nil {
		tb.Fatalf("%s: flush: %v", c.user, err)
	}
	if !c.violation(fmt.Sprintf("Publish to %q", subject)) {
		tb.Errorf("%s may publish to %s; nats.conf should refuse it", c.user, subject)
	}
}

// mustNotSubscribe proves the server refuses c's subscription to subject.
func (c *conn) mustNotSubscribe(tb testing.TB, subject string) {
	tb.Helper()
	sub, err := c.SubscribeSync(subject)
	if err != nil {
		tb.Fatalf("%s: subscribe %s: %v", c.user, subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.Flush(); err != nil {
		tb.Fatalf("%s: flush: %v", c.user, err)
	}
	if !c.violation(fmt.Sprintf("Subscription to %q", subject)) {
		tb.Errorf("%s may subscribe to %s; nats.conf should refuse it", c.user, subject)
	}
}
