package wireguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeyFileName is the private key's file in the agent's state directory.
const KeyFileName = "wireguard.key"

// LoadOrCreateKey returns the private key kept in path, creating it (mode
// 0600, written to a temporary file and renamed, so a crash never leaves a
// half-written key) when the file does not exist. A file that exists but
// does not hold a key is an error: replacing it would silently change the
// node's identity for every peer.
func LoadOrCreateKey(path string) (key wgtypes.Key, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err = wgtypes.ParseKey(strings.TrimSpace(string(b)))
		if err != nil {
			return wgtypes.Key{}, false, fmt.Errorf("private key %s: %w (remove the file to make a new key)", path, err)
		}
		return key, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return wgtypes.Key{}, false, fmt.Errorf("private key: %w", err)
	}
	if key, err = wgtypes.GeneratePrivateKey(); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("generate private key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("private key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".wireguard-key-*")
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("private key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.WriteString(key.String() + "\n"); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("write private key %s: %w", path, err)
	}
	return key, true, nil
}

// ParsePublicKey decodes a peer's public key as published with its node:
// standard base64 of 32 bytes.
func ParsePublicKey(s string) (wgtypes.Key, error) {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("WireGuard public key %q: %w", truncate(s, 60), err)
	}
	if k == (wgtypes.Key{}) {
		return wgtypes.Key{}, errors.New("WireGuard public key is all zeros")
	}
	return k, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
