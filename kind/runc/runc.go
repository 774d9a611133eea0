// Package runc is meshbed-runc, an OCI runtime wrapper for hosts that
// withhold CAP_SYS_RESOURCE from root (some CI sandboxes): runc asks for
// every capability a privileged container lists, and fails with "unable to
// apply caps: operation not permitted" when one is missing from its own
// bounding set. Main removes the capabilities this process does not hold
// from the OCI spec (config.json in the --bundle directory for create and
// run, the --process file for exec), raises an oomScoreAdj below its own
// (lowering it needs CAP_SYS_RESOURCE too), and then executes runc with the
// same arguments.
package runc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Main is meshbed-runc: it rewrites the spec that args (runc's command
// line, without the program name) names and executes runc with args. It
// does not return: on failure it prints why and exits 1.
func Main(args []string) {
	if err := fixup(args); err != nil {
		fmt.Fprintf(os.Stderr, "meshbed-runc: %v\n", err)
		os.Exit(1)
	}
	runc, err := findRunc()
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshbed-runc: %v\n", err)
		os.Exit(1)
	}
	argv := append([]string{"runc"}, args...)
	if err := syscall.Exec(runc, argv, os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "meshbed-runc: exec %s: %v\n", runc, err)
		os.Exit(1)
	}
}

func findRunc() (string, error) {
	if p := os.Getenv("MESHBED_RUNC"); p != "" {
		return p, nil
	}
	self, _ := os.Executable()
	if p, err := exec.LookPath("runc"); err == nil && !sameFile(p, self) {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"} {
		if _, err := os.Stat(p); err == nil && !sameFile(p, self) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no runc found (set MESHBED_RUNC)")
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// fixup finds the spec the runc command line names and rewrites it.
func fixup(args []string) error {
	cmd, rest := subcommand(args)
	switch cmd {
	case "create", "run":
		bundle := flagValue(rest, "bundle", "b")
		if bundle == "" {
			bundle = "."
		}
		return rewrite(filepath.Join(bundle, "config.json"), func(spec map[string]any) {
			if p, ok := spec["process"].(map[string]any); ok {
				fixProcess(p)
			}
		})
	case "exec":
		if p := flagValue(rest, "process", "p"); p != "" {
			return rewrite(p, fixProcess)
		}
	}
	return nil
}

// globalWithValue are runc's global flags that take a separate value.
var globalWithValue = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}

func subcommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return a, args[i+1:]
		}
		if globalWithValue[a] {
			i++
		}
	}
	return "", nil
}

func flagValue(args []string, long, short string) string {
	for i, a := range args {
		for _, f := range []string{"--" + long, "-" + long, "-" + short} {
			if a == f && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, f+"="); ok {
				return v
			}
		}
	}
	return ""
}

func rewrite(path string, fix func(map[string]any)) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber() // keep 64-bit IDs and limits exact
	var spec map[string]any
	if err := d.Decode(&spec); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	fix(spec)
	out, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	return nil
}

// fixProcess edits an OCI process object (the spec's "process", or exec's
// --process file).
func fixProcess(p map[string]any) {
	held := heldCaps()
	if caps, ok := p["capabilities"].(map[string]any); ok {
		for set, v := range caps {
			list, ok := v.([]any)
			if !ok {
				continue
			}
			kept := list[:0]
			for _, c := range list {
				if s, ok := c.(string); ok && !held(s) {
					continue
				}
				kept = append(kept, c)
			}
			caps[set] = kept
		}
	}
	if v, ok := p["oomScoreAdj"].(json.Number); ok {
		if want, err := v.Int64(); err == nil {
			if cur, err := ownOOMScoreAdj(); err == nil && want < cur {
				p["oomScoreAdj"] = json.Number(strconv.FormatInt(cur, 10))
			}
		}
	}
}

// heldCaps reports whether this process's bounding set holds a capability
// (by OCI name, e.g. CAP_SYS_RESOURCE). Unknown names are kept.
func heldCaps() func(string) bool {
	var bound uint64
	known := false
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil {
					bound, known = n, true
				}
			}
		}
	}
	return func(name string) bool {
		n, ok := capNumber[name]
		if !known || !ok {
			return true
		}
		return bound&(1<<n) != 0
	}
}

func ownOOMScoreAdj() (int64, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

var capNumber = map[string]uint{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE,
	"CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH, "CAP_FOWNER": unix.CAP_FOWNER,
	"CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP,
	"CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE, "CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
	"CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
	"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE,
	"CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"CAP_SYS_BOOT": unix.CAP_SYS_BOOT, "CAP_SYS_NICE": unix.CAP_SYS_NICE,
	"CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "CAP_SYS_TIME": unix.CAP_SYS_TIME,
	"CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG, "CAP_MKNOD": unix.CAP_MKNOD,
	"CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "CAP_SETFCAP": unix.CAP_SETFCAP,
	"CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "CAP_AUDIT_READ": unix.CAP_AUDIT_READ,
	"CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF, "CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}
