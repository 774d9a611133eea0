package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/meshbed/meshbed/scenarios"
)

// action is a step's action bound to the run: it runs itself against a
// target and says what it needs of one.
type action interface {
	// Run executes the action once.
	Run(ctx context.Context, t Target) (outcome, error)
	// needs lists the capabilities the action needs of a target.
	needs() []Capability
}

// actionOf binds a step's action; r (nil when only the capabilities are
// wanted) holds the run's traffic streams.
func actionOf(st *scenarios.Step, r *runner) (action, error) {
	switch a := st.Action().(type) {
	case *scenarios.Apply:
		return applyAction{a}, nil
	case *scenarios.Delete:
		return deleteAction{a}, nil
	case *scenarios.Scale:
		return scaleAction{a}, nil
	case *scenarios.Annotate:
		return annotateAction{a}, nil
	case *scenarios.Curl:
		return curlAction{a, st.Expect.Encrypted != nil}, nil
	case *scenarios.Traffic:
		return trafficAction{a, r}, nil
	case *scenarios.StopTraffic:
		return stopTrafficAction{a, r}, nil
	case *scenarios.Partition:
		return partitionAction{a}, nil
	case *scenarios.Heal:
		return healAction{}, nil
	case *scenarios.Stop:
		return processAction{a.Process, Target.Stop}, nil
	case *scenarios.Start:
		return processAction{a.Process, Target.Start}, nil
	case *scenarios.Restart:
		return processAction{a.Process, Target.Restart}, nil
	case *scenarios.Wait:
		return waitAction{a}, nil
	case *scenarios.AddNode:
		return addNodeAction{a}, nil
	}
	return nil, fmt.Errorf("step %d (%s) has no action", st.Index, st.Name)
}

type applyAction struct{ *scenarios.Apply }

func (a applyAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, applyManifest(ctx, t, a.Manifest)
}
func (applyAction) needs() []Capability { return nil }

// applyManifest applies a manifest's objects to each of its clusters.
func applyManifest(ctx context.Context, t Target, mf scenarios.Manifest) error {
	for _, name := range mf.Clusters {
		if err := t.Apply(ctx, name, mf.Objects); err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
	}
	return nil
}

type deleteAction struct{ *scenarios.Delete }

func (a deleteAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, t.Delete(ctx, a.Cluster, a.Kind, a.Namespace, a.Name, a.GracePeriod)
}
func (deleteAction) needs() []Capability { return nil }

type scaleAction struct{ *scenarios.Scale }

func (a scaleAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, t.Scale(ctx, a.Cluster, a.Namespace, a.Deployment, a.Replicas, a.GracePeriod)
}
func (scaleAction) needs() []Capability { return nil }

type annotateAction struct{ *scenarios.Annotate }

func (a annotateAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, t.Annotate(ctx, a.Cluster, a.Namespace, a.Service, a.Annotations)
}
func (annotateAction) needs() []Capability { return nil }

// curlAction makes count sequential requests from one pod of the source
// deployment, each a new connection. It is the one action retried under
// within: every attempt is a fresh set of requests.
// With capture (the step expects encrypted) the requests run under a
// capture of the underlay.
type curlAction struct {
	*scenarios.Curl
	capture bool
}

func (a curlAction) Run(ctx context.Context, t Target) (outcome, error) {
	if a.capture {
		return a.runCaptured(ctx, t)
	}
	return a.requests(ctx, t, a.URL.String())
}

func (a curlAction) requests(ctx context.Context, t Target, url string) (outcome, error) {
	out := outcome{responses: map[string]int{}, hasTraffic: true}
	client, err := t.Client(ctx, a.From, url, a.Timeout)
	if err != nil {
		return out, err
	}
	src := ""
	if sn, ok := client.(SourceNoder); ok {
		src = sn.SourceNode()
	}
	t0 := time.Now()
	var results []result
	for range a.Count {
		res := client.Get(ctx)
		results = append(results, result{at: res.Start, took: res.Duration, cluster: res.Cluster})
		out.requests++
		if res.Err != nil {
			out.errors++
		} else {
			out.responses[res.Cluster]++
			if src != "" && res.Node != "" && res.Cluster+"/"+res.Node != src {
				out.crossNode++
			}
		}
	}
	out.took = time.Since(t0)
	out.maxOutage = maxOutage(results)
	return out, nil
}
func (a curlAction) needs() []Capability {
	if a.capture {
		return []Capability{CapExpectEncrypted}
	}
	return nil
}

type trafficAction struct {
	*scenarios.Traffic
	r *runner
}

func (a trafficAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, a.r.startTraffic(ctx, t, a.Traffic)
}
func (trafficAction) needs() []Capability { return nil }

type stopTrafficAction struct {
	*scenarios.StopTraffic
	r *runner
}

func (a stopTrafficAction) Run(ctx context.Context, _ Target) (outcome, error) {
	return a.r.stopTraffic(a.Name)
}
func (stopTrafficAction) needs() []Capability { return nil }

type partitionAction struct{ *scenarios.Partition }

func (a partitionAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, t.Partition(ctx, a.Groups, a.Plane, a.OneWay)
}

func (a partitionAction) needs() []Capability {
	caps := []Capability{CapPartition}
	switch a.Plane {
	case scenarios.PlaneData:
		caps = append(caps, CapPartitionData)
	case scenarios.PlaneControl:
		caps = append(caps, CapPartitionControl)
	}
	if a.OneWay {
		caps = append(caps, CapPartitionOneWay)
	}
	for _, g := range a.Groups {
		for _, m := range g {
			if m.Node != "" {
				return append(caps, CapPartitionNode)
			}
		}
	}
	return caps
}

type healAction struct{}

func (healAction) Run(ctx context.Context, t Target) (outcome, error) { return outcome{}, t.Heal(ctx) }
func (healAction) needs() []Capability                                { return nil }

// processAction is stop, start or restart.
type processAction struct {
	p  scenarios.Process
	do func(Target, context.Context, scenarios.Process) error
}

func (a processAction) Run(ctx context.Context, t Target) (outcome, error) {
	return outcome{}, a.do(t, ctx, a.p)
}

func (a processAction) needs() []Capability {
	return []Capability{Capability("process/" + string(a.p.Component))}
}

type waitAction struct{ *scenarios.Wait }

func (a waitAction) Run(ctx context.Context, _ Target) (outcome, error) {
	select {
	case <-ctx.Done():
		return outcome{}, ctx.Err()
	case <-time.After(a.Duration):
		return outcome{}, nil
	}
}
func (waitAction) needs() []Capability { return nil }
