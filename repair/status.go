package repair

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/quorumkv/quorumkv/subjects"
)

// Status is the operator's view of repair, read from JetStream and from the
// running workers.
type Status struct {
	// Backlog is the repairs not yet done: Pending + AckPending.
	Backlog uint64 `json:"backlog"`
	// Pending is messages not yet delivered to any worker.
	Pending uint64 `json:"pending"`
	// AckPending is messages delivered and not yet acknowledged: being
	// worked on, or waiting out a back-off after a failure.
	AckPending uint64 `json:"ack_pending"`
	// Redelivered is messages delivered more than once and not yet acked.
	Redelivered uint64 `json:"redelivered"`
	// Dead is messages in the dead-letter stream.
	Dead uint64 `json:"dead"`
	// Workers are the workers that answered, with their counters since
	// they started; Applied, Failed and DeadLettered sum them.
	Workers      []WorkerStats `json:"workers"`
	Applied      uint64        `json:"applied"`
	Failed       uint64        `json:"failed"`
	DeadLettered uint64        `json:"dead_lettered"`
}

// ReadStatus reads the consumer's and the dead-letter stream's state, and
// gathers the counters of every worker that answers within wait.
func ReadStatus(ctx context.Context, nc *nats.Conn, wait time.Duration) (*Status, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("repair: jetstream: %w", err)
	}
	cons, err := js.Consumer(ctx, StreamName, ConsumerName)
	if err != nil {
		return nil, fmt.Errorf("repair: consumer %s on %s (has a repair worker or coordinator ever started?): %w", ConsumerName, StreamName, err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("repair: consumer info: %w", err)
	}
	st := &Status{
		Pending:     ci.NumPending,
		AckPending:  uint64(ci.NumAckPending),
		Redelivered: uint64(ci.NumRedelivered),
	}
	st.Backlog = st.Pending + st.AckPending
	dead, err := js.Stream(ctx, DeadStreamName)
	if err != nil {
		return nil, fmt.Errorf("repair: stream %s: %w", DeadStreamName, err)
	}
	st.Dead = dead.CachedInfo().State.Msgs
	st.Workers, err = GatherWorkerStats(ctx, nc, wait)
	if err != nil {
		return nil, err
	}
	for _, w := range st.Workers {
		st.Applied += w.Applied
		st.Failed += w.Failed
		st.DeadLettered += w.DeadLettered
	}
	return st, nil
}

// GatherWorkerStats asks every running worker for its counters ($SRV.STATS
// of the micro service quorumkv-repair) and returns those that answer
// within wait, sorted by name.
func GatherWorkerStats(ctx context.Context, nc *nats.Conn, wait time.Duration) ([]WorkerStats, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("repair: subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.STATS."+ServiceName, inbox, nil); err != nil {
		return nil, fmt.Errorf("repair: ask workers for stats: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var out []WorkerStats
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break // the wait is over
		}
		if m.Header.Get("Status") == "503" {
			break // no worker is running
		}
		var s micro.Stats
		if err := json.Unmarshal(m.Data, &s); err != nil {
			continue
		}
		for _, ep := range s.Endpoints {
			var ws WorkerStats
			if len(ep.Data) > 0 && json.Unmarshal(ep.Data, &ws) == nil {
				out = append(out, ws)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeadLetter is one message of the dead-letter stream.
type DeadLetter struct {
	Seq        uint64                  `json:"seq"`        // sequence in KV_REPAIR_DEAD
	Time       time.Time               `json:"time"`       // when it was dead-lettered
	Subject    string                  `json:"subject"`    // original subject in KV_REPAIR
	Error      string                  `json:"error"`      // why its last delivery failed
	Deliveries uint64                  `json:"deliveries"` // deliveries tried
	Request    *subjects.RepairRequest `json:"request,omitempty"`
	DecodeErr  string                  `json:"decode_error,omitempty"` // set when the body is not a valid request
}

// ListDead returns up to limit dead letters, oldest first, starting at
// sequence from (0 = the first).
func ListDead(ctx context.Context, js jetstream.JetStream, from uint64, limit int) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, DeadStreamName)
	if err != nil {
		return nil, fmt.Errorf("repair: stream %s: %w", DeadStreamName, err)
	}
	state := s.CachedInfo().State
	var out []DeadLetter
	if state.Msgs == 0 {
		return nil, nil
	}
	for seq := max(from, state.FirstSeq, 1); seq <= state.LastSeq && len(out) < limit; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted (replayed or dropped)
		}
		if err != nil {
			return out, fmt.Errorf("repair: dead letter %d: %w", seq, err)
		}
		out = append(out, deadLetterOf(raw))
	}
	return out, nil
}

func deadLetterOf(raw *jetstream.RawStreamMsg) DeadLetter {
	d := DeadLetter{Seq: raw.Sequence, Time: raw.Time, Subject: raw.Header.Get(HeaderSubject), Error: raw.Header.Get(HeaderError)}
	d.Deliveries, _ = strconv.ParseUint(raw.Header.Get(HeaderDeliveries), 10, 64)
	req, err := Decode(raw.Data)
	if err != nil {
		d.DecodeErr = err.Error()
	} else {
		d.Request = req
	}
	return d
}

// ReplayDead publishes dead letter seq to the work stream again, for
// another MaxDeliver attempts, and deletes it from the dead-letter stream.
// A dead letter whose body is not a valid request is refused.
func ReplayDead(ctx context.Context, js jetstream.JetStream, seq uint64) (*DeadLetter, error) {
	s, err := js.Stream(ctx, DeadStreamName)
	if err != nil {
		return nil, fmt.Errorf("repair: stream %s: %w", DeadStreamName, err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("repair: dead letter %d: %w", seq, err)
	}
	d := deadLetterOf(raw)
	if d.Request == nil {
		return &d, fmt.Errorf("repair: dead letter %d cannot be replayed: %s", seq, d.DecodeErr)
	}
	m := nats.NewMsg(subjects.Repair(d.Request.Tenant))
	m.Data = raw.Data
	// A new id: the original may still be inside the duplicate window.
	m.Header.Set(jetstream.MsgIDHeader, "replay-"+strconv.FormatUint(seq, 10)+"-"+MsgID(d.Request))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return &d, fmt.Errorf("repair: replay dead letter %d: %w", seq, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil {
		return &d, fmt.Errorf("repair: dead letter %d replayed but not deleted (a second replay is harmless): %w", seq, err)
	}
	return &d, nil
}
