package qemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpCommand runs one QMP command on a QEMU monitor socket, see qmpExecute.
func qmpCommand(socket, command string) error {
	_, err := qmpExecute(socket, command)
	return err
}

// qmpExecute runs one QMP command on a QEMU monitor socket: read the greeting, negotiate
// capabilities, execute, and return the reply's "return" value. Stargate needs only a few
// commands, so it speaks the protocol directly rather than importing
// github.com/digitalocean/go-qemu, whose qmp package pulls in a libvirt RPC client.
func qmpExecute(socket, command string) (json.RawMessage, error) {
	conn, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connecting to QMP %s: %w", socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := qmpRead(r); err != nil { // greeting
		return nil, fmt.Errorf("QMP greeting on %s: %w", socket, err)
	}
	var reply map[string]json.RawMessage
	for _, c := range []string{`{"execute":"qmp_capabilities"}`, command} {
		if _, err := conn.Write([]byte(c + "\n")); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", c, err)
		}
		if reply, err = qmpRead(r); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", c, err)
		}
	}
	return reply["return"], nil
}

// qmpRead returns the next reply, skipping asynchronous events.
func qmpRead(r *bufio.Reader) (map[string]json.RawMessage, error) {
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var msg map[string]json.RawMessage
		if err := json.Unmarshal(line, &msg); err != nil {
			return nil, fmt.Errorf("decoding %q: %w", line, err)
		}
		if _, ok := msg["event"]; ok {
			continue
		}
		if e, ok := msg["error"]; ok {
			return nil, fmt.Errorf("QEMU error: %s", e)
		}
		return msg, nil
	}
}
