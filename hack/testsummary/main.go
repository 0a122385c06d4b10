// Command testsummary turns the event stream of `go test -json` into what `go test` prints without
// -json, followed by a summary: how many tests ran, passed, failed and skipped, and why each
// skipped test skipped. `make test` pipes `go test -json` through it:
//
//	go test -json ./... | go run ./hack/testsummary
//
// It prints package results (ok/FAIL lines), build errors and the whole output of every failed
// test, as `go test` does; -v prints every test's output, as `go test -v` does. Lines that are not
// JSON events are passed through unchanged. It exits with status 1 when a test, a package or a
// build failed; in a pipeline with `set -o pipefail` a failure of go test itself (status 2, say)
// still decides the pipeline's status when this exits 0.
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

func main() {
	verbose := flag.Bool("v", false, "print the output of every test, not only of failed ones")
	flag.Parse()
	failed, err := summarize(os.Stdin, os.Stdout, *verbose)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
	if failed {
		os.Exit(1)
	}
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	ImportPath  string // build-output, build-fail
	FailedBuild string
	Elapsed     float64 // seconds, on pass and fail
}

// test is what is known about one test (or subtest) of one package.
type test struct {
	pkg, name string
	output    []string
	done      bool
	elapsed   float64 // seconds, once passed or failed
}

// summary collects the results while the stream is passed through.
type summary struct {
	out     io.Writer
	verbose bool
	tests   map[string]*test // by package + " " + name
	order   []*test          // in the order they started

	passed, failed, skipped     int
	failedTests, skippedTests   []*test
	pkgOK, pkgFailed, pkgNoTest int
	buildFailed                 []string
}

// summarize copies the human-readable form of the go test -json stream in to out, then the
// summary, and reports whether anything failed.
func summarize(in io.Reader, out io.Writer, verbose bool) (failed bool, err error) {
	s := &summary{out: out, verbose: verbose, tests: map[string]*test{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		s.handle(e)
	}
	if err := sc.Err(); err != nil {
		return true, fmt.Errorf("reading the go test -json stream: %w", err)
	}
	s.print()
	return s.failed > 0 || s.pkgFailed > 0 || len(s.buildFailed) > 0, nil
}

func (s *summary) handle(e event) {
	switch {
	case e.Action == "build-output":
		fmt.Fprint(s.out, e.Output)
	case e.Action == "build-fail":
		s.buildFailed = append(s.buildFailed, e.ImportPath)
	case e.Test == "":
		s.packageEvent(e)
	default:
		s.testEvent(e)
	}
}

func (s *summary) packageEvent(e event) {
	switch e.Action {
	case "output":
		if strings.HasPrefix(e.Output, "FAIL") {
			s.unfinished(e.Package) // before the package's FAIL line, as go test prints them
		}
		// Without -v, go test prints neither a passing package's PASS nor the framing lines.
		if s.verbose || (e.Output != "PASS\n" && !isFraming(e.Output)) {
			fmt.Fprint(s.out, e.Output)
		}
	case "pass":
		s.pkgOK++
	case "skip": // no test files
		s.pkgNoTest++
	case "fail":
		s.pkgFailed++
		s.unfinished(e.Package)
	}
}

// unfinished fails the tests of a failed package that never finished (a timeout, a panic, os.Exit)
// and prints their output.
func (s *summary) unfinished(pkg string) {
	for _, t := range s.order {
		if t.pkg == pkg && !t.done {
			t.done = true
			s.failed++
			s.failedTests = append(s.failedTests, t)
			s.flush(t)
		}
	}
}

func (s *summary) testEvent(e event) {
	key := e.Package + " " + e.Test
	t := s.tests[key]
	if t == nil {
		t = &test{pkg: e.Package, name: e.Test}
		s.tests[key] = t
		s.order = append(s.order, t)
	}
	switch e.Action {
	case "output":
		if s.verbose {
			fmt.Fprint(s.out, e.Output)
		} else {
			t.output = append(t.output, e.Output)
		}
	case "pass":
		t.done = true
		s.passed++
	case "skip":
		t.done = true
		s.skipped++
		s.skippedTests = append(s.skippedTests, t)
	case "fail":
		t.done = true
		s.failed++
		s.failedTests = append(s.failedTests, t)
		s.flush(t)
	}
	if t.done && e.Action != "skip" {
		t.output = nil // keep only what the summary needs
		t.elapsed = e.Elapsed
	}
}

// flush prints a failed test's output, without the === RUN/PAUSE/CONT/NAME lines go test -v adds.
func (s *summary) flush(t *test) {
	for _, o := range t.output {
		if !isFraming(o) {
			fmt.Fprint(s.out, o)
		}
	}
}

func isFraming(line string) bool {
	for _, p := range []string{"=== RUN ", "=== PAUSE ", "=== CONT ", "=== NAME "} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// skipReason is what a skipped test logged: its t.Skip message and anything logged before it.
func skipReason(t *test) string {
	var lines []string
	for _, o := range t.output {
		l := strings.TrimSpace(o)
		if l == "" || isFraming(o) || strings.HasPrefix(l, "--- SKIP: ") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		return "(no reason given)"
	}
	return strings.Join(lines, " | ")
}

func (s *summary) print() {
	w := s.out
	fmt.Fprintf(w, "\n=== test summary: %d tests ran (subtests included): %d passed, %d failed, %d skipped\n",
		s.passed+s.failed+s.skipped, s.passed, s.failed, s.skipped)
	fmt.Fprintf(w, "    packages: %d ok, %d failed, %d without tests", s.pkgOK, s.pkgFailed, s.pkgNoTest)
	if len(s.buildFailed) > 0 {
		fmt.Fprintf(w, "; build failed: %s", strings.Join(s.buildFailed, ", "))
	}
	fmt.Fprintln(w)
	if len(s.skippedTests) > 0 {
		fmt.Fprintf(w, "skipped (%d):\n", len(s.skippedTests))
		for _, t := range s.skippedTests {
			fmt.Fprintf(w, "  %s %s: %s\n", t.pkg, t.name, skipReason(t))
		}
	}
	if len(s.failedTests) > 0 {
		fmt.Fprintf(w, "failed (%d):\n", len(s.failedTests))
		for _, t := range s.failedTests {
			fmt.Fprintf(w, "  %s %s\n", t.pkg, t.name)
		}
	}
	s.printSlowest(slowestShown)
}

// slowestShown is how many of the slowest tests the summary names: where the time of a run goes.
const slowestShown = 15

// printSlowest names the n slowest top-level tests (a parallel test's time overlaps others').
func (s *summary) printSlowest(n int) {
	var top []*test
	for _, t := range s.order {
		if t.done && t.elapsed > 0 && !strings.Contains(t.name, "/") {
			top = append(top, t)
		}
	}
	if len(top) == 0 {
		return
	}
	slices.SortStableFunc(top, func(a, b *test) int { return cmp.Compare(b.elapsed, a.elapsed) })
	top = top[:min(n, len(top))]
	fmt.Fprintf(s.out, "slowest tests (seconds; parallel ones overlap):\n")
	for _, t := range top {
		fmt.Fprintf(s.out, "  %7.1f %s %s\n", t.elapsed, t.pkg, t.name)
	}
}
