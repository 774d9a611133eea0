package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
)

// chromium finds Debian's chromium, installing it with apt-get when it is
// missing and the test runs as root; it skips (or fails, under
// MESHBED_REQUIRE_PRIVILEGED=1) when there is none to be had.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "chromium is not installed and installing it (apt-get install chromium) needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t.Log("chromium is missing: apt-get install -y chromium")
	out, err := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "chromium").CombinedOutput()
	if err != nil {
		// The package lists may be missing on a fresh machine.
		if upd, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr == nil {
			out, err = exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "chromium").CombinedOutput()
		} else {
			out = append(out, upd...)
		}
	}
	if err != nil {
		testenv.Unavailable(t, fmt.Sprintf("chromium cannot be installed: %v: %s", err, lastLines(out, 3)))
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		testenv.Unavailable(t, "chromium installed but not on PATH")
	}
	return p
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte(" / ")))
}

// TestIntegrationReportInBrowser opens report.html of a partition run
// (testdata/report-partition.json, recorded from partition-recovery.yaml;
// MESHBED_BROWSER_REPORT names another report.json) in headless Chromium
// and checks on the screenshot what a person would see: the timeline's
// bars in both clusters' colours and the failures' red, the partition
// step's fault marker, and the decision-event markers of a loss, a
// recovery and a change, each drawn inside the timeline. The screenshot is
// kept in $MESHBED_ARTIFACTS (default bin/artifacts) as
// report-partition.png.
func TestIntegrationReportInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts a browser")
	}
	bin := chromium(t)
	src := os.Getenv("MESHBED_BROWSER_REPORT")
	if src == "" {
		src = "testdata/report-partition.json"
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	var h bytes.Buffer
	if err := r.WriteHTML(&h); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(page, h.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	artifacts := os.Getenv("MESHBED_ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join("..", "bin", "artifacts")
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifacts, "report-partition.png")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--force-device-scale-factor=1", "--window-size=1100,900", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--screenshot="+shot, "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v: %s", err, lastLines(out, 5))
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)

	// The plot is where the answering clusters' colours are.
	plot := bounds(img, palette[0], palette[1])
	if plot.Empty() {
		t.Fatalf("no timeline bars drawn (no pixel of %s or %s) in %s", palette[0], palette[1], shot)
	}
	// Markers stand a little above the bars (step numbers) and on them.
	plot = image.Rect(plot.Min.X-8, plot.Min.Y-16, plot.Max.X+8, plot.Max.Y+4).Intersect(img.Bounds())
	t.Logf("timeline at %v", plot)
	for _, c := range []struct{ what, hex string }{
		{"cluster1's bars", palette[0]},
		{"cluster2's bars", palette[1]},
		{"failed requests", "#d62728"},
		{"the partition's fault marker", "#c62828"},
		{"loss events (RemoteLost, BackendsWithdrawn)", "#b71c1c"},
		{"recovery events (RemoteRestored)", "#1b5e20"},
		{"change events (AffinityFallback)", "#6a1b9a"},
	} {
		if n := count(img, plot, c.hex); n < 8 {
			t.Errorf("%s: %d pixels of %s inside the timeline %v, want them drawn (screenshot %s)", c.what, n, c.hex, plot, shot)
		}
	}
}

func parseHex(s string) color.RGBA {
	var c color.RGBA
	fmt.Sscanf(s, "#%02x%02x%02x", &c.R, &c.G, &c.B)
	c.A = 255
	return c
}

// near: every channel within 6 of want (PNG encoding is exact; this only
// allows for colour management).
func near(c color.Color, want color.RGBA) bool {
	r, g, b, _ := c.RGBA()
	d := func(a uint32, w uint8) bool { x := int(a>>8) - int(w); return x >= -6 && x <= 6 }
	return d(r, want.R) && d(g, want.G) && d(b, want.B)
}

func count(img image.Image, in image.Rectangle, hex string) int {
	want, n := parseHex(hex), 0
	for y := in.Min.Y; y < in.Max.Y; y++ {
		for x := in.Min.X; x < in.Max.X; x++ {
			if near(img.At(x, y), want) {
				n++
			}
		}
	}
	return n
}

// bounds is the smallest rectangle holding every vertical run of at least
// 30 pixels of the colours: the bars, not the legend's swatches.
func bounds(img image.Image, hexes ...string) image.Rectangle {
	var r image.Rectangle
	b := img.Bounds()
	for _, h := range hexes {
		want := parseHex(h)
		for x := b.Min.X; x < b.Max.X; x++ {
			run := 0
			for y := b.Min.Y; y <= b.Max.Y; y++ {
				if y < b.Max.Y && near(img.At(x, y), want) {
					run++
					continue
				}
				if run >= 30 {
					r = r.Union(image.Rect(x, y-run, x+1, y))
				}
				run = 0
			}
		}
	}
	return r
}
