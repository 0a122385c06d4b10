package installer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// ModuleIndex is what depmod wrote for the kernel the agent runs on: which module serves which
// modalias (modules.alias) and which modules each one needs first (modules.dep). The initramfs
// carries a depmod run over just the modules it ships, so every module named here is present.
type ModuleIndex struct {
	aliases []moduleAlias
	// deps maps a module name to its file (relative to the modules directory) and the files of
	// the modules it depends on.
	files map[string]string
	deps  map[string][]string
}

type moduleAlias struct {
	pattern string // a shell glob, as modules.alias writes them
	module  string // normalized module name
}

// moduleName normalizes a module name or file name: the kernel treats - and _ alike.
func moduleName(fileOrName string) string {
	base := path.Base(fileOrName)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		base = strings.TrimSuffix(base, ext)
	}
	base = strings.TrimSuffix(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// ParseModuleIndex reads modules.alias and modules.dep in depmod's text formats:
//
//	alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
//	kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko kernel/drivers/pps/pps_core.ko
func ParseModuleIndex(aliasFile, depFile io.Reader) (*ModuleIndex, error) {
	idx := &ModuleIndex{files: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(depFile)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		file, deps, ok := strings.Cut(text, ":")
		if !ok || file == "" {
			return nil, fmt.Errorf("modules.dep line %d: no \"file:\" at its start", line)
		}
		name := moduleName(file)
		idx.files[name] = file
		idx.deps[name] = strings.Fields(deps)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	sc = bufio.NewScanner(aliasFile)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if len(fields) != 3 || fields[0] != "alias" {
			return nil, fmt.Errorf("modules.alias line %d: want \"alias PATTERN MODULE\"", line)
		}
		if _, err := path.Match(fields[1], ""); err != nil {
			return nil, fmt.Errorf("modules.alias line %d: pattern %q: %w", line, fields[1], err)
		}
		idx.aliases = append(idx.aliases, moduleAlias{pattern: fields[1], module: moduleName(fields[2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.alias: %w", err)
	}
	return idx, nil
}

// Match returns the modules whose aliases match a device's modalias and that the index can load,
// sorted and without duplicates. Patterns use the glob syntax of modprobe (fnmatch without flags);
// modaliases never contain '/', so path.Match behaves the same.
func (idx *ModuleIndex) Match(modalias string) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range idx.aliases {
		if seen[a.module] {
			continue
		}
		if _, known := idx.files[a.module]; !known {
			continue // built into the kernel, or not shipped in the initramfs
		}
		if ok, _ := path.Match(a.pattern, modalias); ok {
			seen[a.module] = true
			out = append(out, a.module)
		}
	}
	sort.Strings(out)
	return out
}

// LoadOrder returns the files to load, dependencies first, so that module can be loaded.
func (idx *ModuleIndex) LoadOrder(module string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1: being visited, 2: done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		file, ok := idx.files[name]
		if !ok {
			return fmt.Errorf("module %s is not in modules.dep (needed by %s)", name, strings.Join(chain, " -> "))
		}
		state[name] = 1
		for _, dep := range idx.deps[name] {
			if err := visit(moduleName(dep), append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, file)
		return nil
	}
	if err := visit(moduleName(module), nil); err != nil {
		return nil, err
	}
	return order, nil
}

// ModuleLoader loads kernel modules for the devices in sysfs, as udev and modprobe would.
type ModuleLoader struct {
	Index *ModuleIndex
	// Dir is the modules directory, /lib/modules/$(uname -r).
	Dir string
	// Log receives one line per module loaded or failed.
	Log    func(format string, args ...any)
	loaded map[string]bool
}

// LoadModuleIndex reads modules.alias and modules.dep from dir.
func LoadModuleIndex(dir string) (*ModuleIndex, error) {
	alias, err := os.Open(filepath.Join(dir, "modules.alias"))
	if err != nil {
		return nil, err
	}
	defer alias.Close()
	dep, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer dep.Close()
	return ParseModuleIndex(alias, dep)
}

// DeviceModaliases returns the modalias of every device under sysDevices (/sys/devices), sorted.
func DeviceModaliases(sysDevices string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(sysDevices, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// Devices come and go while drivers load; an unreadable directory is not fatal.
			if d != nil && d.IsDir() && p != sysDevices {
				return fs.SkipDir
			}
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil // sysfs links lead back into the tree: WalkDir does not follow them anyway
		}
		if d.Name() != "modalias" || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil //nolint:nilerr // a device removed meanwhile
		}
		if alias := strings.TrimSpace(string(b)); alias != "" {
			out = append(out, alias)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

// LoadForDevices loads the modules matching the modaliases of the devices under sysDevices and
// returns how many it loaded. Loading a bus driver creates new devices (virtio_pci creates the
// virtio devices virtio_blk drives; ahci creates SCSI devices for sd_mod): call it until it
// returns 0. A module that fails to load is logged and skipped: one broken driver must not stop
// the install when the disk and NIC need others.
func (l *ModuleLoader) LoadForDevices(sysDevices string) (int, error) {
	if l.loaded == nil {
		l.loaded = map[string]bool{}
	}
	aliases, err := DeviceModaliases(sysDevices)
	if err != nil {
		return 0, fmt.Errorf("reading device modaliases: %w", err)
	}
	n := 0
	for _, alias := range aliases {
		for _, module := range l.Index.Match(alias) {
			if l.loaded[module] {
				continue
			}
			l.loaded[module] = true
			files, err := l.Index.LoadOrder(module)
			if err != nil {
				l.Log("module %s (for %s): %v", module, alias, err)
				continue
			}
			for _, file := range files {
				name := moduleName(file)
				if l.loaded[name] && name != module {
					continue
				}
				l.loaded[name] = true
				if err := insertModule(filepath.Join(l.Dir, file)); err != nil {
					l.Log("module %s (for %s): %v", name, alias, err)
					continue
				}
				n++
			}
		}
	}
	return n, nil
}

// insertModule loads one module file; a module already loaded (or built in) is no error.
func insertModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", file, err)
	}
	return nil
}
