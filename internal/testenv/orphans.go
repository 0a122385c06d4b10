package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// killWithParent makes sure the etcd and kube-apiserver that envtest started for this process do
// not outlive it: a test binary killed by a signal, or ended by its -timeout panic, runs no
// deferred Stop, and its apiserver and etcd would go on using memory and CPU for ever. A small
// watchdog shell in a process group of its own waits for this process to go (its stdin is a pipe
// only this process holds) and then stops both process groups (envtest starts each in its own).
// The returned function, called before a normal Stop, ends the watchdog. Only numbers this
// process read from /proc reach the shell.
func killWithParent() (cancel func(), err error) {
	pgids, err := childGroups(os.Getpid(), "etcd", "kube-apiserver")
	if err != nil || len(pgids) == 0 {
		return func() {}, err
	}
	targets := make([]string, len(pgids))
	for i, pgid := range pgids {
		targets[i] = "-" + strconv.Itoa(pgid)
	}
	// dash's kill takes no "--": "-TERM -123" signals process group 123.
	script := fmt.Sprintf("read -r _; kill -TERM %s 2>/dev/null; sleep 5; kill -KILL %s 2>/dev/null; exit 0",
		strings.Join(targets, " "), strings.Join(targets, " "))
	r, w, err := os.Pipe()
	if err != nil {
		return func() {}, err
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a Ctrl-C of the test's group must not end it first
	if err := cmd.Start(); err != nil {
		_ = r.Close()
		_ = w.Close()
		return func() {}, fmt.Errorf("starting the envtest watchdog: %w", err)
	}
	_ = r.Close()
	go func() { _ = cmd.Wait() }()
	// w stays open for as long as this process lives; the kernel closes it when it dies.
	return func() {
		_ = cmd.Process.Kill()
		_ = w.Close()
	}, nil
}

// childGroups returns the process groups of parent's children whose command name is one of names.
func childGroups(parent int, names ...string) ([]int, error) {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return nil, err
	}
	var pgids []int
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // the process went
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split at the last ')'.
		open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
		if open < 0 || end < open {
			continue
		}
		comm, rest := string(data[open+1:end]), strings.Fields(string(data[end+1:]))
		if len(rest) < 3 {
			continue
		}
		ppid, err1 := strconv.Atoi(rest[1])
		pgrp, err2 := strconv.Atoi(rest[2])
		if err1 != nil || err2 != nil || ppid != parent {
			continue
		}
		for _, name := range names {
			if comm == name || (len(name) > 15 && comm == name[:15]) { // comm is cut at 15 bytes
				pgids = append(pgids, pgrp)
			}
		}
	}
	return pgids, nil
}
