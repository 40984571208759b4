package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"testing"
	"time"
)

// interimUpstream answers every request like a cache worker: a "102
// Processing" interim response first, then the first half of body; the
// second half follows once more is closed (nil: at once).
func interimUpstream(t *testing.T, body []byte, more <-chan struct{}) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusProcessing)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		half := len(body) / 2
		w.Write(body[:half])
		http.NewResponseController(w).Flush()
		if more != nil {
			select {
			case <-more:
			case <-r.Context().Done():
				return
			}
		}
		w.Write(body[half:])
	}))
	t.Cleanup(srv.Close)
	return srv
}

// timedGet is one GET through the proxy, timed.
type timedGet struct {
	code     int
	body     []byte
	err      error
	got1xx   bool
	first1xx time.Duration // since the request was sent
	took     time.Duration
}

func getTimed(url string, timeout time.Duration) timedGet {
	var g timedGet
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
			if code == http.StatusProcessing && !g.got1xx {
				g.got1xx, g.first1xx = true, time.Since(start)
			}
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err == nil {
		g.code = resp.StatusCode
		g.body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	g.err, g.took = err, time.Since(start)
	return g
}

func TestDelayAndBlackhole(t *testing.T) {
	body := bytes.Repeat([]byte("d"), 64<<10)
	up := interimUpstream(t, body, nil).URL
	ok := func(t *testing.T, g timedGet) {
		t.Helper()
		if g.err != nil || g.code != http.StatusOK || !bytes.Equal(g.body, body) || !g.got1xx {
			t.Fatalf("GET = %d, %d bytes, 102 seen %v, %v; want 200 with the body after a 102", g.code, len(g.body), g.got1xx, g.err)
		}
	}
	tests := []struct {
		name      string
		cfg       Config
		n         int           // requests, one after the other
		blackhole bool          // turned on before the first request
		liftAfter time.Duration // > 0: turned off again this long after the first request
		timeout   time.Duration // per request
		check     func(t *testing.T, gets []timedGet)
	}{
		{"no delay at rate 0", Config{Delay: time.Second}, 3, false, 0, 5 * time.Second, func(t *testing.T, gets []timedGet) {
			for _, g := range gets {
				ok(t, g)
				if g.took >= time.Second {
					t.Errorf("an undelayed GET took %v", g.took)
				}
			}
		}},
		{"every request delayed", Config{DelayRate: 1, Delay: 300 * time.Millisecond}, 2, false, 0, 5 * time.Second, func(t *testing.T, gets []timedGet) {
			for _, g := range gets {
				ok(t, g)
				// Not even the interim response comes back before Delay.
				if g.first1xx < 300*time.Millisecond {
					t.Errorf("the 102 of a delayed GET came after %v, want ≥ 300ms", g.first1xx)
				}
			}
		}},
		{"half delayed", Config{DelayRate: 0.5, Delay: 100 * time.Millisecond, Seed: 7}, 20, false, 0, 5 * time.Second, func(t *testing.T, gets []timedGet) {
			delayed := 0
			for _, g := range gets {
				ok(t, g)
				if g.first1xx >= 100*time.Millisecond {
					delayed++
				}
			}
			if delayed < 4 || delayed > 16 {
				t.Errorf("%d of 20 GETs delayed at DelayRate 0.5", delayed)
			}
		}},
		{"blackhole answers nothing", Config{}, 2, true, 0, 300 * time.Millisecond, func(t *testing.T, gets []timedGet) {
			for _, g := range gets {
				if g.err == nil || !errors.Is(g.err, context.DeadlineExceeded) || g.got1xx || g.took < 300*time.Millisecond {
					t.Errorf("GET while blackholed = %d, 102 seen %v, after %v, %v; want nothing until the client's deadline",
						g.code, g.got1xx, g.took, g.err)
				}
			}
		}},
		{"blackhole lifted", Config{}, 1, true, 200 * time.Millisecond, 5 * time.Second, func(t *testing.T, gets []timedGet) {
			ok(t, gets[0])
			if gets[0].first1xx < 200*time.Millisecond {
				t.Errorf("a held GET got its 102 after %v, before the blackhole was lifted", gets[0].first1xx)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, up, tc.cfg)
			p.SetBlackhole(tc.blackhole)
			if tc.liftAfter > 0 {
				time.AfterFunc(tc.liftAfter, func() { p.SetBlackhole(false) })
			}
			var gets []timedGet
			for range tc.n {
				gets = append(gets, getTimed(p.URL()+"/obj", tc.timeout))
			}
			tc.check(t, gets)
			if int(p.Requests()) != tc.n {
				t.Errorf("Requests = %d, want %d", p.Requests(), tc.n)
			}
			// Afterwards (blackhole off, faults off) the proxy forwards.
			p.SetBlackhole(false)
			if err := p.SetFaults(Config{}); err != nil {
				t.Fatal(err)
			}
			ok(t, getTimed(p.URL()+"/obj", 5*time.Second))
		})
	}
}

// A request already forwarded stops forwarding while the blackhole is on
// and carries on when it is lifted.
func TestBlackholeInFlight(t *testing.T) {
	body := bytes.Repeat([]byte("f"), 256<<10)
	more := make(chan struct{})
	p := start(t, interimUpstream(t, body, more).URL, Config{})
	resp, err := http.Get(p.URL() + "/obj")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	half := make([]byte, len(body)/2)
	if _, err := io.ReadFull(resp.Body, half); err != nil {
		t.Fatal(err)
	}
	p.SetBlackhole(true)
	if !p.Blackholed() {
		t.Fatal("Blackholed() = false after SetBlackhole(true)")
	}
	close(more) // the upstream sends the rest
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(resp.Body)
		got <- b
	}()
	select {
	case b := <-got:
		t.Fatalf("%d more bytes came through the blackhole", len(b))
	case <-time.After(300 * time.Millisecond):
	}
	p.SetBlackhole(false)
	select {
	case b := <-got:
		if !bytes.Equal(append(half, b...), body) {
			t.Fatalf("after the blackhole: %d more bytes, want the other %d", len(b), len(body)-len(half))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the response did not resume after the blackhole was lifted")
	}
}

func TestSetFaults(t *testing.T) {
	p := start(t, upstream(t, []byte("ok")).URL, Config{})
	if err := p.SetFaults(Config{FailRate: 1}); err != nil {
		t.Fatal(err)
	}
	if code, _, err := get(p, "/obj"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("GET after SetFaults(FailRate 1) = %d, %v; want 503", code, err)
	}
	if err := p.SetFaults(Config{DelayRate: 2}); err == nil {
		t.Error("SetFaults(DelayRate 2) succeeded")
	}
}
