package datapath

// The BPF objects and their Go bindings are generated and committed; this
// reproduces them (clang and libbpf-dev's headers are the only build inputs,
// bpf/include holds the kernel ABI the C code needs).
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -type flow_event -type metric -cflags "-O2 -mcpu=v3 -Wall -Werror -I../bpf/include -I../bpf -I/usr/include/bpf" pod ../bpf/pod.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -no-global-types -cflags "-O2 -mcpu=v3 -Wall -Werror -I../bpf/include -I../bpf -I/usr/include/bpf" overlay ../bpf/overlay.c
