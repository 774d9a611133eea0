package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Demo runs the seed demo's workload on real clusters (cmd/meshbed-demo):
// args[0] is echo (rebel-base: answers every request with a JSON object
// naming its cluster, pod and node), get (x-wing's curl: requests, one JSON
// line each) or idle (x-wing's main process, until a signal). POD_NAME and
// NODE_NAME (the downward API) name the pod and node in echo's answers. An
// unknown command is ErrUsage.
func Demo(args []string) error {
	if len(args) == 0 {
		return ErrUsage
	}
	var err error
	switch args[0] {
	case "echo":
		err = demoEcho(args[1:])
	case "get":
		err = demoGet(args[1:])
	case "idle":
		waitSignal()
	default:
		return ErrUsage
	}
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	return nil
}

// ErrUsage is Demo's error for a command line it does not know.
var ErrUsage = errors.New("usage: meshbed-demo echo --cluster NAME [--port P] | get [--count N] [--timeout D] URL | idle")

func waitSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}

func demoEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	cluster := fs.String("cluster", "", "cluster name to answer with")
	port := fs.Int("port", 80, "TCP port")
	quiet := fs.Duration("drain-quiet", 2*time.Second, "on SIGTERM, keep answering until no connection has opened or closed for this long")
	_ = fs.Parse(args)
	if *cluster == "" {
		return errors.New("--cluster is required")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(*port)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	e := ServeEcho(*cluster, os.Getenv("NODE_NAME"), os.Getenv("POD_NAME"), []net.Listener{ln})
	fmt.Fprintf(os.Stderr, "meshbed-demo echo: cluster %s on :%d\n", *cluster, *port)
	waitSignal()
	// SIGTERM: drain as the simulator's echo does (keep answering until
	// the load balancers have moved on), bounded by the kubelet's grace
	// period, which ends with SIGKILL anyway.
	fmt.Fprintln(os.Stderr, "meshbed-demo echo: draining")
	if err := e.Drain(context.Background(), *quiet); err != nil {
		fmt.Fprintln(os.Stderr, "meshbed-demo echo:", err)
	}
	return e.Close()
}

// Line is one request's outcome, as get prints it. With --stdin, ID is
// the line that asked for it: requests run concurrently and their lines
// come out as they finish, so a slow request holds up no other.
type Line struct {
	ID      string `json:"id,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	Pod     string `json:"pod,omitempty"`
	Error   string `json:"error,omitempty"`
	Millis  int64  `json:"ms"`
}

func demoGet(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	count := fs.Int("count", 1, "requests, one after another")
	timeout := fs.Duration("timeout", 2*time.Second, "bound of each request")
	stdin := fs.Bool("stdin", false, "one request per line read from stdin (instead of --count), until EOF, each started at once and answered with the line as its id: a client others drive")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("want one URL")
	}
	url := fs.Arg(0)
	var d net.Dialer
	c := NewClient(d.DialContext, *timeout)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	var mu sync.Mutex // one line at a time on stdout
	one := func(id string) error {
		r := c.Get(context.Background(), url)
		l := Line{ID: id, Cluster: r.Cluster, Pod: r.Pod, Millis: r.Duration.Milliseconds()}
		if r.Err != nil {
			l.Error = r.Err.Error()
		}
		mu.Lock()
		defer mu.Unlock()
		if err := enc.Encode(l); err != nil {
			return err
		}
		return out.Flush()
	}
	if *stdin {
		var wg sync.WaitGroup
		errc := make(chan error, 1)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			id := sc.Text()
			wg.Go(func() {
				if err := one(id); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			})
		}
		wg.Wait()
		select {
		case err := <-errc:
			return err
		default:
		}
		return sc.Err()
	}
	for i := 0; i < *count; i++ {
		if err := one(""); err != nil {
			return err
		}
	}
	return nil
}
