package microsvc_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quorumkv/quorumkv/internal/microsvc"
	"github.com/quorumkv/quorumkv/internal/natstest"
)

// stats asks subject for micro stats over raw NATS, as `nats micro stats`
// does.
func stats(t *testing.T, nc *nats.Conn, subject string) micro.Stats {
	t.Helper()
	msg, err := nc.Request(subject, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatalf("decode stats %q: %v", msg.Data, err)
	}
	return st
}

// A STATS request answered right after the service starts finds the start
// time set. (micro.AddService's race, in the package doc, shows only across
// processes: under -race every socket write is ordered before every later
// socket read, so a request that reaches an in-process service after it
// started is always ordered after the unguarded write.)
func TestStatsRightAfterStart(t *testing.T) {
	s := natstest.RunServer(t)
	nc, asker := natstest.Connect(t, s), natstest.Connect(t, s)
	for range 20 {
		svc, err := microsvc.New(nc, microsvc.Config{Name: "svc-a", Version: "1.0.0", QueueGroup: "q"})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil { // the server has the subscriptions
			t.Fatal(err)
		}
		st := stats(t, asker, "$SRV.STATS.svc-a")
		if st.Type != micro.StatsResponseType || st.Name != "svc-a" || st.Started.IsZero() {
			t.Fatalf("stats %+v", st)
		}
		svc.Stop()
	}
}

// Every endpoint's stats carry StatsData's JSON, and an answer with
// micro's error headers counts as an error when it is sent, from any
// goroutine.
func TestStatsCountAnswers(t *testing.T) {
	s := natstest.RunServer(t)
	nc, asker := natstest.Connect(t, s), natstest.Connect(t, s)
	type counters struct{ Seen int }
	svc, err := microsvc.New(nc, microsvc.Config{
		Name: "svc-b", Version: "1.0.0", QueueGroup: "q", Metadata: map[string]string{"name": "b1"},
		StatsData: func() any { return counters{Seen: 7} },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	err = svc.AddEndpoint("echo", "svc-b.echo", func(req micro.Request) {
		go func() { // answered after the handler returned
			if string(req.Data()) == "fail" {
				_ = req.Error("400", "bad input", nil)
				return
			}
			_ = microsvc.RespondMsg(nc, req, &nats.Msg{Data: req.Data()})
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the server has the subscriptions
		t.Fatal(err)
	}
	for _, body := range []string{"a", "fail", "b", "fail", "c"} {
		msg, err := asker.Request("svc-b.echo", []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := msg.Header.Get(micro.ErrorCodeHeader); (body == "fail") != (got == "400") || (body != "fail" && string(msg.Data) != body) {
			t.Fatalf("answer to %q: %q, error code %q", body, msg.Data, got)
		}
	}
	st := stats(t, asker, "$SRV.STATS.svc-b")
	if len(st.Endpoints) != 1 {
		t.Fatalf("endpoints %+v", st.Endpoints)
	}
	ep := st.Endpoints[0]
	var data counters
	if err := json.Unmarshal(ep.Data, &data); err != nil || data.Seen != 7 {
		t.Fatalf("endpoint data %q: %v", ep.Data, err)
	}
	if ep.Name != "echo" || ep.QueueGroup != "q" || ep.NumRequests != 5 || ep.NumErrors != 2 || ep.LastError != "400:bad input" || ep.ProcessingTime <= 0 {
		t.Fatalf("endpoint stats %+v", ep)
	}
	if st.Metadata["name"] != "b1" {
		t.Fatalf("metadata %v", st.Metadata)
	}

	// INFO lists the endpoint; PING answers on every scope.
	msg, err := asker.Request("$SRV.INFO.svc-b", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil || len(info.Endpoints) != 1 || info.Endpoints[0].Subject != "svc-b.echo" {
		t.Fatalf("info %q: %v", msg.Data, err)
	}
	for _, subj := range []string{"$SRV.PING", "$SRV.PING.svc-b", "$SRV.PING.svc-b." + st.ID} {
		if _, err := asker.Request(subj, nil, 5*time.Second); err != nil {
			t.Fatalf("%s: %v", subj, err)
		}
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	for _, cfg := range []microsvc.Config{{Version: "1.0.0", QueueGroup: "q"}, {Name: "x", QueueGroup: "q"}, {Name: "x", Version: "1.0.0"}} {
		if _, err := microsvc.New(nc, cfg); !errors.Is(err, micro.ErrArgRequired) {
			t.Errorf("New(%+v): %v, want ErrArgRequired", cfg, err)
		}
	}
}
