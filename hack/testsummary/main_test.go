package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// testdata/sample.json is recorded from `go test -json -timeout 2s ./...` over a small module with
// a passing, a failing, a build-failing, a hanging and a test-less package, skips and subtests.
func TestSummarizeRecordedStream(t *testing.T) {
	for _, tc := range []struct {
		golden  string
		verbose bool
	}{{"sample.golden", false}, {"sample-verbose.golden", true}} {
		in, err := os.Open(filepath.Join("testdata", "sample.json"))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		failed, err := summarize(in, &out, tc.verbose)
		_ = in.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !failed {
			t.Errorf("%s: failed = false, want true (the stream has failures)", tc.golden)
		}
		golden := filepath.Join("testdata", tc.golden)
		if *update {
			if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if out.String() != string(want) {
			t.Errorf("%s: output differs (go test ./hack/testsummary -update rewrites it); got:\n%s", tc.golden, out.String())
		}
	}
}

// The parts of the output that matter, spelled out (the golden files hold the rest).
func TestSummarizeReportsCountsAndSkipReasons(t *testing.T) {
	in, err := os.ReadFile(filepath.Join("testdata", "sample.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := summarize(bytes.NewReader(in), &out, false); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"=== test summary: 12 tests ran (subtests included): 6 passed, 4 failed, 2 skipped\n",
		"    packages: 1 ok, 3 failed, 1 without tests; build failed: example.com/sample/nobuild",
		"  example.com/sample/good TestSkip: good_test.go:7: needs root; to get it: run the tests as root\n",
		"  example.com/sample/good TestTable/two: good_test.go:13: case two skipped in -short mode\n",
		"  example.com/sample/crash TestHangs\n",                         // never finished: the package timed out
		"    bad_test.go:7: got 1, want 2\n--- FAIL: TestFail (0.00s)\n", // a failed test's output
		"nobuild/nobuild_test.go:5:28: undefined: undefined\n",           // build errors
		"ok  \texample.com/sample/good\t",
		"?   \texample.com/sample/notests\t[no test files]\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	// Like go test without -v: no output of passing tests, no framing lines.
	for _, unwanted := range []string{"a log line of a passing test", "=== RUN", "--- PASS"} {
		if strings.Contains(got, unwanted) {
			t.Errorf("output has %q:\n%s", unwanted, got)
		}
	}
	// A hung test's output comes before its package's FAIL line.
	if strings.Index(got, "panic: test timed out") > strings.Index(got, "FAIL\texample.com/sample/crash") {
		t.Errorf("the hung test's output follows its package's FAIL line:\n%s", got)
	}
}

func TestSummarizePassingStreamAndOtherLines(t *testing.T) {
	in := `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"--- PASS: TestA (0.00s)\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
not json: passed through
{"Action":"output","Package":"p","Output":"PASS\n"}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.01s\n"}
{"Action":"pass","Package":"p"}
`
	var out bytes.Buffer
	failed, err := summarize(strings.NewReader(in), &out, false)
	if err != nil || failed {
		t.Fatalf("failed %v, err %v, want a pass", failed, err)
	}
	want := "not json: passed through\nok  \tp\t0.01s\n\n" +
		"=== test summary: 1 tests ran (subtests included): 1 passed, 0 failed, 0 skipped\n" +
		"    packages: 1 ok, 0 failed, 0 without tests\n"
	if out.String() != want {
		t.Errorf("got:\n%q\nwant:\n%q", out.String(), want)
	}
}

// The slowest top-level tests are named, slowest first; subtests and skips are not.
func TestSummaryNamesTheSlowestTests(t *testing.T) {
	var in strings.Builder
	for _, e := range []string{
		`{"Action":"run","Package":"p","Test":"TestFast"}`, `{"Action":"pass","Package":"p","Test":"TestFast","Elapsed":0.5}`,
		`{"Action":"run","Package":"p","Test":"TestVM"}`, `{"Action":"run","Package":"p","Test":"TestVM/boot"}`,
		`{"Action":"pass","Package":"p","Test":"TestVM/boot","Elapsed":90}`, `{"Action":"pass","Package":"p","Test":"TestVM","Elapsed":95.25}`,
		`{"Action":"run","Package":"q","Test":"TestSkip"}`, `{"Action":"skip","Package":"q","Test":"TestSkip","Elapsed":300}`,
		`{"Action":"run","Package":"q","Test":"TestMid"}`, `{"Action":"pass","Package":"q","Test":"TestMid","Elapsed":12}`,
	} {
		in.WriteString(e + "\n")
	}
	var out bytes.Buffer
	if _, err := summarize(strings.NewReader(in.String()), &out, false); err != nil {
		t.Fatal(err)
	}
	want := "slowest tests (seconds; parallel ones overlap):\n     95.2 p TestVM\n     12.0 q TestMid\n      0.5 p TestFast\n"
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("summary ends\n%s\nwant it to end\n%s", out.String(), want)
	}
}
