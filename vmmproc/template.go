package vmmproc

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/containerd/log"

	"github.com/msb-dev/msb/qmp"
	"github.com/msb-dev/msb/template"
	"github.com/msb-dev/msb/vmm"
)

// VM templates (ADR 025): a template VM boots to a ready agent with its
// RAM in a memfd (share=on), is saved with x-ignore-shared (the state
// holds no RAM), and handed to a holder (package template) with both
// files sealed. A VM started from it maps that RAM copy-on-write
// (share=off, through /proc/self/fd: qemu 7.2 opens a memory file by
// path, read-write) and loads the state with -incoming; qemu runs it from
// there. Its guest then gets its boot env, clock and a new RNG seed as a
// booted one does (vm.boot).

// agentPortID is the agent port's qdev id: qemu names it in the
// VSERPORT_CHANGE events the template's save waits for.
const agentPortID = "agentport"

// templateFiles are a template VM's RAM and, for a VM started from one,
// the saved state.
type templateFiles struct {
	ram, state *os.File
}

// templateFDs are their fd numbers in qemu (0: none).
type templateFDs struct{ ram, state int }

// fds lists qemu's extra files: the taps, then the template's files.
func (t templateFiles) fds(taps []*os.File) ([]*os.File, templateFDs) {
	fds := append([]*os.File{}, taps...)
	var tf templateFDs
	if t.ram != nil {
		fds = append(fds, t.ram)
		tf.ram = 2 + len(fds)
	}
	if t.state != nil {
		fds = append(fds, t.state)
		tf.state = 2 + len(fds)
	}
	return fds, tf
}

// templateArgs are qemu's arguments for a template's RAM and state.
func templateArgs(c *vmm.LaunchConfig, tf templateFDs) []string {
	if tf.ram == 0 {
		return nil
	}
	share := "on" // the template writes its RAM into the file
	if tf.state != 0 {
		share = "off" // a VM started from it: copy-on-write
	}
	args := []string{
		"-object", fmt.Sprintf("memory-backend-file,id=ram,mem-path=/proc/self/fd/%d,size=%dM,share=%s", tf.ram, c.MemoryCeiling(), share),
	}
	if tf.state != 0 {
		// The state is loaded over QMP (restore), once x-ignore-shared is
		// set: qemu 7.2 has no command-line switch for it.
		args = append(args, "-incoming", "defer")
	}
	return args
}

// agentReconnect has a restored VM's qemu reconnect the agent channel a
// second after the VMM closed it (saveTemplate says when).
func agentReconnect(tf templateFDs) string {
	if tf.state == 0 {
		return ""
	}
	return ",reconnect=1"
}

// ignoreShared makes a save write, and a load expect, no page of the
// shared RAM block.
func ignoreShared(ctx context.Context, mon *qmp.Client) error {
	return mon.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
}

// restore loads a template's state into the qemu just started (-incoming
// defer) and runs the guest.
func (v *vm) restore(stateFD int) error {
	ctx, cancel := context.WithTimeout(context.Background(), templateSaveTimeout)
	defer cancel()
	mon, err := v.hv.mon.client(ctx)
	if err == nil {
		err = ignoreShared(ctx, mon)
	}
	if err == nil {
		err = mon.Execute(ctx, "migrate-incoming", map[string]string{"uri": "fd:" + strconv.Itoa(stateFD)}, nil)
	}
	if err == nil {
		err = waitMigration(ctx, mon)
	}
	if err == nil {
		// The template was saved stopped, and so it loads.
		err = mon.Execute(ctx, "cont", nil, nil)
	}
	if err != nil {
		return fmt.Errorf("start from the template: %w", err)
	}
	return nil
}

// waitMigration polls until the save or load in progress completes.
func waitMigration(ctx context.Context, mon *qmp.Client) error {
	for {
		var st struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		if err := mon.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.Error)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration %s: %w", st.Status, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// openTemplate gets what a template VM or a VM started from one needs
// before qemu starts: a new RAM file, or the holder's RAM and state.
func openTemplate(cfg *vmm.LaunchConfig) (templateFiles, error) {
	switch {
	case cfg.TemplateSave != "":
		ram, err := template.NewFile("msb-template-ram", int64(cfg.MemoryCeiling())<<20)
		return templateFiles{ram: ram}, err
	case cfg.Template != "":
		ram, state, err := template.Fetch(cfg.Template)
		return templateFiles{ram: ram, state: state}, err
	}
	return templateFiles{}, nil
}

func (t templateFiles) close() {
	for _, f := range []*os.File{t.ram, t.state} {
		if f != nil {
			f.Close()
		}
	}
}

// templateSettle is how long the save waits for a detached agent to end
// its session.
const templateSettle = 500 * time.Millisecond

// templateSaveTimeout bounds the save once the guest was detached.
const templateSaveTimeout = time.Minute

// saveTemplate is a template VM's life after qemu started: wait for the
// agent, detach it, save the VM, end qemu, seal the files and start
// their holder in cfg.TemplateSave. The VMM then ends.
func (v *vm) saveTemplate(chanLn *net.UnixListener, ram *os.File) error {
	cfg := v.cfg
	bootTimeout := cfg.BootTimeout.Or(defaultBootTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout+templateSaveTimeout)
	defer cancel()
	_ = chanLn.SetDeadline(time.Now().Add(bootTimeout))
	conn, err := chanLn.Accept()
	if err != nil {
		return fmt.Errorf("template: guest channel: %w", err)
	}
	if err := v.openAgent(conn); err != nil {
		return fmt.Errorf("template: %w", err)
	}
	mon, err := v.hv.mon.client(ctx)
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if cfg.MemoryCeiling() > cfg.MemoryMiB {
		// The headroom the balloon holds (balloonAtStart) stays out of
		// the template: the guest has not touched it, and it is not the
		// guest's to use after a start from it until a resize.
		v.waitBalloon(ctx, mon, cfg.MemoryMiB, cfg.MemoryCeiling())
	}
	bootCtx, bootCancel := context.WithTimeout(ctx, bootTimeout)
	err = v.agent.Detach(bootCtx)
	bootCancel()
	if err != nil {
		return fmt.Errorf("template: detach the agent: %w (guest console: %s)", err, cfg.ConsoleLog)
	}
	// The agent ends its session detachFlush after its answer. Closing
	// the channel here too makes the guest read EOF: it ends the session
	// either way, and keeps reopening its port until a host connects. Let
	// it do so before the save; should a session still be caught in it,
	// the restored VM's first host session fails and qemu reconnects
	// (reconnect=1 on a restored VM's channel, qemuArgs) to a fresh one.
	v.sess.Close()
	time.Sleep(templateSettle)
	start := time.Now()
	state, err := save(ctx, mon)
	if err != nil {
		return err
	}
	defer state.Close()
	v.hv.Kill()
	<-v.hv.Done()
	for _, f := range []*os.File{ram, state} {
		if err := template.Seal(f); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if err := template.Start(self, cfg.TemplateSave, ram, state); err != nil {
		return err
	}
	st, _ := state.Stat()
	log.L.Infof("template saved in %s (state %d bytes) and held in %s", time.Since(start).Round(time.Millisecond), st.Size(), cfg.TemplateSave)
	return nil
}

// save stops the VM and migrates its state (no RAM: x-ignore-shared)
// into a new file.
func save(ctx context.Context, mon *qmp.Client) (*os.File, error) {
	state, err := template.NewFile("msb-template-state", 0)
	if err != nil {
		return nil, err
	}
	err = mon.Execute(ctx, "stop", nil, nil)
	if err == nil {
		err = ignoreShared(ctx, mon)
	}
	if err == nil {
		err = mon.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "state"}, nil, state)
	}
	if err == nil {
		err = mon.Execute(ctx, "migrate", map[string]string{"uri": "fd:state"}, nil)
	}
	if err == nil {
		if err = waitMigration(ctx, mon); err == nil {
			return state, nil
		}
	}
	state.Close()
	return nil, fmt.Errorf("template: save: %w", err)
}

// reseed gives a guest restored from a template its own RNG state.
func (v *vm) reseed(ctx context.Context) error {
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	if err := v.agent.Reseed(ctx, seed); err != nil {
		return fmt.Errorf("reseed the guest's RNG: %w", err)
	}
	return nil
}
