// Package envtest runs controller-runtime's envtest with petcd as its etcd, as a Go controller
// project would: TEST_ASSET_ETCD points at petcd, TEST_ASSET_KUBE_APISERVER at a real
// kube-apiserver (`make test-envtest` sets both). One control plane for the whole test.
package envtest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func TestPetcdUnderEnvtest(t *testing.T) {
	for _, v := range []string{"TEST_ASSET_ETCD", "TEST_ASSET_KUBE_APISERVER"} {
		if os.Getenv(v) == "" {
			t.Fatalf("%s is not set (run `make test-envtest`)", v)
		}
	}
	// the datastore is petcd, and it answers --version with etcd's lines first (kwokctl and
	// scripts read the first "Version: x.y.z")
	out, err := exec.Command(os.Getenv("TEST_ASSET_ETCD"), "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "etcd Version: 3.6.") || !strings.Contains(string(out), "petcd Version:") {
		t.Fatalf("TEST_ASSET_ETCD is not petcd: %q (%v)", out, err)
	}

	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("envtest could not start the control plane on petcd: %v", err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			if err := env.Stop(); err != nil {
				t.Errorf("envtest did not stop cleanly: %v", err)
			}
		}
	}
	defer stop()

	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "petcd-envtest", Namespace: "default"},
		Data:       map[string]string{"step": "created"},
	}
	if err := c.Create(ctx, cm); err != nil {
		t.Fatalf("create: %v", err)
	}
	key := types.NamespacedName{Namespace: "default", Name: "petcd-envtest"}
	stale := &corev1.ConfigMap{}
	if err := c.Get(ctx, key, stale); err != nil {
		t.Fatalf("get: %v", err)
	}

	fresh := stale.DeepCopy()
	fresh.Data["step"] = "updated"
	if err := c.Update(ctx, fresh); err != nil {
		t.Fatalf("update: %v", err)
	}
	if fresh.ResourceVersion == stale.ResourceVersion {
		t.Fatalf("update kept resourceVersion %s", fresh.ResourceVersion)
	}

	// an update carrying the resourceVersion read before the last write: 409 Conflict
	stale.Data["step"] = "lost update"
	err = c.Update(ctx, stale)
	if !apierrors.IsConflict(err) {
		t.Fatalf("stale update: want 409 Conflict, got %v", err)
	}

	got := &corev1.ConfigMap{}
	if err := c.Get(ctx, key, got); err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.Data["step"] != "updated" || got.ResourceVersion != fresh.ResourceVersion {
		t.Fatalf("after the conflict: %v at %s, want updated at %s", got.Data, got.ResourceVersion, fresh.ResourceVersion)
	}

	list := &corev1.ConfigMapList{}
	if err := c.List(ctx, list, client.InNamespace("default")); err != nil {
		t.Fatalf("list: %v", err)
	}
	if err := c.Delete(ctx, got); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := c.Get(ctx, key, &corev1.ConfigMap{}); !apierrors.IsNotFound(err) {
		t.Fatalf("get after delete: want 404, got %v", err)
	}
	stop()
}
