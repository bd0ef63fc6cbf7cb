// Command cr-operator is the controller-runtime peer of leasehold's operator benchmark: the same
// example operator as our Rust one, written the usual controller-runtime way, so a benchmark
// compares like with like. It is built by scripts/build-servers.sh against the controller-runtime
// release whose k8s.io/* modules match the kube-apiserver under test.
//
// The operator: every ConfigMap labelled example.leasehold.dev/source (any value) in -namespace
// is a source; for each it keeps a derived ConfigMap <source>-derived in the same namespace,
// labelled example.leasehold.dev/derived-from=<source>, annotated
// example.leasehold.dev/source-version=<the source's resourceVersion>, with the source's data
// under keys prefixed "derived-", and a controller owner reference to the source. A reconcile
// reads both objects from the cache and writes only when the derived object is missing or its
// annotation or data differ. There is no fencing token (controller-runtime has none).
//
// The manager: leader election on the Lease -lease-name in -namespace with identity -id,
// LeaderElectionReleaseOnCancel, durations as flags (controller-runtime's defaults 15s/10s/2s);
// no metrics or health-probe server; client-side rate limiting off (controller-runtime's
// GetConfig default, QPS -1). Two caches, both restricted to -namespace and by label (a label
// selector cannot say "either label"): the manager's for sources, a second one for derived
// objects, started with the manager's caches. -warmup sets the controller's EnableWarmup, which
// starts its sources, both watches with their initial lists, before the replica is elected;
// without it they start on election. -workers sets MaxConcurrentReconciles (default 4;
// controller-runtime's own default is 1).
//
// Stdout, one line per event, flushed at once, for the benchmark to read:
//
//	elected <id>                        the manager won the election (mgr.Elected() closed)
//	first-reconcile <id> <source name>  the process's first reconcile completed successfully
//
// "elected" always comes first, once per process (the manager exits when its term ends).
//
// Logs and errors go to stderr (klog). SIGTERM or SIGINT stops the manager gracefully: the
// controller drains, then the Lease is released.
package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

const (
	sourceLabel       = "example.leasehold.dev/source"
	derivedFromLabel  = "example.leasehold.dev/derived-from"
	sourceVersionAnno = "example.leasehold.dev/source-version"
	derivedSuffix     = "-derived"
	derivedKeyPrefix  = "derived-"
)

var out sync.Mutex

func emit(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// derivedCache is a second cache the manager starts with its own, before election (a
// cache.Cache alone would be taken for a runnable that needs leadership).
type derivedCache struct{ cache.Cache }

func (d derivedCache) GetCache() cache.Cache { return d.Cache }

func main() {
	klog.InitFlags(nil)
	// -kubeconfig is registered by controller-runtime's config package and read by ctrl.GetConfig.
	namespace := flag.String("namespace", "default", "namespace of the sources, derived objects and Lease")
	leaseName := flag.String("lease-name", "", "name of the leader election Lease in -namespace")
	id := flag.String("id", "", "leader election identity")
	warmup := flag.Bool("warmup", false, "controller option EnableWarmup: start sources before election")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
	workers := flag.Int("workers", 4, "MaxConcurrentReconciles")
	flag.Parse()
	if *id == "" || *leaseName == "" {
		fmt.Fprintln(os.Stderr, "cr-operator: -id and -lease-name are required")
		os.Exit(64)
	}
	ctrl.SetLogger(klog.NewKlogr())
	if err := run(*namespace, *leaseName, *id, *warmup, *leaseDuration, *renewDeadline, *retryPeriod, *workers); err != nil {
		fmt.Fprintf(os.Stderr, "cr-operator: %v\n", err)
		os.Exit(1)
	}
}

func exists(key string) labels.Selector {
	req, err := labels.NewRequirement(key, selection.Exists, nil)
	if err != nil {
		panic(err)
	}
	return labels.NewSelector().Add(*req)
}

func run(namespace, leaseName, id string, warmup bool, leaseDuration, renewDeadline, retryPeriod time.Duration, workers int) error {
	config, err := ctrl.GetConfig()
	if err != nil {
		return err
	}

	// The Lease lock as controller-runtime's NewResourceLock makes it, but with our identity.
	leConfig := rest.AddUserAgent(rest.CopyConfig(config), "leader-election")
	leConfig.Timeout = max(renewDeadline/2, time.Second)
	coordination, err := coordinationv1client.NewForConfig(leConfig)
	if err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: leaseName},
		Client:     coordination,
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}

	namespaces := map[string]cache.Config{namespace: {}}
	mgr, err := ctrl.NewManager(config, ctrl.Options{
		LeaderElection:                      true,
		LeaderElectionResourceLock:          resourcelock.LeasesResourceLock,
		LeaderElectionNamespace:             namespace,
		LeaderElectionID:                    leaseName,
		LeaderElectionResourceLockInterface: lock,
		LeaderElectionReleaseOnCancel:       true,
		LeaseDuration:                       &leaseDuration,
		RenewDeadline:                       &renewDeadline,
		RetryPeriod:                         &retryPeriod,
		Metrics:                             metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:              "0",
		Cache: cache.Options{
			DefaultNamespaces: namespaces,
			ByObject:          map[client.Object]cache.ByObject{&corev1.ConfigMap{}: {Label: exists(sourceLabel)}},
		},
	})
	if err != nil {
		return err
	}

	derived, err := cache.New(config, cache.Options{
		HTTPClient:        mgr.GetHTTPClient(),
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		DefaultNamespaces: namespaces,
		ByObject:          map[client.Object]cache.ByObject{&corev1.ConfigMap{}: {Label: exists(derivedFromLabel)}},
	})
	if err != nil {
		return err
	}
	if err := mgr.Add(derivedCache{derived}); err != nil {
		return err
	}

	// Reconciles run only once elected; with warm-up the queue is full by then and the first can
	// end before the goroutine below wakes, so whichever comes first prints "elected", once.
	announce := sync.OnceFunc(func() { emit("elected %s", id) })
	r := &reconciler{
		id:      id,
		elected: announce,
		sources: mgr.GetCache(),
		derived: derived,
		writer:  mgr.GetClient(),
	}
	c, err := controller.New("leasehold-example", mgr, controller.Options{
		Reconciler:              r,
		MaxConcurrentReconciles: workers,
		EnableWarmup:            &warmup,
	})
	if err != nil {
		return err
	}
	if err := c.Watch(source.Kind(mgr.GetCache(), &corev1.ConfigMap{},
		&handler.TypedEnqueueRequestForObject[*corev1.ConfigMap]{})); err != nil {
		return err
	}
	if err := c.Watch(source.Kind(derived, &corev1.ConfigMap{},
		handler.TypedEnqueueRequestsFromMapFunc(func(_ context.Context, cm *corev1.ConfigMap) []reconcile.Request {
			src := cm.Labels[derivedFromLabel]
			if src == "" {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: cm.Namespace, Name: src}}}
		}))); err != nil {
		return err
	}

	ctx := ctrl.SetupSignalHandler()
	go func() {
		select {
		case <-mgr.Elected():
			announce()
		case <-ctx.Done():
		}
	}()
	return mgr.Start(ctx)
}

type reconciler struct {
	id      string
	sources client.Reader
	derived client.Reader
	writer  client.Client
	elected func()
	first   sync.Once
}

func (r *reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	if err := r.reconcile(ctx, req); err != nil {
		return reconcile.Result{}, err
	}
	r.first.Do(func() {
		r.elected()
		emit("first-reconcile %s %s", r.id, req.Name)
	})
	return reconcile.Result{}, nil
}

func (r *reconciler) reconcile(ctx context.Context, req reconcile.Request) error {
	var src corev1.ConfigMap
	if err := r.sources.Get(ctx, req.NamespacedName, &src); err != nil {
		// A deleted source's derived object goes with it, by its owner reference.
		return client.IgnoreNotFound(err)
	}
	data := make(map[string]string, len(src.Data))
	for k, v := range src.Data {
		data[derivedKeyPrefix+k] = v
	}

	key := types.NamespacedName{Namespace: src.Namespace, Name: src.Name + derivedSuffix}
	var cur corev1.ConfigMap
	err := r.derived.Get(ctx, key, &cur)
	switch {
	case apierrors.IsNotFound(err):
		obj := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		r.shape(&src, obj, data)
		if err := controllerutil.SetControllerReference(&src, obj, r.writer.Scheme()); err != nil {
			return err
		}
		return r.writer.Create(ctx, obj)
	case err != nil:
		return err
	}
	if cur.Annotations[sourceVersionAnno] == src.ResourceVersion && maps.Equal(cur.Data, data) {
		return nil
	}
	obj := cur.DeepCopy()
	r.shape(&src, obj, data)
	if err := controllerutil.SetControllerReference(&src, obj, r.writer.Scheme()); err != nil {
		return err
	}
	return r.writer.Update(ctx, obj)
}

// shape sets what the derived object must say of src: label, annotation, data.
func (r *reconciler) shape(src, obj *corev1.ConfigMap, data map[string]string) {
	if obj.Labels == nil {
		obj.Labels = map[string]string{}
	}
	obj.Labels[derivedFromLabel] = src.Name
	if obj.Annotations == nil {
		obj.Annotations = map[string]string{}
	}
	obj.Annotations[sourceVersionAnno] = src.ResourceVersion
	obj.Data = data
}
