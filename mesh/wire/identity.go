package wire

import "fmt"

// Reserved identities, shared by all clusters.
const (
	IdentityHost          uint32 = 1
	IdentityWorld         uint32 = 2
	IdentityUnmanaged     uint32 = 3
	IdentityHealth        uint32 = 4
	IdentityInit          uint32 = 5
	IdentityRemoteNode    uint32 = 6
	IdentityKubeAPIServer uint32 = 7

	// MaxReservedIdentity is the highest identity that is reserved (not
	// allocated by any cluster).
	MaxReservedIdentity uint32 = 255
	// MaxIdentity is the highest identity: identities are 24 bits.
	MaxIdentity = 1<<24 - 1
)

// IsReservedIdentity reports whether id is a reserved identity (1..255).
func IsReservedIdentity(id uint32) bool { return id >= 1 && id <= MaxReservedIdentity }

// ClusterIDShift is the bit position of the cluster ID in an identity: 16
// for 255 connected clusters, 15 for 511.
func ClusterIDShift(maxConnected uint32) (uint, error) {
	switch maxConnected {
	case MaxConnectedClusters255:
		return 16, nil
	case MaxConnectedClusters511:
		return 15, nil
	}
	return 0, ValidateMaxConnectedClusters(maxConnected)
}

// ClusterIdentityRange returns the identities cluster clusterID allocates:
// [clusterID<<shift, (clusterID+1)<<shift - 1].
func ClusterIdentityRange(clusterID, maxConnected uint32) (lo, hi uint32, err error) {
	if err := ValidateClusterID(clusterID, maxConnected); err != nil {
		return 0, 0, err
	}
	shift, _ := ClusterIDShift(maxConnected)
	return clusterID << shift, (clusterID+1)<<shift - 1, nil
}

// IdentityClusterID returns the cluster ID encoded in an allocated identity
// (0 for reserved identities).
func IdentityClusterID(id, maxConnected uint32) (uint32, error) {
	shift, err := ClusterIDShift(maxConnected)
	if err != nil {
		return 0, err
	}
	return (id & MaxIdentity) >> shift, nil
}

// CheckClusterIdentity accepts a reserved identity or one in clusterID's
// range; 0 and anything else is an error.
func CheckClusterIdentity(id, clusterID, maxConnected uint32) error {
	if IsReservedIdentity(id) {
		return nil
	}
	lo, hi, err := ClusterIdentityRange(clusterID, maxConnected)
	if err != nil {
		return err
	}
	if id < lo || id > hi {
		return fmt.Errorf("identity %d outside cluster %d's range [%d, %d]", id, clusterID, lo, hi)
	}
	return nil
}
