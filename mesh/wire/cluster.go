package wire

import (
	"errors"
	"fmt"
)

// MaxClusterNameLength is the longest valid cluster name.
const MaxClusterNameLength = 32

// ValidateClusterName checks a cluster name: 1 to 32 characters of
// [a-z0-9-], not starting or ending with "-".
func ValidateClusterName(name string) error {
	if name == "" {
		return errors.New("cluster name is empty")
	}
	if len(name) > MaxClusterNameLength {
		return fmt.Errorf("cluster name %q is longer than %d characters", name, MaxClusterNameLength)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("cluster name %q: invalid character %q (want [a-z0-9-])", name, c)
		}
	}
	if name[0] == '-' || name[len(name)-1] == '-' {
		return fmt.Errorf("cluster name %q starts or ends with '-'", name)
	}
	return nil
}

// ValidateMaxConnectedClusters accepts 255 and 511.
func ValidateMaxConnectedClusters(maxConnected uint32) error {
	if maxConnected != MaxConnectedClusters255 && maxConnected != MaxConnectedClusters511 {
		return fmt.Errorf("maxConnectedClusters %d: want %d or %d", maxConnected, MaxConnectedClusters255, MaxConnectedClusters511)
	}
	return nil
}

// ValidateClusterID checks that id is in 1..maxConnected (255 or 511).
func ValidateClusterID(id, maxConnected uint32) error {
	if err := ValidateMaxConnectedClusters(maxConnected); err != nil {
		return err
	}
	if id < 1 || id > maxConnected {
		return fmt.Errorf("cluster ID %d out of range 1..%d", id, maxConnected)
	}
	return nil
}
