package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// conflistName sorts before anything a node may already hold, so the
// runtime picks meshbed's network (it takes the first file).
const conflistName = "05-meshbed.conflist"

// networkName is the conflist's network name.
const networkName = "meshbed"

func pluginPath(binDir string) string    { return filepath.Join(binDir, pluginType) }
func conflistPath(confDir string) string { return filepath.Join(confDir, conflistName) }

// conflist is the network configuration list that names the plugin and the
// agent's socket.
func conflist(socket string) ([]byte, error) {
	if !filepath.IsAbs(socket) {
		return nil, fmt.Errorf("socket %q is not an absolute path", socket)
	}
	type plugin struct {
		Type       string `json:"type"`
		SocketPath string `json:"socketPath"`
	}
	b, err := json.MarshalIndent(struct {
		CNIVersion string   `json:"cniVersion"`
		Name       string   `json:"name"`
		Plugins    []plugin `json:"plugins"`
	}{"1.0.0", networkName, []plugin{{pluginType, socket}}}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// install copies the plugin binary self into binDir and writes the
// conflist into confDir, each through a temporary file and a rename, so
// the runtime never runs half a binary or reads half a file. The binary
// goes first: a conflist must never name a plugin that is not there.
func install(self, binDir, confDir, socket string) error {
	list, err := conflist(socket)
	if err != nil {
		return err
	}
	src, err := os.Open(self)
	if err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	defer src.Close()
	if err := writeAtomic(pluginPath(binDir), src, 0o755); err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := writeAtomic(conflistPath(confDir), bytes.NewReader(list), 0o644); err != nil {
		return fmt.Errorf("install conflist: %w", err)
	}
	return nil
}

func writeAtomic(path string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
