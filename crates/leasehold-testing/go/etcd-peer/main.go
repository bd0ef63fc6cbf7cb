// Command etcd-elector is the Go peer of leasehold's etcd interop tests and benchmarks: etcd's
// own go.etcd.io/etcd/client/v3/concurrency election, as Go services use it (a session, then
// Campaign, which returns once elected). It prints one line per event on stdout, flushed at once:
//
//	elected <id> <name> <key> <rev>   Campaign returned: leading, with the key's create revision
//	resigned <id> <name>              after Resign, on SIGTERM
//	lost <id> <name>                  the session ended (its lease expired or was revoked)
//
// With -count M it campaigns in the elections NAME-0 .. NAME-(M-1) on one session (benchmarks:
// one keepalive stream keeps them all); -parallel N lets at most N of them campaign at a time (etcd
// refuses a burst of 100,000 with "too many requests", and a Campaign that fails gives up).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

var out sync.Mutex

func emit(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func main() {
	endpoints := flag.String("endpoints", "http://127.0.0.1:2379", "comma-separated etcd endpoints")
	name := flag.String("name", "", "election name (key prefix)")
	id := flag.String("id", "", "this candidate's proposal (identity)")
	ttl := flag.Int("ttl", 60, "session TTL in seconds (concurrency's default: 60)")
	count := flag.Int("count", 1, "campaign in NAME-0 .. NAME-(count-1) on one session")
	parallel := flag.Int("parallel", 0, "at most this many campaigns at a time (0: all at once)")
	flag.Parse()
	if *name == "" || *id == "" {
		fmt.Fprintln(os.Stderr, "etcd-elector: -name and -id are required")
		os.Exit(64)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd-elector:", err)
		os.Exit(1)
	}
	defer cli.Close()
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd-elector: session:", err)
		os.Exit(1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	names := []string{*name}
	if *count > 1 {
		names = names[:0]
		for i := 0; i < *count; i++ {
			names = append(names, fmt.Sprintf("%s-%d", *name, i))
		}
	}
	var wg sync.WaitGroup
	var turns chan struct{}
	if *parallel > 0 {
		turns = make(chan struct{}, *parallel)
	}
	elections := make([]*concurrency.Election, len(names))
	for i, n := range names {
		elections[i] = concurrency.NewElection(session, n)
		wg.Add(1)
		if turns != nil {
			turns <- struct{}{}
		}
		go func(e *concurrency.Election, n string) {
			defer wg.Done()
			err := e.Campaign(ctx, *id)
			if turns != nil {
				<-turns
			}
			if err != nil {
				if ctx.Err() == nil {
					out.Lock()
					fmt.Fprintf(os.Stderr, "campaign %s: %v\n", n, err)
					out.Unlock()
				}
				return
			}
			emit("elected %s %s %s %d", *id, n, e.Key(), e.Rev())
		}(elections[i], n)
	}
	select {
	case <-ctx.Done():
		wg.Wait()
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		for i, e := range elections {
			if e.Key() != "" {
				if err := e.Resign(rctx); err == nil {
					emit("resigned %s %s", *id, names[i])
				}
			}
		}
	case <-session.Done():
		emit("lost %s %s", *id, *name)
		os.Exit(2)
	}
}
