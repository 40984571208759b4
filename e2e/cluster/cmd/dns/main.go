// Command dns is the e2e cluster's DNS server (what CoreDNS is in a real
// cluster, much smaller): it answers A queries for
// <service>.<namespace>.svc.<domain> and, for pods with a hostname in an
// EndpointSlice (StatefulSet pods of a headless Service),
// <hostname>.<service>.<namespace>.svc.<domain>, from the ready endpoints.
// The e2e cluster runs no kube-proxy, so a ClusterIP Service is answered
// with its endpoints too (ports equal target ports in sluice's Services).
// Other names get NXDOMAIN: the machine has no upstream worth asking.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig")
	listen := flag.String("listen", ":53", "UDP and TCP address")
	domain := flag.String("domain", "cluster.local", "cluster domain")
	ttl := flag.Uint("ttl", 2, "answer TTL, seconds (short: workers scale)")
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	f := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	slices := f.Discovery().V1().EndpointSlices().Lister()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	h := &handler{slices: slices, suffix: ".svc." + strings.Trim(*domain, ".") + ".", ttl: uint32(*ttl)}
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: *listen, Net: network, Handler: h}
		go func() {
			if err := srv.ListenAndServe(); err != nil {
				log.Fatalf("dns %s %s: %v", network, *listen, err)
			}
		}()
		defer srv.Shutdown()
	}
	log.Printf("serving %s on %s", h.suffix, *listen)
	<-ctx.Done()
}

type handler struct {
	slices listersv1.EndpointSliceLister
	suffix string
	ttl    uint32
}

func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		ips, known := h.lookup(strings.ToLower(q.Name))
		if !known {
			m.Rcode = dns.RcodeNameError
			continue
		}
		if q.Qtype != dns.TypeA && q.Qtype != dns.TypeANY {
			continue // NOERROR, no data (e.g. AAAA)
		}
		for _, ip := range ips {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA,
				Class: dns.ClassINET, Ttl: h.ttl}, A: ip})
		}
	}
	_ = w.WriteMsg(m)
}

// lookup resolves <svc>.<ns>.svc.<domain>. or <host>.<svc>.<ns>.svc.<domain>.
func (h *handler) lookup(name string) ([]net.IP, bool) {
	rest, ok := strings.CutSuffix(name, h.suffix)
	if !ok {
		return nil, false
	}
	parts := strings.Split(rest, ".")
	var host, svc, ns string
	switch len(parts) {
	case 2:
		svc, ns = parts[0], parts[1]
	case 3:
		host, svc, ns = parts[0], parts[1], parts[2]
	default:
		return nil, false
	}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc})
	list, err := h.slices.EndpointSlices(ns).List(sel)
	if err != nil || len(list) == 0 {
		return nil, false
	}
	var ips []net.IP
	for _, s := range list {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if host != "" && (e.Hostname == nil || *e.Hostname != host) {
				continue
			}
			for _, a := range e.Addresses {
				if ip := net.ParseIP(a).To4(); ip != nil {
					ips = append(ips, ip)
				}
			}
		}
	}
	return ips, host == "" || len(ips) > 0
}
