package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/quorumkv/quorumkv/subjects"
)

// service speaks the nats.go micro protocol (endpoints in a queue group,
// and $SRV.PING|INFO|STATS discovery) so that `nats micro ls|info|stats`
// and `quorumkv status` see the coordinator as a micro service.
//
// It is not micro.AddService because micro measures a request around the
// endpoint handler call and reads its error when the handler returns: a
// handler that answers on another goroutine (as every coordinator request
// does, so that one slow request does not hold up the next) shows 0 errors
// and a processing time of the dispatch only. Here a request is recorded
// when it is answered: its error (any reply carrying Nats-Service-Error)
// and the time from receipt to the answer.
type service struct {
	nc      *nats.Conn
	ident   micro.ServiceIdentity
	desc    string
	queue   string
	started time.Time

	mu      sync.Mutex // guards eps' counters and the slices
	eps     []*endpoint
	control []*nats.Subscription
}

type endpoint struct {
	svc  *service
	info micro.EndpointInfo
	sub  *nats.Subscription

	// guarded by svc.mu
	requests, errors int
	lastError        string
	processing       time.Duration
}

func newService(nc *nats.Conn, name, version, desc, queue string, metadata map[string]string) (*service, error) {
	s := &service{
		nc:      nc,
		ident:   micro.ServiceIdentity{Name: name, ID: nuid.Next(), Version: version, Metadata: metadata},
		desc:    desc,
		queue:   queue,
		started: time.Now().UTC(),
	}
	for verb, value := range map[micro.Verb]func() any{
		micro.PingVerb:  func() any { return micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType} },
		micro.InfoVerb:  func() any { return s.info() },
		micro.StatsVerb: func() any { return s.stats() },
	} {
		for _, scope := range [][2]string{{"", ""}, {name, ""}, {name, s.ident.ID}} {
			subj, err := micro.ControlSubject(verb, scope[0], scope[1])
			if err != nil {
				s.stop()
				return nil, fmt.Errorf("coordinator: micro control subject: %w", err)
			}
			sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
				data, _ := json.Marshal(value())
				_ = m.Respond(data) // a discovery request without a reply subject needs no answer
			})
			if err != nil {
				s.stop()
				return nil, fmt.Errorf("coordinator: subscribe %s: %w", subj, err)
			}
			s.mu.Lock()
			s.control = append(s.control, sub)
			s.mu.Unlock()
		}
	}
	return s, nil
}

// addEndpoint serves subject in the service's queue group with h.
func (s *service) addEndpoint(name, subject string, h micro.HandlerFunc) error {
	ep := &endpoint{svc: s, info: micro.EndpointInfo{Name: name, Subject: subject, QueueGroup: s.queue}}
	sub, err := s.nc.QueueSubscribe(subject, s.queue, func(m *nats.Msg) {
		h(&request{msg: m, ep: ep, start: time.Now()})
	})
	if err != nil {
		return fmt.Errorf("coordinator: subscribe %s: %w", subject, err)
	}
	ep.sub = sub
	s.mu.Lock()
	s.eps = append(s.eps, ep)
	s.mu.Unlock()
	return nil
}

// stop drains the endpoints (requests already delivered are still handed
// to their handlers) and leaves discovery.
//
// It returns once every endpoint has drained (or after drainTimeout): NATS
// may route requests to this coordinator until the server has processed
// the unsubscribe, and a drain hands those to the handlers too, so a
// rolling restart answers them instead of failing them.
func (s *service) stop() {
	s.mu.Lock()
	eps := s.eps
	for _, ep := range eps {
		if err := ep.sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			_ = ep.sub.Unsubscribe()
		}
	}
	for _, sub := range s.control {
		_ = sub.Unsubscribe()
	}
	s.control = nil
	s.mu.Unlock()
	deadline := time.Now().Add(drainTimeout)
	for _, ep := range eps {
		for ep.sub.IsValid() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// drainTimeout bounds how long stop waits for the endpoints to drain.
const drainTimeout = 5 * time.Second

func (s *service) identity() micro.ServiceIdentity {
	id := s.ident
	id.Metadata = maps.Clone(id.Metadata)
	return id
}

func (s *service) info() micro.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	eps := make([]micro.EndpointInfo, 0, len(s.eps))
	for _, ep := range s.eps {
		eps = append(eps, ep.info)
	}
	return micro.Info{ServiceIdentity: s.identity(), Type: micro.InfoResponseType, Description: s.desc, Endpoints: eps}
}

func (s *service) stats() micro.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := micro.Stats{ServiceIdentity: s.identity(), Type: micro.StatsResponseType, Started: s.started, Endpoints: make([]*micro.EndpointStats, 0, len(s.eps))}
	for _, ep := range s.eps {
		es := &micro.EndpointStats{
			Name:           ep.info.Name,
			Subject:        ep.info.Subject,
			QueueGroup:     ep.info.QueueGroup,
			NumRequests:    ep.requests,
			NumErrors:      ep.errors,
			LastError:      ep.lastError,
			ProcessingTime: ep.processing,
		}
		if ep.requests > 0 {
			es.AverageProcessingTime = ep.processing / time.Duration(ep.requests)
		}
		st.Endpoints = append(st.Endpoints, es)
	}
	return st
}

// request is one delivery to an endpoint; it implements micro.Request so
// handlers keep micro's interface. The first answer records it.
type request struct {
	msg   *nats.Msg
	ep    *endpoint
	start time.Time
	done  atomic.Bool
}

var _ micro.Request = (*request)(nil)

// record counts the request as answered now; errText is "" for a success,
// else micro's "code:description". Only the first call counts.
func (r *request) record(errText string) {
	if !r.done.CompareAndSwap(false, true) {
		return
	}
	took := time.Since(r.start)
	s := r.ep.svc
	s.mu.Lock()
	r.ep.requests++
	r.ep.processing += took
	if errText != "" {
		r.ep.errors++
		r.ep.lastError = errText
	}
	s.mu.Unlock()
}

// send records the request and publishes m as its answer; m's error
// headers, if any, make it an error. It records before it publishes so
// that a client that has its answer also finds it in the stats.
func (r *request) send(m *nats.Msg) error {
	errText := ""
	if m.Header != nil {
		if code := m.Header.Get(subjects.ErrorCodeHeader); code != "" {
			errText = code + ":" + m.Header.Get(subjects.ErrorHeader)
		}
	}
	r.record(errText)
	if r.msg.Reply == "" {
		return nil // a publish without a reply subject: nobody to answer
	}
	m.Subject = r.msg.Reply
	return r.ep.svc.nc.PublishMsg(m)
}

func (r *request) Respond(data []byte, opts ...micro.RespondOpt) error {
	m := &nats.Msg{Data: data}
	for _, o := range opts {
		o(m)
	}
	return r.send(m)
}

func (r *request) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

func (r *request) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	if code == "" || description == "" {
		return fmt.Errorf("%w: error code and description", micro.ErrArgRequired)
	}
	m := &nats.Msg{Data: data, Header: nats.Header{
		micro.ErrorHeader:     []string{description},
		micro.ErrorCodeHeader: []string{code},
	}}
	for _, o := range opts {
		o(m)
	}
	return r.send(m)
}

func (r *request) Data() []byte           { return r.msg.Data }
func (r *request) Headers() micro.Headers { return micro.Headers(r.msg.Header) }
func (r *request) Subject() string        { return r.msg.Subject }
func (r *request) Reply() string          { return r.msg.Reply }
