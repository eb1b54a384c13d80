package deploy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/quorumkv/quorumkv/internal/proctest"
)

// No Docker engine runs where the tests do, so these tests read
// docker-compose.yml and the Dockerfile and check them against the real
// CLI, nats.conf and the repository: every command and flag exists, every
// file is there, the roles log in as their users, and the topology is the
// one docs/OPERATIONS.md describes.

const composePath = "../docker-compose.yml"

type compose struct {
	services map[string]map[string]any
	volumes  map[string]any
}

func loadCompose(t *testing.T) *compose {
	t.Helper()
	src, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := parseYAML(string(src))
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	top, ok := doc.(map[string]any)
	if !ok {
		t.Fatal("docker-compose.yml is not a mapping")
	}
	c := &compose{services: map[string]map[string]any{}}
	svcs, ok := top["services"].(map[string]any)
	if !ok {
		t.Fatal("docker-compose.yml has no services")
	}
	for name, v := range svcs {
		s, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("service %s is not a mapping", name)
		}
		c.services[name] = s
	}
	c.volumes, _ = top["volumes"].(map[string]any)
	return c
}

// strs returns v as a list of strings, or fails.
func strs(t *testing.T, what string, v any) []string {
	t.Helper()
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("%s is %T, want a list", what, v)
	}
	out := make([]string, len(list))
	for i, x := range list {
		s, ok := x.(string)
		if !ok {
			t.Fatalf("%s[%d] is %T, want a string", what, i, x)
		}
		out[i] = s
	}
	return out
}

// env returns a service's environment with ${VAR:-default} interpolated
// as compose would with none of the variables set.
func env(t *testing.T, name string, s map[string]any) map[string]string {
	t.Helper()
	out := map[string]string{}
	raw, _ := s["environment"].(map[string]any)
	for k, v := range raw {
		str, ok := v.(string)
		if !ok {
			t.Fatalf("%s: environment %s is %T, want a string", name, k, v)
		}
		out[k] = interpolate(str)
	}
	return out
}

var composeVarRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}`)

// interpolate substitutes ${VAR:-default} and ${VAR} with their defaults.
func interpolate(s string) string {
	return composeVarRE.ReplaceAllStringFunc(s, func(m string) string {
		return composeVarRE.FindStringSubmatch(m)[2]
	})
}

// isQuorumkv reports whether a service runs the image the Dockerfile builds.
func isQuorumkv(s map[string]any) bool {
	_, build := s["build"]
	img, _ := s["image"].(string)
	return build || strings.HasPrefix(img, "quorumkv:")
}

func image(s map[string]any) string { img, _ := s["image"].(string); return img }

func TestComposeTopology(t *testing.T) {
	c := loadCompose(t)
	roles := map[string][]string{}
	for name, s := range c.services {
		role := ""
		switch {
		case isQuorumkv(s):
			role = strs(t, name+".command", s["command"])[0]
		case strings.HasPrefix(image(s), "nats:"):
			role = "nats"
		case strings.HasPrefix(image(s), "postgres:"):
			role = "postgres"
		case strings.HasPrefix(image(s), "redis:"):
			role = "redis"
		default:
			t.Errorf("service %s runs unknown image %q", name, image(s))
		}
		roles[role] = append(roles[role], name)
	}
	want := map[string]int{"nats": 3, "postgres": 1, "redis": 1, "migrate": 1, "coordinator": 2, "storage": 3, "repair": 2, "status": 1}
	for role, n := range want {
		if len(roles[role]) != n {
			t.Errorf("%d %s services (%v), want %d", len(roles[role]), role, roles[role], n)
		}
	}
	for role, names := range roles {
		if _, ok := want[role]; !ok {
			t.Errorf("unexpected services %v running %s", names, role)
		}
	}

	// Every server, store and role has a health check or a completion
	// condition that the services after it wait on.
	for name, s := range c.services {
		if isQuorumkv(s) {
			if role := strs(t, name+".command", s["command"])[0]; role == "storage" || role == "migrate" || role == "status" {
				continue // no HTTP endpoint: storage (see OPERATIONS.md), one-shot jobs
			}
		}
		hc, ok := s["healthcheck"].(map[string]any)
		if !ok {
			t.Errorf("%s has no healthcheck", name)
			continue
		}
		strs(t, name+".healthcheck.test", hc["test"])
	}
	for name, s := range c.services {
		deps, _ := s["depends_on"].(map[string]any)
		for dep, v := range deps {
			d, ok := c.services[dep]
			if !ok {
				t.Errorf("%s depends on missing service %s", name, dep)
				continue
			}
			cond, _ := v.(map[string]any)["condition"].(string)
			switch cond {
			case "service_healthy":
				if _, ok := d["healthcheck"]; !ok {
					t.Errorf("%s waits for %s to be healthy, but it has no healthcheck", name, dep)
				}
			case "service_completed_successfully", "service_started":
			default:
				t.Errorf("%s depends on %s with condition %q", name, dep, cond)
			}
		}
		if isQuorumkv(s) {
			role := strs(t, name+".command", s["command"])[0]
			if role != "migrate" {
				for _, n := range roles["nats"] {
					if _, ok := deps[n]; !ok {
						t.Errorf("%s does not wait for %s", name, n)
					}
				}
			}
		}
	}
}

func TestComposeFilesAndVolumes(t *testing.T) {
	c := loadCompose(t)
	for name, s := range c.services {
		if b, ok := s["build"]; ok {
			ctx, ok := b.(string)
			if !ok {
				t.Fatalf("%s: build is %T; the test reads a context path", name, b)
			}
			if _, err := os.Stat(filepath.Join("..", ctx, "Dockerfile")); err != nil {
				t.Errorf("%s builds %s: %v", name, ctx, err)
			}
		}
		vols, ok := s["volumes"]
		if !ok {
			continue
		}
		for _, v := range strs(t, name+".volumes", vols) {
			src, _, _ := strings.Cut(v, ":")
			switch {
			case strings.HasPrefix(src, "./") || strings.HasPrefix(src, "../") || strings.HasPrefix(src, "/"):
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			default:
				if _, ok := c.volumes[src]; !ok {
					t.Errorf("%s uses volume %s, which is not declared", name, src)
				}
			}
		}
	}
	// Storage nodes and NATS servers keep their data on a volume each.
	for name, s := range c.services {
		if (isQuorumkv(s) && strs(t, name+".command", s["command"])[0] == "storage") || strings.HasPrefix(image(s), "nats:") {
			if _, ok := s["volumes"]; !ok {
				t.Errorf("%s keeps its data in the container", name)
			}
		}
	}
}

// TestDockerfile checks that the Dockerfile builds the binary the compose
// file runs, with the Go version go.mod asks for, and that it builds
// without cgo as the Dockerfile does.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(df)
	for _, want := range []string{"./cmd/quorumkv", "CGO_ENABLED=0", `ENTRYPOINT ["quorumkv"]`, "USER "} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	goVersion := goModLine(t, "go ")
	mm := strings.Join(strings.SplitN(goVersion, ".", 3)[:2], ".")
	if !strings.Contains(text, "FROM golang:"+mm) {
		t.Errorf("Dockerfile does not build with Go %s (go.mod says %s)", mm, goVersion)
	}
	// go list would compile nothing; build for real, as the Dockerfile does.
	cmd := exec.Command("go", "build", "-o", filepath.Join(t.TempDir(), "quorumkv"), "./cmd/quorumkv")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("cmd/quorumkv does not build without cgo: %v\n%s", err, out)
	}
}

// goModLine returns the rest of go.mod's first line that starts with prefix.
func goModLine(t *testing.T, prefix string) string {
	t.Helper()
	f, err := os.Open("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(strings.TrimPrefix(l, prefix))
		}
	}
	t.Fatalf("go.mod has no line %q", prefix)
	return ""
}

func TestComposeNATS(t *testing.T) {
	c := loadCompose(t)
	natsVersion := strings.Fields(goModLine(t, "github.com/nats-io/nats-server/v2 "))[0]
	confVars := map[string]bool{}
	text, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range confVarRE.FindAllStringSubmatch(string(text), -1) {
		confVars[m[1]] = true
	}
	n := 0
	for name, s := range c.services {
		if !strings.HasPrefix(image(s), "nats:") {
			continue
		}
		n++
		if want := "nats:" + strings.TrimPrefix(natsVersion, "v") + "-alpine"; image(s) != want {
			t.Errorf("%s runs %s; go.mod tests against nats-server %s (%s)", name, image(s), natsVersion, want)
		}
		cmd := strs(t, name+".command", s["command"])
		i := slices.Index(cmd, "--config")
		if i < 0 || i+1 == len(cmd) {
			t.Fatalf("%s: command %v names no --config", name, cmd)
		}
		if !slices.Contains(strs(t, name+".volumes", s["volumes"]), "./nats.conf:"+cmd[i+1]+":ro") {
			t.Errorf("%s reads %s but does not mount ./nats.conf there", name, cmd[i+1])
		}
		e := env(t, name, s)
		for v := range confVars {
			if _, ok := e[v]; !ok {
				t.Errorf("%s does not set %s, which nats.conf needs", name, v)
			}
		}
		if e["QKV_SERVER_NAME"] != name {
			t.Errorf("%s calls itself %q", name, e["QKV_SERVER_NAME"])
		}

		// The server starts from nats.conf with this environment: three
		// authenticated routes, and the monitoring port the health check asks.
		for k, v := range e {
			t.Setenv(k, v)
		}
		opts, err := server.ProcessConfigFile(confPath)
		if err != nil {
			t.Fatalf("%s: nats.conf with its environment: %v", name, err)
		}
		if len(opts.Routes) != 3 {
			t.Errorf("%s has %d routes, want 3", name, len(opts.Routes))
		}
		for _, r := range opts.Routes {
			if p, _ := r.User.Password(); r.User.Username() != opts.Cluster.Username || p != opts.Cluster.Password {
				t.Errorf("%s: route %s does not carry the cluster's credentials", name, r.Redacted())
			}
		}
		hc := strs(t, name+".healthcheck.test", s["healthcheck"].(map[string]any)["test"])
		if port := fmt.Sprintf(":%d/", opts.HTTPPort); !strings.Contains(strings.Join(hc, " "), port) {
			t.Errorf("%s health check %v does not ask the monitoring port %d", name, hc, opts.HTTPPort)
		}
	}
	if n != 3 {
		t.Errorf("%d NATS servers, want 3", n)
	}
}

// helpFlags runs `quorumkv args... --help` and returns the flags it lists.
func helpFlags(t *testing.T, bin string, args ...string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, append(slices.Clone(args), "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("quorumkv %s --help: %v\n%s", strings.Join(args, " "), err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  --([a-z0-9-]+)  \[`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("quorumkv %s --help lists no flags:\n%s", strings.Join(args, " "), out)
	}
	return flags
}

// TestComposeCommandsMatchTheCLI runs the built binary's --help for every
// quorumkv service and checks each flag and QUORUMKV_ variable it is given,
// and that each role logs in as its nats.conf user with its inbox prefix.
func TestComposeCommandsMatchTheCLI(t *testing.T) {
	c := loadCompose(t)
	bin := proctest.Binary(t)
	commands, err := exec.Command(bin, "help").CombinedOutput()
	if err != nil {
		t.Fatalf("quorumkv help: %v\n%s", err, commands)
	}
	var natsEnv map[string]string
	for name, s := range c.services {
		if strings.HasPrefix(image(s), "nats:") {
			natsEnv = env(t, name, s)
		}
	}
	for name, s := range c.services {
		if !isQuorumkv(s) {
			continue
		}
		cmd := strs(t, name+".command", s["command"])
		// The subcommand and its verbs come before the first flag.
		verbs := cmd
		if i := slices.IndexFunc(cmd, func(a string) bool { return strings.HasPrefix(a, "-") }); i >= 0 {
			verbs = cmd[:i]
		}
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(verbs[0]) + ` `).Match(commands) {
			t.Errorf("%s runs `quorumkv %s`, which `quorumkv help` does not list; is it implemented yet?", name, verbs[0])
			continue
		}
		flags := helpFlags(t, bin, verbs...)
		for _, a := range cmd[len(verbs):] {
			if !strings.HasPrefix(a, "--") {
				continue // a flag's value
			}
			f, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !flags[f] {
				t.Errorf("%s: `quorumkv %s` has no flag --%s", name, strings.Join(verbs, " "), f)
			}
		}
		e := env(t, name, s)
		if verbs[0] == "migrate" {
			if e["QUORUMKV_USER"] != "" {
				t.Errorf("%s: migrate needs no NATS user", name)
			}
			continue
		}
		for k := range e {
			f, ok := strings.CutPrefix(k, "QUORUMKV_")
			if !ok {
				continue
			}
			if f = strings.ReplaceAll(strings.ToLower(f), "_", "-"); !flags[f] {
				t.Errorf("%s sets %s, but `quorumkv %s` has no flag --%s", name, k, strings.Join(verbs, " "), f)
			}
		}
		user := e["QUORUMKV_USER"]
		pwVar, ok := userPasswordVar[user]
		if !ok || user == "sys" || user == "default" || user == "acme" {
			t.Errorf("%s logs in as %q, not a role user of nats.conf", name, user)
			continue
		}
		if e["QUORUMKV_PASSWORD"] == "" || e["QUORUMKV_PASSWORD"] != natsEnv[pwVar] {
			t.Errorf("%s's password is not the one the NATS servers give user %s (%s)", name, user, pwVar)
		}
		if e["QUORUMKV_INBOX_PREFIX"] != inboxPrefix(user) {
			t.Errorf("%s uses inbox prefix %q; user %s may only subscribe under %s", name, e["QUORUMKV_INBOX_PREFIX"], user, inboxPrefix(user))
		}
		if want := map[string]string{"coordinator": "coordinator", "storage": "storage", "repair": "repair", "status": "admin"}[verbs[0]]; user != want {
			t.Errorf("%s runs %s as user %s, want %s", name, verbs[0], user, want)
		}
		// Health checks that ask /metrics ask the port --metrics serves.
		if hc, ok := s["healthcheck"].(map[string]any); ok {
			test := strings.Join(strs(t, name+".healthcheck.test", hc["test"]), " ")
			i := slices.Index(cmd, "--metrics")
			if strings.Contains(test, "/metrics") && (i < 0 || !strings.Contains(test, ":"+strings.Split(cmd[i+1], ":")[1]+"/metrics")) {
				t.Errorf("%s health check %q does not match its --metrics", name, test)
			}
		}
	}
}

// TestEveryNATSCommandTakesCredentials: every command that connects to a
// NATS server takes the flags nats.conf's users need.
func TestEveryNATSCommandTakesCredentials(t *testing.T) {
	bin := proctest.Binary(t)
	out, err := exec.Command(bin, "help").CombinedOutput()
	if err != nil {
		t.Fatalf("quorumkv help: %v\n%s", err, out)
	}
	verbs := map[string][][]string{
		"tenant": {{"create"}, {"get"}, {"list"}, {"update"}, {"delete"}},
		"node":   {{"list"}, {"drain"}, {"remove"}, {"dump"}},
		"repair": {{}, {"status"}, {"dead", "list"}, {"dead", "replay"}},
	}
	checked := 0
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z]+) +\S`).FindAllStringSubmatch(string(out), -1) {
		name := m[1]
		if name == "version" {
			continue
		}
		forms := verbs[name]
		if forms == nil {
			forms = [][]string{{}}
		}
		for _, v := range forms {
			args := append([]string{name}, v...)
			flags := helpFlags(t, bin, args...)
			if !flags["nats"] {
				continue // runs its own servers (dev, bench) or none (migrate)
			}
			checked++
			for _, f := range []string{"creds", "user", "password", "token", "inbox-prefix"} {
				if !flags[f] {
					t.Errorf("`quorumkv %s` connects to NATS but has no --%s", strings.Join(args, " "), f)
				}
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d commands connect to NATS; did `quorumkv help` change its format?", checked)
	}
}

// TestComposePublishesMonitoringOnLoopbackOnly: the NATS monitoring port
// has no authentication and lists every account, user, client address and
// subscription (/accountz, /connz?auth=true&subs=detail, /jsz), so no port
// but the NATS client port (authenticated) may be published on every host
// interface: each other one names 127.0.0.1 (or [::1]) as its host IP.
func TestComposePublishesMonitoringOnLoopbackOnly(t *testing.T) {
	c := loadCompose(t)
	text, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*(?:http|http_port|monitor_port)\s*[:=]\s*(?:"?[^\s:"]*:)?(\d+)`).FindSubmatch(text)
	if m == nil {
		t.Fatal("nats.conf sets no monitoring (http) port")
	}
	monitoring := string(m[1])
	published := 0
	for name, s := range c.services {
		raw, ok := s["ports"]
		if !ok {
			continue
		}
		for _, p := range strs(t, name+".ports", raw) {
			// [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO], or a bare
			// CONTAINER_PORT (published on a random port, every interface).
			spec, _, _ := strings.Cut(p, "/")
			hostIP, container := "", spec
			if i := strings.LastIndex(spec, ":"); i >= 0 {
				container = spec[i+1:]
				if j := strings.LastIndex(spec[:i], ":"); j >= 0 {
					hostIP = strings.Trim(spec[:j], "[]")
				}
			}
			if container == monitoring {
				published++
			}
			if container == "4222" {
				continue
			}
			if hostIP != "127.0.0.1" && hostIP != "::1" {
				t.Errorf("%s publishes %q on every host interface; bind it to 127.0.0.1 (%s is NATS monitoring: no authentication)", name, p, monitoring)
			}
		}
	}
	if published == 0 {
		t.Errorf("no service publishes the monitoring port %s; OPERATIONS.md tells operators to use it on the host", monitoring)
	}
}
