#!/usr/bin/env python3
"""probe.py [DIR] [BOOT_SECONDS] [CLONES] (as root) — can this host's qemu start a VM
from a saved template whose RAM is mapped copy-on-write from a file, and what does a
clone cost? ADR 025 quotes its output. No msb code: it boots the installed kernel and
root disk (/var/lib/msb) with its RAM in /dev/shm (memory-backend-file, share=on) for
BOOT_SECONDS (to the agent's start; no host side answers it), saves the state with the
migration capability x-ignore-shared (RAM not written), then starts CLONES qemus with
the same file mapped share=off and -incoming, resumes them, samples their RIP, injects
an NMI into the first (its console must show the guest kernel's NMI message), and prints
each clone's PSS: RAM (the file mapping), TCG cache, the rest. It removes the RAM file
and stops every qemu it started before it exits."""
import json, os, socket, subprocess, sys, time

D = sys.argv[1] if len(sys.argv) > 1 else "/tmp/msb-templateprobe"
K, R = "/var/lib/msb/vmlinux", "/var/lib/msb/rootfs.img"
MEM = 256
RAM = "/dev/shm/msb-tmplprobe.ram"
os.makedirs(D, exist_ok=True)
PROCS = []

def tsc_khz():
    """The host's clock rate for tsc_early_khz, as msb's VMM passes it (TCG's
    calibration hangs without it)."""
    for l in open("/proc/cpuinfo"):
        k, _, v = l.partition(":")
        if k.strip() == "cpu MHz":
            return int(float(v) * 1000)
    return 0

def qemu(name, share, incoming=None):
    args = ["qemu-system-x86_64", "-machine", "microvm,memory-backend=mem", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-m", str(MEM), "-smp", "1", "-kernel", K,
            "-object", f"memory-backend-file,id=mem,size={MEM}M,mem-path={RAM},share={share}",
            "-accel", "tcg,tb-size=64", "-cpu", "max",
            "-blockdev", json.dumps({"driver": "raw", "file": {"driver": "file", "filename": R, "read-only": True}, "node-name": "root", "read-only": True}),
            "-device", "virtio-blk-device,drive=root",
            "-append", f"console=ttyS0 panic=-1 reboot=t tsc_early_khz={tsc_khz()} root=/dev/vda ro rootfstype=ext4 init=/init",
            "-serial", f"file:{D}/{name}.console",
            "-chardev", f"socket,id=agent,path={D}/{name}.agent,server=on,wait=off",
            "-device", "virtio-serial-device", "-device", "virtserialport,chardev=agent,name=msb.agent",
            "-qmp", f"unix:{D}/{name}.qmp,server=on,wait=off"]
    if incoming:
        args += ["-incoming", "defer"]
    p = subprocess.Popen(args, stdout=open(f"{D}/{name}.log", "w"), stderr=subprocess.STDOUT)
    PROCS.append(p)
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(f"{D}/{name}.qmp"); break
        except OSError:
            time.sleep(0.05)
    f = s.makefile("rw")
    f.readline()
    def cmd(c, **a):
        f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
        while True:
            r = json.loads(f.readline())
            if "return" in r or "error" in r:
                return r
    cmd("qmp_capabilities")
    return p, cmd

def pss(pid):
    out = {}
    part = "other"
    for l in open(f"/proc/{pid}/smaps"):
        fl = l.split()
        if not fl[0].endswith(":"):
            part = "ram" if len(fl) > 5 and fl[5] == RAM else ("tcg" if "x" in fl[1] and len(fl) == 5 else "other")
        elif fl[0] == "Pss:":
            out[part] = out.get(part, 0) + int(fl[1]) // 1024
        elif fl[0] == "Rss:":
            out[part + "_rss"] = out.get(part + "_rss", 0) + int(fl[1]) // 1024
    return out

def main():
    t0 = time.time()
    p, cmd = qemu("tmpl", "on")
    boot = float(sys.argv[2]) if len(sys.argv) > 2 else 8
    time.sleep(boot)
    print("template booted", boot, "s; pss", pss(p.pid))
    cmd("stop")
    print(cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}]))
    t1 = time.time()
    print(cmd("migrate", uri=f"exec:cat > {D}/state"))
    while True:
        r = cmd("query-migrate")["return"]
        if r.get("status") in ("completed", "failed"):
            break
        time.sleep(0.05)
    print("save:", r.get("status"), r.get("error-desc", ""), "%.2f s" % (time.time() - t1), "state file", os.path.getsize(f"{D}/state") // 1024, "KiB")
    cmd("quit"); p.wait()

    # 2. N clones from it, RAM mapped private (copy on write) from the same file
    clones = []
    for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
        t = time.time()
        p, cmd = qemu(f"clone{i}", "off", incoming=True)
        print(cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}]).get("error", "caps ok"))
        print(cmd("migrate-incoming", uri=f"exec:cat {D}/state").get("error", "incoming ok"))
        while True:
            st = cmd("query-status")["return"]["status"]
            if st != "inmigrate":
                break
            time.sleep(0.01)
        r = cmd("cont")
        print(f"clone{i}: restored to {st} in %.3f s (qemu start included); cont {r}" % (time.time() - t))
        clones.append((p, cmd))
    def rip(cmd):
        r = cmd("human-monitor-command", **{"command-line": "info registers"})["return"]
        return r.split("RIP=")[1].split()[0] if "RIP=" in r else r[:80]
    for i, (p, cmd) in enumerate(clones):
        print(f"clone{i} RIP", [rip(cmd) for _ in range(3)])
    print("clone0 inject-nmi", clones[0][1]("inject-nmi"))
    time.sleep(5)
    print("clone0 console after the NMI:", open(f"{D}/clone0.console").read().strip()[-300:])
    for i, (p, cmd) in enumerate(clones):
        print(f"clone{i} after 5 s running: status", cmd("query-status")["return"]["status"], "pss MiB", pss(p.pid))
    for p, cmd in clones:
        cmd("quit"); p.wait()


try:
    main()
finally:
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    if os.path.exists(RAM):
        os.remove(RAM)
