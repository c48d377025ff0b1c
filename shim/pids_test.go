package shim

import (
	"testing"

	task "github.com/containerd/containerd/api/runtime/task/v3"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/typeurl/v2"
)

// Every listed pid is the VMM's, so docker top cannot show an unrelated
// host process; the guest pid and exec id survive in Info, decodable by
// any containerd client (ctr task ps).
func TestHostPids(t *testing.T) {
	exec, err := typeurl.MarshalAnyToProto(&runcopts.ProcessDetails{ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	guest := &task.PidsResponse{Processes: []*tasktypes.ProcessInfo{{Pid: 1}, {Pid: 7, Info: exec}}}
	got, err := hostPids(guest, 4242)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Processes) != 2 {
		t.Fatalf("%d processes, want 2", len(got.Processes))
	}
	for i, p := range got.Processes {
		if p.Pid != 4242 {
			t.Errorf("process %d: pid %d, want the VMM's 4242", i, p.Pid)
		}
		v, err := typeurl.UnmarshalAny(p.Info)
		if err != nil {
			t.Fatalf("process %d: info %s does not decode: %v", i, p.Info.GetTypeUrl(), err)
		}
		gp, ok := v.(*tasktypes.ProcessInfo)
		if !ok || gp.Pid != guest.Processes[i].Pid {
			t.Fatalf("process %d: info %v, want guest pid %d", i, v, guest.Processes[i].Pid)
		}
		if i == 1 {
			d, err := typeurl.UnmarshalAny(gp.Info)
			if err != nil || d.(*runcopts.ProcessDetails).ExecID != "e1" {
				t.Errorf("exec details %v, %v", d, err)
			}
		}
	}
}
