package vmmproc

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/yamux"

	"github.com/msb-dev/msb/protocol"
	"github.com/msb-dev/msb/vmm"
)

// muxPair is a host's yamux session and the guest's end of it.
func muxPair(t *testing.T) (host, guest *yamux.Session) {
	hostEnd, guestEnd := net.Pipe()
	host, err := yamux.Client(hostEnd, protocol.MuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	if guest, err = yamux.Server(guestEnd, protocol.MuxConfig()); err != nil {
		t.Fatal(err)
	}
	return host, guest
}

// TestRelayHalfClose runs the relay against a guest-side yamux server that
// reads each stream's header and echoes the payload after the client's EOF,
// the way stdin→stdout flows through a container.
func TestRelayHalfClose(t *testing.T) {
	sess, guest := muxPair(t)
	go func() {
		for {
			s, err := guest.Accept()
			if err != nil {
				return
			}
			go func() {
				defer s.Close()
				kind, arg, err := protocol.ReadHeader(s)
				if err != nil {
					return
				}
				b, _ := io.ReadAll(s) // until the client's half-close
				_, _ = io.WriteString(s, kind+" "+arg+"\n")
				_, _ = s.Write(b)
			}()
		}
	}()
	sock := filepath.Join(t.TempDir(), "agent", "x.sock")
	l, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { relay(l, sess, nil); close(done) }()

	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 3<<20)
			_, _ = rand.Read(payload)
			c, err := vmm.DialAgent(t.Context(), sock, protocol.KindStdio, "tok")
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			go func() {
				_, _ = c.Write(payload)
				_ = c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Error(err)
				return
			}
			want := append([]byte("stdio tok\n"), payload...)
			if !bytes.Equal(got, want) {
				t.Errorf("echo mismatch: got %d bytes, want %d", len(got), len(want))
			}
		}()
	}
	wg.Wait()
	if _, err := listenUnix(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	l.Close()
	<-done
	sess.Close()
}

func TestQEMUArgs(t *testing.T) {
	c := &vmm.LaunchConfig{
		Version: vmm.ConfigVersion, Name: "n", MemoryMiB: 300, VCPUs: 2, Kernel: "/k/vmlinux", Initrd: "/k/initrd",
		ConsoleLog: "/s/console.log",
		Shares:     []vmm.Share{{Tag: "root-1", Path: "/b/a,b", ReadOnly: true}, {Tag: "p", Path: "/p", MultiDevs: true}},
		Disks:      []vmm.Disk{{Tag: "d1", Path: "/i.qcow2", Format: "qcow2"}},
		Modules:    "/k/modules",
	}
	tcg := strings.Join(qemuArgs(c, "/s/ch.sock", false, 2500000, templateFDs{}), " ")
	for _, want := range []string{
		"-machine microvm", "-m 300 -smp 2", "-accel tcg,tb-size=64 -cpu max", "tsc_early_khz=2500000",
		"path=/b/a,,b,security_model=none,readonly=on", "mount_tag=root-1",
		`-blockdev {"backing":null,"cache":{"direct":true},"driver":"qcow2","file":{"aio":"threads","cache":{"direct":true},"driver":"file","filename":"/i.qcow2"},"node-name":"disk0"} -device virtio-blk-device,drive=disk0,serial=d1`, "name=" + protocol.PortName, "-no-reboot",
		"-fsdev local,id=fsmod,path=/k/modules,security_model=none,readonly=on -device virtio-9p-device,fsdev=fsmod,mount_tag=" + protocol.ModulesShareTag,
		"-device virtio-balloon-device,free-page-reporting=on",
	} {
		if !strings.Contains(tcg, want) {
			t.Errorf("missing %q in %s", want, tcg)
		}
	}
	if n := strings.Count(tcg, "multidevs=remap"); n != 1 || !strings.Contains(tcg, "path=/p,security_model=none,multidevs=remap") {
		t.Errorf("want multidevs=remap on the MultiDevs share only: %s", tcg)
	}
	kvm := strings.Join(qemuArgs(c, "/s/ch.sock", true, 2500000, templateFDs{}), " ")
	if !strings.Contains(kvm, "-accel kvm -cpu host") || strings.Contains(kvm, "tsc_early_khz") {
		t.Errorf("kvm args: %s", kvm)
	}
}

// A root disk replaces the initramfs and is the guest's first virtio device,
// so the guest names it /dev/vda.
func TestQEMUArgsRootDisk(t *testing.T) {
	c := &vmm.LaunchConfig{
		Version: vmm.ConfigVersion, Name: "n", MemoryMiB: 256, VCPUs: 1, Kernel: "/k/vmlinux", RootDisk: "/k/rootfs.img",
		ConsoleLog: "/s/console.log",
		Disks:      []vmm.Disk{{Tag: "d1", Path: "/i.raw", Format: "raw"}},
	}
	args := qemuArgs(c, "/s/ch.sock", false, 0, templateFDs{})
	all := strings.Join(args, " ")
	root := `-blockdev {"driver":"raw","file":{"aio":"threads","driver":"file","filename":"/k/rootfs.img","read-only":true},"node-name":"root","read-only":true} -device virtio-blk-device,drive=root,serial=msb-root`
	first := strings.Index(all, "-device ")
	if !strings.Contains(all, root) || first != strings.Index(all, "-device virtio-blk-device,drive=root") {
		t.Errorf("want the root disk as the first device: %s", all)
	}
	if strings.Contains(all, "-initrd") || !strings.Contains(all, "root=/dev/vda ro rootfstype=ext4 init=/init") {
		t.Errorf("root disk boot args: %s", all)
	}
}

// A vmm.KindMemory connection is the VMM's own: the relay answers it with
// the local handler and opens no guest stream for it.
func TestRelayLocalKind(t *testing.T) {
	sess, guest := muxPair(t)
	opened := make(chan struct{}, 1)
	go func() {
		if s, err := guest.Accept(); err == nil {
			opened <- struct{}{}
			s.Close()
		}
	}()
	sock := filepath.Join(t.TempDir(), "agent", "x.sock")
	l, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	var got vmm.MemoryRequest
	local := map[string]func(net.Conn){vmm.KindMemory: func(c net.Conn) {
		_ = vmm.ServeMemory(c, func(r vmm.MemoryRequest) (vmm.MemoryState, error) {
			got = r
			return vmm.MemoryState{TargetMiB: r.TargetMiB, ActualMiB: r.TargetMiB, MaxMiB: 512}, nil
		})
	}}
	done := make(chan struct{})
	go func() { relay(l, sess, local); close(done) }()
	st, err := vmm.SetMemory(t.Context(), sock, 384)
	if err != nil || st.TargetMiB != 384 || st.MaxMiB != 512 || got.TargetMiB != 384 {
		t.Fatalf("state %+v, request %+v, err %v", st, got, err)
	}
	select {
	case <-opened:
		t.Fatal("the memory request reached the guest")
	default:
	}
	l.Close()
	<-done
	sess.Close()
}

// With headroom qemu boots with the ceiling; the balloon holds the rest.
func TestQEMUArgsHeadroom(t *testing.T) {
	c := &vmm.LaunchConfig{Version: vmm.ConfigVersion, Name: "n", MemoryMiB: 256, MaxMemoryMiB: 512, VCPUs: 1, Kernel: "/k/vmlinux", ConsoleLog: "/s/console.log"}
	if all := strings.Join(qemuArgs(c, "/s/ch.sock", true, 0, templateFDs{}), " "); !strings.Contains(all, "-m 512 -smp 1") || !strings.Contains(all, "virtio-balloon-device,free-page-reporting=on") {
		t.Errorf("headroom args: %s", all)
	}
}

// A template and the VMs started from it have the headroom (their RAM
// file is of the ceiling) and report free pages when jailed (the filter
// fakes the hole punch the sealed RAM refuses); unjailed, neither does,
// so that their device features still match.
func TestQEMUArgsTemplate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tf     templateFDs
		noJail bool
		fpr    string
	}{
		{"template", templateFDs{ram: 3}, false, "on"},
		{"clone", templateFDs{ram: 3, state: 4}, false, "on"},
		{"template, unjailed", templateFDs{ram: 3}, true, "off"},
		{"clone, unjailed", templateFDs{ram: 3, state: 4}, true, "off"},
		{"booted, unjailed", templateFDs{}, true, "on"},
	} {
		c := &vmm.LaunchConfig{Version: vmm.ConfigVersion, Name: "n", MemoryMiB: 256, MaxMemoryMiB: 512, VCPUs: 1, Kernel: "/k/vmlinux", ConsoleLog: "/s/console.log", NoJail: tc.noJail}
		all := strings.Join(qemuArgs(c, "/s/ch.sock", false, 0, tc.tf), " ")
		if !strings.Contains(all, "virtio-balloon-device,free-page-reporting="+tc.fpr) {
			t.Errorf("%s: want free-page-reporting=%s: %s", tc.name, tc.fpr, all)
		}
		if tc.tf.ram != 0 && (!strings.Contains(all, "-m 512 ") || !strings.Contains(all, "mem-path=/proc/self/fd/3,size=512M")) {
			t.Errorf("%s: want RAM of the 512 MiB ceiling: %s", tc.name, all)
		}
	}
}
