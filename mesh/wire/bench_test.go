package wire

import "testing"

func BenchmarkDecodeClusterService(b *testing.B) {
	key := ServiceKey(testCluster, "default", "rebel-base")
	value := []byte(validService)
	for b.Loop() {
		if _, err := DecodeClusterService(key, value, testCluster, testClusterID); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(value)), "bytes/value")
}

func BenchmarkDecodeIPIdentityPair(b *testing.B) {
	key := IPKey("10.10.1.7")
	value := []byte(validPair)
	for b.Loop() {
		if _, err := DecodeIPIdentityPair(key, value, testCluster, testClusterID, MaxConnectedClusters255); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(value)), "bytes/value")
}

func BenchmarkDecodeIdentity(b *testing.B) {
	key := IdentityKey(65793)
	value := []byte(validIdentity)
	for b.Loop() {
		if _, err := DecodeIdentity(key, value, testCluster, testClusterID, MaxConnectedClusters255); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(value)), "bytes/value")
}
