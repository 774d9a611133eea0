package target

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
)

var _ engine.EventSource = (*Target)(nil)

// Events implements engine.EventSource: the decision events meshbed's
// components logged since the run began, read back from their container
// logs (event.ParseLogLine), with node names translated to the topology's
// (node-1..N in node-name order).
func (t *Target) Events(_ context.Context, since time.Time) ([]event.Event, error) {
	t.mu.Lock()
	col := t.events
	t.mu.Unlock()
	if col == nil {
		return nil, fmt.Errorf("events: the Kind target is not up")
	}
	return col.log.Since(since), col.err()
}

// eventCollector follows the logs of every container of meshbed's
// components in each cluster (the agents and the mesh-apiserver with its
// kvstoremesh) from the moment the run began: each container instance, as
// it starts running, gets one log stream (Follow) of its own until it
// ends, so that the events of a pod deleted by a restart or a scale-down
// are read while it lives. A line that names a decision but does not
// decode is counted and reported, not dropped in silence.
type eventCollector struct {
	log    *event.Log
	since  time.Time
	logger *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	following map[string]bool // "cluster/pod-uid/container/restarts"
	bad       int
	firstBad  string
}

// startEvents starts following every cluster's component logs.
func (t *Target) startEvents(since time.Time) error {
	ctx, cancel := context.WithCancel(context.Background())
	col := &eventCollector{log: event.NewLog(0), since: since, logger: t.opts.Logger, cancel: cancel, following: map[string]bool{}}
	for _, name := range t.order {
		c := t.clusters[name]
		nodeNames := map[string]string{}
		for i, n := range c.nodes {
			nodeNames[n.Name] = scenarios.NodeName(i + 1)
		}
		f := informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithNamespace(kind.Namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "app.kubernetes.io/part-of=meshbed" }))
		inf := f.Core().V1().Pods().Informer()
		onPod := func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				col.pod(ctx, c, p, nodeNames)
			}
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: onPod, UpdateFunc: func(_, obj any) { onPod(obj) },
		}); err != nil {
			cancel()
			return err
		}
		f.Start(ctx.Done())
		col.wg.Add(1)
		go func() { defer col.wg.Done(); f.WaitForCacheSync(ctx.Done()); <-ctx.Done(); f.Shutdown() }()
	}
	t.mu.Lock()
	t.events = col
	t.mu.Unlock()
	return nil
}

// pod starts a stream for each running container instance of p not yet
// followed.
func (col *eventCollector) pod(ctx context.Context, c *kcluster, p *corev1.Pod, nodeNames map[string]string) {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running == nil {
			continue
		}
		key := fmt.Sprintf("%s/%s/%s/%d", c.spec.Name, p.UID, cs.Name, cs.RestartCount)
		col.mu.Lock()
		seen := col.following[key]
		col.following[key] = true
		col.mu.Unlock()
		if seen {
			continue
		}
		col.wg.Add(1)
		go func() {
			defer col.wg.Done()
			col.follow(ctx, c, p.Name, cs.Name, cs.State.Running.StartedAt.Time, nodeNames)
		}()
	}
}

// follow reads one container instance's log until it ends. A stream that
// breaks while the container still runs is opened again; lines already
// read are skipped by their text (each carries its event's nanosecond
// time).
func (col *eventCollector) follow(ctx context.Context, c *kcluster, pod, container string, started time.Time, nodeNames map[string]string) {
	seen := map[string]bool{}
	since := col.since
	if started.After(since) {
		since = started
	}
	for attempt := 0; ctx.Err() == nil; attempt++ {
		// SinceTime has a resolution of seconds: a second earlier, and the
		// events' own times filter the rest.
		opts := &corev1.PodLogOptions{Container: container, Follow: true, SinceTime: &metav1.Time{Time: since.Add(-time.Second)}}
		rc, err := c.kube.CoreV1().Pods(kind.Namespace).GetLogs(pod, opts).Stream(ctx)
		if err == nil {
			sc := bufio.NewScanner(rc)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				if seen[line] || !strings.Contains(line, event.LogMessage) {
					continue
				}
				seen[line] = true
				col.line(c.spec.Name, pod, line, nodeNames)
			}
			rc.Close()
		}
		if ctx.Err() != nil {
			return
		}
		// The stream ended: the container exited (its next instance gets a
		// stream of its own) or the connection broke. Go on only while this
		// instance still runs.
		p, gerr := c.kube.CoreV1().Pods(kind.Namespace).Get(ctx, pod, metav1.GetOptions{})
		if gerr != nil || !instanceRuns(p, container, started) {
			return
		}
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// instanceRuns reports whether the container of p still runs the instance
// that started at started.
func instanceRuns(p *corev1.Pod, container string, started time.Time) bool {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == container && cs.State.Running != nil {
			return cs.State.Running.StartedAt.Time.Equal(started)
		}
	}
	return false
}

// line records the event of one log line.
func (col *eventCollector) line(cluster, pod, line string, nodeNames map[string]string) {
	e, ok, err := event.ParseLogLine(line)
	if !ok {
		return
	}
	if err != nil {
		col.mu.Lock()
		col.bad++
		if col.firstBad == "" {
			col.firstBad = fmt.Sprintf("cluster %s, pod %s: %v: %q", cluster, pod, err, line)
		}
		col.mu.Unlock()
		return
	}
	if e.Time.Before(col.since) {
		return
	}
	if e.Node != "" {
		if n, ok := nodeNames[e.Node]; ok {
			e.Node = n
		}
	}
	col.log.Record(e)
}

// err reports the lines that named a decision but did not decode.
func (col *eventCollector) err() error {
	col.mu.Lock()
	defer col.mu.Unlock()
	if col.bad == 0 {
		return nil
	}
	return fmt.Errorf("events: %d log lines did not decode, the first: %s", col.bad, col.firstBad)
}

// stop ends every stream and informer.
func (col *eventCollector) stop() {
	col.cancel()
	col.wg.Wait()
}
