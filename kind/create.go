package kind

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
)

// bootTimeout is how Kind fails when a node's systemd has not reached its
// multi-user target within Kind's fixed 30 s: on a busy two-core machine a
// node container sometimes boots slower than that.
const bootTimeout = "could not find a log line that matches"

// CreateAttempts bounds Create's tries.
const CreateAttempts = 3

// Create is provider.Create, tried again (after deleting what the failed
// attempt left) when a node only booted too slowly for Kind's fixed wait;
// every other error is returned at once.
func Create(p *cluster.Provider, name, kubeconfig string, opts ...cluster.CreateOption) error {
	var errs []string
	for range CreateAttempts {
		err := p.Create(name, opts...)
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), bootTimeout) {
			return err
		}
		errs = append(errs, err.Error())
		if names, lerr := p.List(); lerr == nil && slices.Contains(names, name) {
			if derr := p.Delete(name, kubeconfig); derr != nil {
				return fmt.Errorf("%w; deleting the half-made cluster: %v", err, derr)
			}
		}
	}
	return fmt.Errorf("kind create cluster %s: nodes did not boot in time, %d attempts: %s", name, CreateAttempts, strings.Join(errs, "; "))
}

// LoadImages is `kind load docker-image` for images onto every node of the
// Kind cluster name: docker save of each image, then an import on every node.
func LoadImages(ctx context.Context, p *cluster.Provider, name string, images ...string) error {
	dir, err := os.MkdirTemp("", "meshbed-kind-images")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	nodes, err := p.ListInternalNodes(name)
	if err != nil {
		return err
	}
	for _, img := range images {
		archive := filepath.Join(dir, "image.tar")
		if out, err := exec.CommandContext(ctx, "docker", "save", "-o", archive, img).CombinedOutput(); err != nil {
			return fmt.Errorf("docker save %s: %v: %s", img, err, out)
		}
		for _, n := range nodes {
			f, err := os.Open(archive)
			if err != nil {
				return err
			}
			err = nodeutils.LoadImageArchive(n, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("kind load docker-image %s on %s: %w", img, n.String(), err)
			}
		}
	}
	return nil
}
