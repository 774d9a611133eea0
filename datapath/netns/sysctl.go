package netns

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Sysctl is one kernel parameter: Path is relative to /proc/sys and uses
// slashes ("net/ipv4/conf/all/rp_filter"), which, unlike the dotted form,
// stays unambiguous for interface names that contain dots.
type Sysctl struct {
	Path  string
	Value string
}

func (s Sysctl) String() string { return s.Path + "=" + s.Value }

// errSysctlPath is wrapped by every rejected sysctl path.
var errSysctlPath = errors.New("invalid sysctl path")

// checkSysctlPath refuses anything that could leave /proc/sys/net: the
// namespace-scoped settings are all there, and a path from a config file
// must not reach global ones such as kernel/*.
func checkSysctlPath(p string) error {
	if !strings.HasPrefix(p, "net/") {
		return fmt.Errorf("%w %q: must start with net/", errSysctlPath, p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("%w %q", errSysctlPath, p)
		}
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("%w %q", errSysctlPath, p)
	}
	return nil
}

// SetSysctls writes the settings inside the namespace, in order, entering it
// once for all of them. /proc/sys/net resolves to the namespace of the thread
// that opens the file, which is why this cannot be done from outside.
func (ns *NS) SetSysctls(settings ...Sysctl) error {
	for _, s := range settings {
		if err := checkSysctlPath(s.Path); err != nil {
			return fmt.Errorf("set sysctls in %q: %w", ns.name, err)
		}
	}
	if err := ns.Do(func() error { return writeSysctls(settings) }); err != nil {
		return fmt.Errorf("set sysctls in %q: %w", ns.name, err)
	}
	return nil
}

// Sysctl reads one setting inside the namespace, without the trailing
// newline.
func (ns *NS) Sysctl(path string) (string, error) {
	if err := checkSysctlPath(path); err != nil {
		return "", fmt.Errorf("read sysctl in %q: %w", ns.name, err)
	}
	var v string
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/" + path)
		v = strings.TrimRight(string(b), "\n")
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl in %q: %w", ns.name, err)
	}
	return v, nil
}

// writeSysctls must run on a thread inside the target namespace.
func writeSysctls(settings []Sysctl) error {
	for _, s := range settings {
		// No O_CREATE: a missing file means the kernel lacks the
		// setting, and that must be an error, not an attempt to create it.
		f, err := os.OpenFile("/proc/sys/"+s.Path, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("write sysctl %s: %w", s, err)
		}
		_, err = f.WriteString(s.Value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write sysctl %s: %w", s, err)
		}
	}
	return nil
}
