package cachectl

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/sluice-dev/sluice/cachectl/api/v1alpha1"
	"github.com/sluice-dev/sluice/internal/contract"
	"github.com/sluice-dev/sluice/internal/pki"
)

// Keys of the CA Secret.
const (
	caCertKey   = "ca.crt"
	caKeyKey    = "ca.key"
	caBundleKey = "bundle.crt"
	// authorityRecheck is how often the CA Secret is read again (another
	// replica, once leader, may have rotated it).
	authorityRecheck = time.Minute
	// namespacesRecheck bounds how often the namespaces of a Dataset open
	// to "*" are listed.
	namespacesRecheck = 30 * time.Second
)

// Authority is the controller's CA. It lives in the Secret
// contract.CASecret of Namespace, made on first use and replaced once two
// thirds of its life have passed (pki); the bundle keeps the replaced CA
// until it expires. From it the Authority issues each Dataset's workers
// their serving certificate (a Secret the Dataset owns, renewed at two
// thirds of its 90 days or when the CA changes), publishes the bundle as
// the ConfigMap contract.CABundleConfigMap where readers need it, and
// serves the heartbeat endpoint's certificate.
//
// Reads go to the API server (Reader), not the manager's cache, so that the
// controller watches no Secret or ConfigMap cluster-wide; what was checked
// is remembered, so a steady state costs no request.
//
// Lock order: mu is a leaf; API requests run without it except in load.
type Authority struct {
	Client        client.Client
	Reader        client.Reader
	Namespace     string
	ClusterDomain string
	// ServiceName is the controller's Service (the heartbeat endpoint's
	// certificate names it).
	ServiceName string
	// Owner, when set, owns the CA Secret and every bundle ConfigMap: a
	// cluster-scoped object of the installation (the controller's
	// ClusterRole), so that removing the installation removes them.
	Owner *metav1.OwnerReference
	Now   func() time.Time

	mu        sync.Mutex
	ca        *pki.CA
	bundle    []byte
	loadedAt  time.Time
	published map[string]publication            // namespace → what was written there
	issued    map[types.NamespacedName]issuedAt // worker Secrets known good
	allNS     []string
	allUIDs   map[string]types.UID // of allNS
	allNSAt   time.Time
	hb        *tls.Certificate
	hbCA      *x509.Certificate
	hbDue     time.Time
}

// publication is the bundle written to a namespace, and the namespace's
// UID when known: a namespace deleted and created again has another, and
// gets the bundle again.
type publication struct {
	bundle []byte
	uid    types.UID
}

type issuedAt struct {
	ca  *x509.Certificate
	due time.Time
}

func (a *Authority) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// current returns the CA and bundle, reading (or making, or rotating) the
// CA Secret at most every authorityRecheck.
func (a *Authority) current(ctx context.Context) (*pki.CA, []byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.ca != nil && now.Sub(a.loadedAt) < authorityRecheck {
		return a.ca, a.bundle, nil
	}
	ca, bundle, err := a.load(ctx, now)
	if err != nil {
		if a.ca != nil { // keep serving with what was read before
			klog.ErrorS(err, "Reading the CA Secret failed; keeping the CA read before", "secret", klog.KRef(a.Namespace, contract.CASecret))
			return a.ca, a.bundle, nil
		}
		return nil, nil, err
	}
	a.ca, a.bundle, a.loadedAt = ca, bundle, now
	return ca, bundle, nil
}

func (a *Authority) load(ctx context.Context, now time.Time) (*pki.CA, []byte, error) {
	key := client.ObjectKey{Namespace: a.Namespace, Name: contract.CASecret}
	sec := &corev1.Secret{}
	err := a.Reader.Get(ctx, key, sec)
	if apierrors.IsNotFound(err) {
		ca, err := pki.NewCA("sluice", now)
		if err != nil {
			return nil, nil, err
		}
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace,
			Labels: map[string]string{LabelManagedBy: managerName}},
			Data: map[string][]byte{caCertKey: ca.CertPEM, caKeyKey: ca.KeyPEM, caBundleKey: ca.CertPEM}}
		a.own(sec)
		if err := a.Client.Create(ctx, sec); err != nil {
			if apierrors.IsAlreadyExists(err) { // another replica made it first
				return a.load(ctx, now)
			}
			return nil, nil, fmt.Errorf("creating the CA Secret %s: %w", key, err)
		}
		klog.InfoS("Made the sluice CA", "secret", klog.KObj(sec), "notAfter", ca.Cert.NotAfter)
		return ca, ca.CertPEM, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the CA Secret %s: %w", key, err)
	}
	ca, err := pki.LoadCA(sec.Data[caCertKey], sec.Data[caKeyKey])
	if err != nil {
		return nil, nil, fmt.Errorf("the CA Secret %s: %w (delete it to make a new CA)", key, err)
	}
	if !pki.Due(ca.CertPEM, nil, nil, now) {
		if a.own(sec) { // made before the controller had an owner
			if err := a.Client.Update(ctx, sec); err != nil {
				return nil, nil, fmt.Errorf("setting the owner of %s: %w", key, err)
			}
		}
		return ca, sec.Data[caBundleKey], nil
	}
	next, err := pki.NewCA("sluice", now)
	if err != nil {
		return nil, nil, err
	}
	bundle := pki.Bundle(next, sec.Data[caBundleKey], now)
	sec.Data = map[string][]byte{caCertKey: next.CertPEM, caKeyKey: next.KeyPEM, caBundleKey: bundle}
	a.own(sec)
	if err := a.Client.Update(ctx, sec); err != nil {
		return nil, nil, fmt.Errorf("rotating the CA in %s: %w", key, err)
	}
	klog.InfoS("Rotated the sluice CA; the bundle keeps the old one until it expires", "secret", klog.KObj(sec),
		"oldNotAfter", ca.Cert.NotAfter, "notAfter", next.Cert.NotAfter)
	return next, bundle, nil
}

// Bundle returns the CA bundle (PEM).
func (a *Authority) Bundle(ctx context.Context) ([]byte, error) {
	_, b, err := a.current(ctx)
	return b, err
}

// ClientTLS verifies the workers against the current bundle (preload).
func (a *Authority) ClientTLS() *tls.Config {
	return pki.ClientConfig(func() (*x509.CertPool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := a.Bundle(ctx)
		if err != nil {
			return nil, err
		}
		return pki.PoolOf(b)
	})
}

// ForDataset gives ds's workers a current serving certificate and
// publishes the bundle where ds's readers (and the CSI node plugin, in the
// controller's namespace) find it.
func (a *Authority) ForDataset(ctx context.Context, ds *v1alpha1.Dataset) error {
	ca, bundle, err := a.current(ctx)
	if err != nil {
		return err
	}
	if err := a.workerSecret(ctx, ds, ca, bundle); err != nil {
		return err
	}
	namespaces := append([]string{a.Namespace}, ds.AllowedNamespaces()...)
	if slices.Contains(namespaces, "*") {
		all, err := a.namespaces(ctx)
		if err != nil {
			return err
		}
		namespaces = append(namespaces, all...)
	}
	for _, ns := range namespaces {
		if ns == "*" {
			continue
		}
		// A failure here must not hold the workers back: the periodic
		// publication tries again.
		if err := a.publish(ctx, ns, "", bundle); err != nil {
			klog.ErrorS(err, "Publishing the CA bundle failed; will retry", "dataset", klog.KObj(ds))
		}
	}
	return nil
}

// WorkerHosts are the names a Dataset's workers are reached by: the
// headless Service (short and qualified forms) and each pod's DNS name.
func WorkerHosts(ds *v1alpha1.Dataset, clusterDomain string) []string {
	svc := WorkersName(ds.Name)
	q := svc + "." + ds.Namespace + ".svc"
	return []string{svc, svc + "." + ds.Namespace, q, q + "." + clusterDomain, "*." + q + "." + clusterDomain}
}

// WorkersTLSSecret names the Secret of a Dataset's workers' certificate.
func WorkersTLSSecret(ds string) string { return WorkersName(ds) + contract.WorkersTLSSuffix }

// Forget drops what the Authority knows of Dataset ds's workers' Secret,
// once the Dataset is gone: a Dataset of the same name created again (in a
// namespace created again) gets its Secret issued anew.
func (a *Authority) Forget(ds types.NamespacedName) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.issued, types.NamespacedName{Namespace: ds.Namespace, Name: WorkersTLSSecret(ds.Name)})
}

func (a *Authority) workerSecret(ctx context.Context, ds *v1alpha1.Dataset, ca *pki.CA, bundle []byte) error {
	key := types.NamespacedName{Namespace: ds.Namespace, Name: WorkersTLSSecret(ds.Name)}
	now := a.now()
	a.mu.Lock()
	known, ok := a.issued[key]
	a.mu.Unlock()
	if ok && known.ca.Equal(ca.Cert) && now.Before(known.due) {
		return nil
	}
	hosts := WorkerHosts(ds, a.ClusterDomain)
	sec := &corev1.Secret{}
	err := a.Reader.Get(ctx, key, sec)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading the workers' TLS Secret %s: %w", key, err)
	}
	exists := err == nil
	cert := sec.Data[corev1.TLSCertKey]
	if !exists || pki.Due(cert, ca, hosts, now) || !bytes.Equal(sec.Data[contract.CABundleKey], bundle) {
		if !exists {
			sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}
		}
		if cert, err = a.issueWorkers(ctx, ds, sec, exists, ca, bundle, hosts, now); err != nil {
			return err
		}
	}
	certs, err := pki.ParseCerts(cert)
	if err != nil {
		return err
	}
	life := certs[0].NotAfter.Sub(certs[0].NotBefore)
	a.mu.Lock()
	if a.issued == nil {
		a.issued = map[types.NamespacedName]issuedAt{}
	}
	// Looked at again within 10 minutes even if not due (a deleted Secret).
	due := certs[0].NotBefore.Add(life * 2 / 3)
	if soon := now.Add(10 * time.Minute); soon.Before(due) {
		due = soon
	}
	a.issued[key] = issuedAt{ca: ca.Cert, due: due}
	a.mu.Unlock()
	return nil
}

// issueWorkers writes a new certificate into sec (read from the API
// server; exists says whether it is there), not through the manager's
// cache, which would watch every Secret of the cluster.
func (a *Authority) issueWorkers(ctx context.Context, ds *v1alpha1.Dataset, sec *corev1.Secret, exists bool, ca *pki.CA,
	bundle []byte, hosts []string, now time.Time) ([]byte, error) {
	certPEM, keyPEM, err := ca.Issue(hosts, now)
	if err != nil {
		return nil, err
	}
	sec.Labels = objectLabels(ds)
	sec.Type = corev1.SecretTypeTLS
	sec.Data = map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM, contract.CABundleKey: bundle}
	if err := controllerutil.SetControllerReference(ds, sec, a.Client.Scheme()); err != nil {
		return nil, err
	}
	if exists {
		err = a.Client.Update(ctx, sec)
	} else {
		err = a.Client.Create(ctx, sec)
	}
	if err != nil {
		return nil, fmt.Errorf("writing the workers' TLS Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	klog.InfoS("Issued the cache workers' certificate", "dataset", klog.KObj(ds), "secret", sec.Name)
	return certPEM, nil
}

// publish writes the bundle to the ConfigMap of namespace ns, unless it
// was written there already (to the namespace of UID uid, when known).
func (a *Authority) publish(ctx context.Context, ns string, uid types.UID, bundle []byte) error {
	a.mu.Lock()
	p, ok := a.published[ns]
	done := ok && bytes.Equal(p.bundle, bundle) && (uid == "" || p.uid == uid)
	a.mu.Unlock()
	if done {
		return nil
	}
	cm := &corev1.ConfigMap{}
	key := client.ObjectKey{Namespace: ns, Name: contract.CABundleConfigMap}
	err := a.Reader.Get(ctx, key, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: ns,
			Labels: map[string]string{LabelManagedBy: managerName}},
			Data: map[string]string{contract.CABundleKey: string(bundle)}}
		a.own(cm)
		err = a.Client.Create(ctx, cm)
	case err == nil:
		owned := a.own(cm)
		if cm.Data[contract.CABundleKey] != string(bundle) || owned {
			cm.Data = map[string]string{contract.CABundleKey: string(bundle)}
			err = a.Client.Update(ctx, cm)
		}
	}
	if apierrors.IsNotFound(err) {
		return nil // the namespace is not there (yet): an access list may name one ahead
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("publishing the CA bundle %s: %w", key, err)
	}
	a.mu.Lock()
	if a.published == nil {
		a.published = map[string]publication{}
	}
	a.published[ns] = publication{bundle: bundle, uid: uid}
	a.mu.Unlock()
	return nil
}

// own adds a.Owner to obj's owners unless it is there; it reports whether
// obj changed.
func (a *Authority) own(obj metav1.Object) bool {
	if a.Owner == nil {
		return false
	}
	refs := obj.GetOwnerReferences()
	for _, r := range refs {
		if r.UID == a.Owner.UID {
			return false
		}
	}
	obj.SetOwnerReferences(append(refs, *a.Owner))
	return true
}

// NeedLeaderElection: only the leader writes.
func (a *Authority) NeedLeaderElection() bool { return true }

// Start publishes the bundle in every namespace (the sidecars' heartbeats
// need it in namespaces without a Dataset, too) every namespacesRecheck
// until ctx is done; failures are logged and retried.
func (a *Authority) Start(ctx context.Context) error {
	t := time.NewTicker(namespacesRecheck)
	defer t.Stop()
	for {
		if err := a.publishAll(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Publishing the CA bundle failed; will retry")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (a *Authority) publishAll(ctx context.Context) error {
	_, bundle, err := a.current(ctx)
	if err != nil {
		return err
	}
	all, err := a.namespaces(ctx)
	if err != nil {
		return err
	}
	a.mu.Lock()
	uids := a.allUIDs
	a.mu.Unlock()
	for _, ns := range append([]string{a.Namespace}, all...) {
		if err := a.publish(ctx, ns, uids[ns], bundle); err != nil {
			return err
		}
	}
	return nil
}

// namespaces lists every namespace, at most every namespacesRecheck.
func (a *Authority) namespaces(ctx context.Context) ([]string, error) {
	a.mu.Lock()
	if a.allNS != nil && a.now().Sub(a.allNSAt) < namespacesRecheck {
		defer a.mu.Unlock()
		return a.allNS, nil
	}
	a.mu.Unlock()
	list := &corev1.NamespaceList{}
	if err := a.Reader.List(ctx, list); err != nil {
		return nil, fmt.Errorf("listing namespaces (a Dataset is open to \"*\"): %w", err)
	}
	names := make([]string, 0, len(list.Items))
	uids := make(map[string]types.UID, len(list.Items))
	for _, n := range list.Items {
		if n.DeletionTimestamp.IsZero() {
			names = append(names, n.Name)
			uids[n.Name] = n.UID
		}
	}
	a.mu.Lock()
	a.allNS, a.allUIDs, a.allNSAt = names, uids, a.now()
	a.mu.Unlock()
	return names, nil
}

// HeartbeatCertificate is the heartbeat endpoint's certificate for the
// controller's Service, issued in memory and renewed at two thirds of its
// life or when the CA changes.
func (a *Authority) HeartbeatCertificate() (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, _, err := a.current(ctx)
	if err != nil {
		return nil, err
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hb != nil && a.hbCA.Equal(ca.Cert) && now.Before(a.hbDue) {
		return a.hb, nil
	}
	q := a.ServiceName + "." + a.Namespace + ".svc"
	certPEM, keyPEM, err := ca.Issue([]string{a.ServiceName, a.ServiceName + "." + a.Namespace, q, q + "." + a.ClusterDomain}, now)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	a.hb, a.hbCA, a.hbDue = &c, ca.Cert, now.Add(pki.CertLifetime*2/3)
	return a.hb, nil
}
