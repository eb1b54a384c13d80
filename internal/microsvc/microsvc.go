// Package microsvc serves the nats.go micro protocol: endpoints in a queue
// group, and $SRV.PING|INFO|STATS discovery, so that `nats micro ls|info|
// stats`, `quorumkv status` and `quorumkv repair status` see a process as a
// micro service.
//
// It is not micro.AddService, for two reasons:
//
//   - micro measures a request around the endpoint handler call and reads
//     its error when the handler returns. A handler that answers on another
//     goroutine (as every coordinator request does, so that one slow request
//     does not hold up the next) shows 0 errors and a processing time of the
//     dispatch only. Here a request is recorded when it is answered: its
//     error (any reply carrying Nats-Service-Error) and the time from receipt
//     to the answer.
//   - micro.AddService (nats.go v1.55, v1.56) writes the service's start time
//     after it has subscribed to the discovery subjects, unguarded, and its
//     STATS handler reads it under a lock the write does not take: a STATS
//     request answered in that window is a data race. A fault-suite run under
//     -race caught it in a repair worker. Here everything a discovery handler
//     reads is set before the first subscription.
package microsvc

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
)

// Config describes a service. Name, Version and QueueGroup are required.
type Config struct {
	Name        string            // micro service name, e.g. "quorumkv"
	Version     string            // semantic version
	Description string            // one line for `nats micro info`
	QueueGroup  string            // every endpoint's queue group
	Metadata    map[string]string // shown by discovery; copied

	// StatsData, when set, is called for each STATS request; its JSON is
	// every endpoint's Data, as micro's StatsHandler. It must be safe to
	// call from any goroutine.
	StatsData func() any
}

// Service is a running micro service. Its methods are safe for concurrent
// use.
type Service struct {
	nc        *nats.Conn
	ident     micro.ServiceIdentity
	desc      string
	queue     string
	started   time.Time
	statsData func() any

	mu      sync.Mutex // guards eps' counters and the slices
	eps     []*endpoint
	control []*nats.Subscription
}

type endpoint struct {
	svc  *Service
	info micro.EndpointInfo
	sub  *nats.Subscription

	// guarded by svc.mu
	requests, errors int
	lastError        string
	processing       time.Duration
}

// New starts the service's discovery handlers on nc, which the caller keeps
// owning. Add endpoints with AddEndpoint; Stop leaves discovery.
func New(nc *nats.Conn, cfg Config) (*Service, error) {
	if cfg.Name == "" || cfg.Version == "" || cfg.QueueGroup == "" {
		return nil, fmt.Errorf("%w: microsvc: name, version and queue group", micro.ErrArgRequired)
	}
	s := &Service{
		nc:        nc,
		ident:     micro.ServiceIdentity{Name: cfg.Name, ID: nuid.Next(), Version: cfg.Version, Metadata: maps.Clone(cfg.Metadata)},
		desc:      cfg.Description,
		queue:     cfg.QueueGroup,
		started:   time.Now().UTC(),
		statsData: cfg.StatsData,
	}
	for verb, value := range map[micro.Verb]func() any{
		micro.PingVerb:  func() any { return micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType} },
		micro.InfoVerb:  func() any { return s.Info() },
		micro.StatsVerb: func() any { return s.Stats() },
	} {
		for _, scope := range [][2]string{{"", ""}, {cfg.Name, ""}, {cfg.Name, s.ident.ID}} {
			subj, err := micro.ControlSubject(verb, scope[0], scope[1])
			if err != nil {
				s.Stop()
				return nil, fmt.Errorf("microsvc: control subject: %w", err)
			}
			sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
				data, _ := json.Marshal(value())
				_ = m.Respond(data) // a discovery request without a reply subject needs no answer
			})
			if err != nil {
				s.Stop()
				return nil, fmt.Errorf("microsvc: subscribe %s: %w", subj, err)
			}
			s.mu.Lock()
			s.control = append(s.control, sub)
			s.mu.Unlock()
		}
	}
	return s, nil
}

// AddEndpoint serves subject in the service's queue group with h. h runs
// on the subscription's goroutine, one request at a time; it may answer on
// another goroutine.
func (s *Service) AddEndpoint(name, subject string, h micro.HandlerFunc) error {
	ep := &endpoint{svc: s, info: micro.EndpointInfo{Name: name, Subject: subject, QueueGroup: s.queue}}
	sub, err := s.nc.QueueSubscribe(subject, s.queue, func(m *nats.Msg) {
		h(&request{msg: m, ep: ep, start: time.Now()})
	})
	if err != nil {
		return fmt.Errorf("microsvc: subscribe %s: %w", subject, err)
	}
	ep.sub = sub
	s.mu.Lock()
	s.eps = append(s.eps, ep)
	s.mu.Unlock()
	return nil
}

// Stop drains the endpoints (requests already delivered are still handed
// to their handlers) and leaves discovery. Safe to call more than once.
//
// It returns once every endpoint has drained (or after drainTimeout): NATS
// may route requests to this process until the server has processed the
// unsubscribe, and a drain hands those to the handlers too, so a rolling
// restart answers them instead of failing them.
func (s *Service) Stop() {
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

// drainTimeout bounds how long Stop waits for the endpoints to drain.
const drainTimeout = 5 * time.Second

func (s *Service) identity() micro.ServiceIdentity {
	id := s.ident
	id.Metadata = maps.Clone(id.Metadata)
	return id
}

// Info is what the service answers to $SRV.INFO.
func (s *Service) Info() micro.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	eps := make([]micro.EndpointInfo, 0, len(s.eps))
	for _, ep := range s.eps {
		eps = append(eps, ep.info)
	}
	return micro.Info{ServiceIdentity: s.identity(), Type: micro.InfoResponseType, Description: s.desc, Endpoints: eps}
}

// Stats is what the service answers to $SRV.STATS.
func (s *Service) Stats() micro.Stats {
	var data json.RawMessage
	if s.statsData != nil {
		data, _ = json.Marshal(s.statsData())
	}
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
			Data:           data,
		}
		if ep.requests > 0 {
			es.AverageProcessingTime = ep.processing / time.Duration(ep.requests)
		}
		st.Endpoints = append(st.Endpoints, es)
	}
	return st
}

// RespondMsg answers req with m (its Data and Header; the subject is set
// here). For a request of a Service it is counted in the stats, as an
// error when m carries micro's error headers; any other request is
// answered on nc. A request without a reply subject is not answered.
func RespondMsg(nc *nats.Conn, req micro.Request, m *nats.Msg) error {
	if r, ok := req.(*request); ok {
		return r.send(m)
	}
	if m.Subject = req.Reply(); m.Subject == "" {
		return nil
	}
	return nc.PublishMsg(m)
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
		if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
			errText = code + ":" + m.Header.Get(micro.ErrorHeader)
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
