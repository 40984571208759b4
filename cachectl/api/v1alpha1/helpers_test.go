package v1alpha1

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestAccess(t *testing.T) {
	ds := func(access ...string) *Dataset {
		return &Dataset{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: "ml"},
			Spec: DatasetSpec{Access: AccessSpec{Namespaces: access}}}
	}
	tests := []struct {
		name    string
		ds      *Dataset
		ns      string
		may     bool
		allowed []string
	}{
		{"own namespace", ds(), "ml", true, []string{"ml"}},
		{"another namespace", ds(), "team-b", false, []string{"ml"}},
		{"listed namespace", ds("team-b", "ml"), "team-b", true, []string{"ml", "team-b"}},
		{"unlisted namespace", ds("team-b"), "team-c", false, []string{"ml", "team-b"}},
		{"everyone", ds("*"), "anything", true, []string{"*", "ml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.ds.MayRead(tc.ns); got != tc.may {
				t.Errorf("MayRead(%q) = %v, want %v", tc.ns, got, tc.may)
			}
			if got := tc.ds.AllowedNamespaces(); !slices.Equal(got, tc.allowed) {
				t.Errorf("AllowedNamespaces = %q, want %q", got, tc.allowed)
			}
		})
	}
}
