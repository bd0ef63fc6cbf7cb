// Command go-elector is the client-go peer of leasehold's interop tests and benchmarks: client-go's
// tools/leaderelection on a LeaseLock, as client-go's own example uses it, but with the durations
// as flags so both sides of a test run with the same settings. It prints one line per event on
// stdout, flushed at once, for the test harness to read:
//
//	started <id> <name>      OnStartedLeading
//	stopped <id> <name>      OnStoppedLeading
//	leader <id> <name> <who> OnNewLeader
//
// With -count M it runs M electors on the leases NAME-0 .. NAME-(M-1) in one process (benchmarks).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

var out sync.Mutex

func emit(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "path to a kubeconfig")
	id := flag.String("id", "", "holder identity")
	name := flag.String("name", "", "lease name (prefix with -count)")
	namespace := flag.String("namespace", "default", "lease namespace")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
	release := flag.Bool("release-on-cancel", true, "ReleaseOnCancel")
	count := flag.Int("count", 0, "run this many electors on NAME-0..NAME-(count-1)")
	qps := flag.Float64("qps", 0, "client QPS (0: client-go default)")
	flag.Parse()
	if *id == "" || *name == "" {
		fmt.Fprintln(os.Stderr, "go-elector: -id and -name are required")
		os.Exit(64)
	}

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatal(err)
	}
	if *qps > 0 {
		config.QPS = float32(*qps)
		config.Burst = int(*qps) * 2
	}
	client := clientset.NewForConfigOrDie(config)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
	}()

	names := []string{*name}
	if *count > 0 {
		names = names[:0]
		for i := 0; i < *count; i++ {
			names = append(names, fmt.Sprintf("%s-%d", *name, i))
		}
	}
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func(n string) {
			defer wg.Done()
			run(ctx, config, client, *id, n, *namespace, *leaseDuration, *renewDeadline, *retryPeriod, *release)
		}(n)
	}
	wg.Wait()
}

func run(ctx context.Context, _ *rest.Config, client *clientset.Clientset, id, name, namespace string,
	leaseDuration, renewDeadline, retryPeriod time.Duration, release bool) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: name, Namespace: namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			ReleaseOnCancel: release,
			LeaseDuration:   leaseDuration,
			RenewDeadline:   renewDeadline,
			RetryPeriod:     retryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) { emit("started %s %s", id, name) },
				OnStoppedLeading: func() { emit("stopped %s %s", id, name) },
				OnNewLeader:      func(who string) { emit("leader %s %s %s", id, name, who) },
			},
		})
	}
}
