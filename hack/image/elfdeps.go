package main

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// libDirs are where a Debian amd64 host keeps the shared libraries its programs load.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// imageLibDir is where the image keeps them: a directory Debian's dynamic loader searches by
// default, so the image needs no ld.so.cache.
const imageLibDir = "usr/lib/x86_64-linux-gnu"

// closure is a dynamically linked program and what it needs to run.
type closure struct {
	interp string            // the ELF interpreter (dynamic loader), as the program names it
	libs   map[string]string // soname → host file, DT_NEEDED followed transitively
}

// sharedClosure reads exe's ELF headers (it never runs it) and finds its interpreter and every
// library it needs, transitively, in dirs. A program that is not an x86-64 ELF, or that needs a
// library none of dirs holds, is an error: the image would carry a program that cannot start.
func sharedClosure(exe string, dirs []string) (closure, error) {
	c := closure{libs: map[string]string{}}
	f, err := openELF(exe)
	if err != nil {
		return c, err
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			f.Close()
			return c, fmt.Errorf("%s: reading its interpreter: %w", exe, err)
		}
		c.interp = strings.TrimRight(string(b), "\x00")
	}
	queue, err := f.ImportedLibraries()
	f.Close()
	if err != nil {
		return c, fmt.Errorf("%s: reading its libraries: %w", exe, err)
	}
	if c.interp == "" {
		return c, fmt.Errorf("%s is not dynamically linked (no ELF interpreter)", exe)
	}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if _, done := c.libs[name]; done {
			continue
		}
		host, err := findLib(name, dirs)
		if err != nil {
			return c, fmt.Errorf("%s needs %s: %w", exe, name, err)
		}
		c.libs[name] = host
		lf, err := openELF(host)
		if err != nil {
			return c, err
		}
		more, err := lf.ImportedLibraries()
		lf.Close()
		if err != nil {
			return c, fmt.Errorf("%s: reading its libraries: %w", host, err)
		}
		queue = append(queue, more...)
	}
	return c, nil
}

func openELF(path string) (*elf.File, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s as ELF: %w", path, err)
	}
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		f.Close()
		return nil, fmt.Errorf("%s is %s %s, the image is linux/amd64", path, f.Class, f.Machine)
	}
	return f, nil
}

func findLib(name string, dirs []string) (string, error) {
	if strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("library names a path (%q): not supported", name)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(dirs, ", "))
}

// entries are the image files of the program installed as /usr/bin/<name>: the program, its
// libraries in imageLibDir (each under its soname, the content of the file the soname resolves
// to), and the interpreter at the path the program names, a symlink when it is a library too.
func (c closure) entries(exe string) []entry {
	out := []entry{{path: "usr/bin/" + filepath.Base(exe), mode: 0o755, src: exe}}
	names := make([]string, 0, len(c.libs))
	for n := range c.libs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out = append(out, entry{path: imageLibDir + "/" + n, mode: 0o755, src: c.libs[n]})
	}
	interp := strings.TrimPrefix(filepath.Clean(c.interp), "/")
	if _, isLib := c.libs[filepath.Base(interp)]; isLib && interp != imageLibDir+"/"+filepath.Base(interp) {
		out = append(out, entry{path: interp, link: "/" + imageLibDir + "/" + filepath.Base(interp)})
	} else if !isLib {
		out = append(out, entry{path: interp, mode: 0o755, src: c.interp})
	}
	return out
}
