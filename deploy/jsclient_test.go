package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/internal/devcluster"
)

// TestJavaScriptClientFromProtocolDoc runs jsclient/check.mjs, a client
// written in another language (JavaScript: nats.js and @msgpack/msgpack)
// from docs/PROTOCOL.md alone, against a real cluster: both encodings, every
// reply field, binary keys and values, contexts, idempotency, error headers
// and bodies, the siblings policy, epochs as JSON strings and micro's
// stats. A promise of the document that the product breaks fails here, as
// it would for users of any other language.
//
// It needs node and npm (.ci/run installs them when missing); the first run
// installs the script's two packages with npm ci from its lock file.
func TestJavaScriptClientFromProtocolDoc(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (.ci/run installs it): the JavaScript client is not checked")
	}
	dir, err := filepath.Abs("jsclient")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "nats")); err != nil {
		npm := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		npm.Dir = dir
		if out, err := npm.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, _ := devcluster.StartForTest(t, devcluster.Config{Nodes: 3})
	cmd := exec.CommandContext(ctx, node, "check.mjs", c.URL)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the JavaScript client failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), " passed, 0 failed") {
		t.Fatalf("the JavaScript client did not finish its checks:\n%s", out)
	}
	t.Logf("%s", out)
}
