package scripts_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stargate.io/stargate/internal/testenv"
)

// .ci/run runs exactly the commands the README shows in its block marked <!-- .ci/run -->.
func TestCIRunsTheREADMECommands(t *testing.T) {
	root := testenv.RepoRoot()
	readme := readFile(t, filepath.Join(root, "README.md"))
	_, after, ok := strings.Cut(readme, "<!-- .ci/run -->\n```bash\n")
	if !ok {
		t.Fatal("README.md has no ```bash block after a <!-- .ci/run --> line")
	}
	block, _, ok := strings.Cut(after, "```")
	if !ok {
		t.Fatal("README.md: the .ci/run block does not end")
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	_, commands, ok := strings.Cut(string(ci), "# --- the README's commands\n")
	if !ok {
		t.Fatal(".ci/run has no '# --- the README's commands' line")
	}
	if got, want := lines(commands), lines(block); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf(".ci/run runs\n\t%s\nbut the README shows\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// lines returns the non-empty lines of s, trimmed.
func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
