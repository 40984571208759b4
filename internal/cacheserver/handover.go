package cacheserver

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/sluice-dev/sluice/internal/blockcache"
	"github.com/sluice-dev/sluice/internal/source"
)

// Handover on scale-down: a worker that is told to stop (SIGTERM) drains,
// waits until the workers' DNS no longer lists it, and then asks each
// remaining peer to take the blocks that peer now owns in HRW order: the
// blocks this worker answered most recently that it still holds (a peer
// that is leaving too refuses, and its blocks go to the next one). The peer
// pulls them from the leaving worker with peer reads (from its cache only,
// never the origin) at readahead priority, skipping those it holds, and
// answers when it is done; the leaving worker waits for the answers within
// its handover budget, then shuts down. So the blocks of the last burst
// stay in the set, and its next burst does not read them from the origin
// again. What does not fit the budget is left to the origin.
//
//	POST /v1/datasets/{dataset}/handover   JSON handoverRequest → handoverReply
//
// The peer pulls only from the address the request came from (its port
// in the request), so a token holder cannot point it at another host.

// maxHandoverBlocks bounds the blocks a worker remembers having served
// and the blocks one handover request may name (16 GiB of 4 MiB blocks).
const maxHandoverBlocks = 4096

// handoverPulls is how many blocks a peer pulls at once.
const handoverPulls = 4

type handoverBlock struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	Size    int64  `json:"size"`
	Index   int64  `json:"index"`
}

type handoverRequest struct {
	// Port is where the leaving worker serves, at the request's address.
	Port   int             `json:"port"`
	Blocks []handoverBlock `json:"blocks"`
}

type handoverReply struct {
	// Taken blocks were pulled; Held ones the peer had; Missing ones the
	// leaving worker no longer held or could not send.
	Taken   int `json:"taken"`
	Held    int `json:"held"`
	Missing int `json:"missing"`
}

// servedLog remembers the distinct blocks a worker answered, the most
// recent maxHandoverBlocks of them.
type servedLog struct {
	mu     sync.Mutex
	blocks map[string]servedBlock // by block key
	seq    uint64
}

type servedBlock struct {
	ref blockcache.BlockRef
	seq uint64 // of its last answer
}

func newServedLog() *servedLog { return &servedLog{blocks: map[string]servedBlock{}} }

func (l *servedLog) note(b blockcache.BlockRef) {
	key := b.Key()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	l.blocks[key] = servedBlock{ref: b, seq: l.seq}
	if len(l.blocks) > 2*maxHandoverBlocks { // trimmed once per maxHandoverBlocks new blocks
		for _, k := range l.recentLocked()[maxHandoverBlocks:] {
			delete(l.blocks, k)
		}
	}
}

// recentLocked returns the keys, the most recently answered first.
func (l *servedLog) recentLocked() []string {
	keys := make([]string, 0, len(l.blocks))
	for k := range l.blocks {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(l.blocks[b].seq, l.blocks[a].seq) })
	return keys
}

// recent returns the blocks, the most recently answered first.
func (l *servedLog) recent() []blockcache.BlockRef {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := l.recentLocked()
	out := make([]blockcache.BlockRef, 0, min(len(keys), maxHandoverBlocks))
	for _, k := range keys[:min(len(keys), maxHandoverBlocks)] {
		out = append(out, l.blocks[k].ref)
	}
	return out
}

// HandOver gives the remaining peers the blocks they now own (see the
// comment at the top of this file); port is where this worker serves. A
// peer that refuses (it is leaving too: workers scale down in parallel,
// and the DNS may still list one that is draining) or fails is left out,
// and its blocks go to the next peer in HRW order. It returns when the
// blocks found a peer, no peer remains or ctx ends; the counts are logged.
func (s *Server) HandOver(ctx context.Context, peers *Pool, port int) {
	if peers.cfg.DNS != "" {
		waitUnlisted(ctx, peers)
	}
	var held []blockcache.BlockRef
	for _, b := range s.served.recent() {
		if s.cfg.Cache.Holds(b) {
			held = append(held, b)
		}
	}
	left := map[string]bool{} // peers left out, by URL
	for len(held) > 0 && ctx.Err() == nil {
		byPeer := map[*worker][]blockcache.BlockRef{}
		for _, b := range held {
			ws := slices.DeleteFunc(peers.order(readKey(b.Object.Path, b.Object.Version, b.Offset())),
				func(w *worker) bool { return left[w.url] })
			if len(ws) == 0 {
				klog.InfoS("No peer remains to hand blocks over to", "blocks", len(held))
				return
			}
			byPeer[ws[0]] = append(byPeer[ws[0]], b)
		}
		held = s.handOverTo(ctx, peers, port, byPeer, left)
	}
}

// handOverTo asks each peer at once to take its blocks, and returns the
// blocks of the peers that did not, which it adds to left.
func (s *Server) handOverTo(ctx context.Context, peers *Pool, port int, byPeer map[*worker][]blockcache.BlockRef, left map[string]bool) []blockcache.BlockRef {
	var (
		mu     sync.Mutex
		failed []blockcache.BlockRef
		wg     sync.WaitGroup
	)
	for w, blocks := range byPeer {
		hr := handoverRequest{Port: port, Blocks: make([]handoverBlock, 0, len(blocks))}
		for _, b := range blocks {
			hr.Blocks = append(hr.Blocks, handoverBlock{Path: b.Object.Path, Version: b.Object.Version,
				Size: b.Object.Size, Index: b.Index})
		}
		wg.Go(func() {
			start := time.Now()
			r, err := peers.handover(ctx, w, hr)
			if err != nil {
				klog.InfoS("A peer did not take the blocks handed over; they go to the next peer", "peer", w.url,
					"blocks", len(blocks), "err", err)
				mu.Lock()
				left[w.url] = true
				failed = append(failed, blocks...)
				mu.Unlock()
				return
			}
			klog.InfoS("Handed blocks over to a peer", "peer", w.url, "blocks", len(blocks), "taken", r.Taken,
				"held", r.Held, "missing", r.Missing, "duration", time.Since(start))
		})
	}
	wg.Wait()
	return failed
}

// waitUnlisted waits (at most half of ctx's time) until the workers' DNS
// no longer lists this worker, so the set it hands over to is the one the
// clients see, then refreshes the peers from it.
func waitUnlisted(ctx context.Context, peers *Pool) {
	host, _, _ := net.SplitHostPort(peers.cfg.DNS)
	wait := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d) / 2
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		addrs, err := peers.cfg.Resolver.LookupHost(wctx, host)
		if err == nil && !slices.Contains(addrs, peers.cfg.Exclude) {
			break
		}
		select {
		case <-wctx.Done():
			klog.InfoS("The workers' DNS still lists this worker; handing over to the peers it lists", "dns", peers.cfg.DNS)
			return
		case <-t.C:
		}
	}
	if err := peers.resolve(ctx); err != nil {
		klog.InfoS("Resolving the peers before the handover failed", "dns", peers.cfg.DNS, "err", err)
	}
}

// handover sends one handover request to w and waits for its answer.
func (p *Pool) handover(ctx context.Context, w *worker, hr handoverRequest) (handoverReply, error) {
	var reply handoverReply
	tok, err := p.readToken()
	if err != nil {
		return reply, err
	}
	body, err := json.Marshal(hr)
	if err != nil {
		return reply, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.opURL(w, "handover"), bytes.NewReader(body))
	if err != nil {
		return reply, err
	}
	req.Header.Set("Content-Type", "application/json")
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return reply, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return reply, errorFromStatus(resp.StatusCode, readReason(resp))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&reply); err != nil {
		return reply, fmt.Errorf("peer %s: bad handover answer: %w", w.url, err)
	}
	return reply, nil
}

// handover is the receiving side: pull the named blocks from the leaving
// worker into this worker's cache.
func (s *Server) handover(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(w, r) {
		return
	}
	switch {
	case s.cfg.Peers == nil:
		http.Error(w, "this worker has no peers (--peers-dns)", http.StatusNotFound)
		return
	case s.draining.Load():
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	case r.PathValue("dataset") != s.cfg.Dataset:
		http.Error(w, fmt.Sprintf("unknown dataset %q", r.PathValue("dataset")), http.StatusNotFound)
		return
	}
	var hr handoverRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&hr); err != nil {
		http.Error(w, "bad handover request: "+err.Error(), http.StatusBadRequest)
		return
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil || hr.Port <= 0 || hr.Port > 65535 || len(hr.Blocks) > maxHandoverBlocks {
		http.Error(w, fmt.Sprintf("bad handover request: want a port and at most %d blocks", maxHandoverBlocks), http.StatusBadRequest)
		return
	}
	from := &worker{url: s.cfg.Peers.scheme() + net.JoinHostPort(host, strconv.Itoa(hr.Port))}
	writeJSON(w, s.pull(r.Context(), from, hr.Blocks))
}

// pull fetches the blocks this worker does not hold from the leaving
// peer from (peer reads: its cache only, never its origin),
// handoverPulls at a time, until ctx ends.
func (s *Server) pull(ctx context.Context, from *worker, blocks []handoverBlock) handoverReply {
	peers := s.cfg.Peers
	var taken, held atomic.Int64
	bs := s.cfg.Cache.BlockSize()
	next := make(chan handoverBlock)
	var wg sync.WaitGroup
	for range handoverPulls {
		wg.Go(func() {
			for hb := range next {
				b := blockcache.BlockRef{Object: blockcache.ObjectRef{Source: s.srcID, Path: hb.Path, Version: hb.Version,
					Size: hb.Size}, Index: hb.Index, BlockSize: bs}
				adopted, err := s.cfg.Cache.Adopt(ctx, b, func(ctx context.Context, p []byte) (uint32, error) {
					done := blockcache.AskingPeers(ctx)
					defer done()
					crc, err := (&Source{pool: peers}).readPeer(ctx, from, b, p)
					if err == nil {
						peers.cfg.Metrics.PeerFetched(len(p))
					}
					return crc, err
				})
				switch {
				case err != nil:
					klog.V(4).InfoS("Handover block not taken", "path", hb.Path, "block", hb.Index, "err", err)
				case adopted:
					taken.Add(1)
				default:
					held.Add(1)
				}
			}
		})
	}
	for _, hb := range blocks {
		if source.CheckPath(hb.Path) != nil || hb.Version == "" || hb.Index < 0 || hb.Size <= 0 || hb.Index >= (hb.Size+bs-1)/bs {
			continue
		}
		select {
		case next <- hb:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	return handoverReply{Taken: int(taken.Load()), Held: int(held.Load()), Missing: len(blocks) - int(taken.Load()+held.Load())}
}
