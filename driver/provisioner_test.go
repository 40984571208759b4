package driver

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/sluice-dev/sluice/internal/contract"
)

func testPVC(modes ...v1.PersistentVolumeAccessMode) *v1.PersistentVolumeClaim {
	return &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "models", Namespace: "team-a", UID: "1234",
			Annotations: map[string]string{"volume.kubernetes.io/storage-provisioner": contract.DriverName}},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      modes,
			StorageClassName: new("sluice"),
			Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{
				v1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
}

func testClass(params map[string]string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sluice"}, Provisioner: contract.DriverName,
		Parameters: params}
}

func TestProvision(t *testing.T) {
	okParams := map[string]string{"source": "s3://bucket/models", "subPath": "llama",
		nodeStageSecretName: "${pvc.name}-s3", nodeStageSecretNamespace: "${pvc.namespace}"}
	block := v1.PersistentVolumeBlock
	blockPVC := testPVC(v1.ReadOnlyMany)
	blockPVC.Spec.VolumeMode = &block
	clonePVC := testPVC(v1.ReadOnlyMany)
	clonePVC.Spec.DataSource = &v1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "x"}
	tests := []struct {
		name    string
		pvc     *v1.PersistentVolumeClaim
		params  map[string]string
		wantErr string
	}{
		{"read-only many", testPVC(v1.ReadOnlyMany), okParams, ""},
		{"read-write once", testPVC(v1.ReadWriteOnce), okParams, "read-only"},
		{"block", blockPVC, okParams, "block"},
		{"clone", clonePVC, okParams, "data source"},
		{"no source", testPVC(v1.ReadOnlyMany), map[string]string{}, `"source"`},
		{"half a secret reference", testPVC(v1.ReadOnlyMany),
			map[string]string{"source": "file:///x", nodeStageSecretName: "s"}, "both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs, _ := newControllerServer("")
			p := &provisioner{cs: cs}
			pv, state, err := p.Provision(context.Background(), controller.ProvisionOptions{
				StorageClass: testClass(tc.params), PVName: "pvc-1234", PVC: tc.pvc})
			if tc.wantErr != "" {
				if err == nil || state != controller.ProvisioningFinished || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v (state %v), want a final error naming %q", err, state, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := pv.Spec.CSI
			if pv.Name != "pvc-1234" || c.Driver != contract.DriverName || c.VolumeHandle != "pvc-1234" || !c.ReadOnly ||
				c.VolumeAttributes["source"] != "s3://bucket/models" || c.VolumeAttributes["subPath"] != "llama" {
				t.Errorf("PV %+v", pv.Spec)
			}
			if c.NodeStageSecretRef == nil || c.NodeStageSecretRef.Name != "models-s3" || c.NodeStageSecretRef.Namespace != "team-a" {
				t.Errorf("node-stage secret ref %+v", c.NodeStageSecretRef)
			}
			if _, ok := c.VolumeAttributes[nodeStageSecretName]; ok {
				t.Error("secret reference leaked into the volume attributes")
			}
			if q := pv.Spec.Capacity[v1.ResourceStorage]; q.Cmp(resource.MustParse("1Gi")) != 0 {
				t.Errorf("capacity %v, want the request", q)
			}
			if err := p.Delete(context.Background(), pv); err != nil {
				t.Fatal(err)
			}
			var ignored *controller.IgnoredError
			other := &v1.PersistentVolume{Spec: v1.PersistentVolumeSpec{PersistentVolumeSource: v1.PersistentVolumeSource{
				CSI: &v1.CSIPersistentVolumeSource{Driver: "other.csi"}}}}
			if err := p.Delete(context.Background(), other); !errors.As(err, &ignored) {
				t.Errorf("deleting another driver's PV: %v, want IgnoredError", err)
			}
		})
	}
}

// TestProvisionController runs the library's controller against a fake
// API server: a PVC of our StorageClass gets a PV.
func TestProvisionController(t *testing.T) {
	pvc := testPVC(v1.ReadOnlyMany)
	client := fake.NewClientset(testClass(map[string]string{"source": "file:///srv/data"}), pvc)
	cs, _ := newControllerServer("")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pc := controller.NewProvisionController(ctx, client, contract.DriverName, &provisioner{cs: cs},
		controller.LeaderElection(false), controller.ResyncPeriod(time.Second))
	go pc.Run(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pvs.Items) == 1 {
			pv := pvs.Items[0]
			if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != "models" || pv.Spec.CSI.VolumeAttributes["source"] != "file:///srv/data" {
				t.Fatalf("PV %+v", pv.Spec)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no PV provisioned within 20s")
}
