package coordinator_test

import (
	"bytes"
	"testing"
)

func TestSmoke(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	got, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Value, []byte("v")) {
		t.Fatalf("got %q", got.Value)
	}
}
