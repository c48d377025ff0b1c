#!/usr/bin/env python3
"""probe.py [DIR] [SETTLE_SECONDS] (as root) — what does headroom for growing a
running VM cost an idle pod (issue 22, in-place resize)? No msb code: it boots the
installed kernel and root disk (/var/lib/msb) under TCG as msb's VMM does (microvm,
tb-size=64, the balloon with free page reporting), to the agent's start (no host side
answers it), one variant at a time, waits SETTLE_SECONDS, and prints qemu's RSS, PSS
and the CPU it used while idle. Variants:
  base      -m 256 -smp 1                      (today: a fixed ceiling)
  mem-x2/x4 -m 512/1024, balloon target 256 MiB (memory headroom: deflate to grow)
  cpu-x2/x4 -smp 2/4 with maxcpus=1 on the kernel command line (vCPU headroom: online
            the others to grow; microvm has no CPU hotplug)
It stops every qemu it started before it exits."""
import json, os, socket, subprocess, sys, time

D = sys.argv[1] if len(sys.argv) > 1 else "/tmp/msb-headroomprobe"
SETTLE = int(sys.argv[2]) if len(sys.argv) > 2 else 25
K, R = "/var/lib/msb/vmlinux", "/var/lib/msb/rootfs.img"
os.makedirs(D, exist_ok=True)

def tsc_khz():
    for l in open("/proc/cpuinfo"):
        k, _, v = l.partition(":")
        if k.strip() == "cpu MHz":
            return int(float(v) * 1000)
    return 0

def qemu(name, mem, smp, extra_append=""):
    args = ["qemu-system-x86_64", "-machine", "microvm", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-m", str(mem), "-smp", str(smp), "-kernel", K,
            "-accel", "tcg,tb-size=64", "-cpu", "max",
            "-blockdev", json.dumps({"driver": "raw", "file": {"driver": "file", "filename": R, "read-only": True}, "node-name": "root", "read-only": True}),
            "-device", "virtio-blk-device,drive=root",
            "-append", f"console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={tsc_khz()} root=/dev/vda ro rootfstype=ext4 init=/init {extra_append}",
            "-serial", f"file:{D}/{name}.console",
            "-chardev", f"socket,id=agent,path={D}/{name}.agent,server=on,wait=off",
            "-device", "virtio-serial-device", "-device", "virtserialport,chardev=agent,name=msb.agent",
            "-device", "virtio-balloon-device,free-page-reporting=on",
            "-qmp", f"unix:{D}/{name}.qmp,server=on,wait=off"]
    p = subprocess.Popen(args, stdout=open(f"{D}/{name}.log", "w"), stderr=subprocess.STDOUT)
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

def mem(pid):
    rss = pss = 0
    for l in open(f"/proc/{pid}/smaps_rollup"):
        k, _, v = l.partition(":")
        if k == "Rss": rss = int(v.split()[0])
        if k == "Pss": pss = int(v.split()[0])
    return rss // 1024, pss // 1024

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def run(name, m, smp, append="", balloon=None):
    p, cmd = qemu(name, m, smp, append)
    try:
        time.sleep(8)  # boot to the agent's start
        if balloon:
            r = cmd("balloon", value=balloon << 20)
            assert "return" in r, r
        time.sleep(SETTLE)
        c0 = cpu(p.pid); time.sleep(10); c1 = cpu(p.pid)
        rss, pss = mem(p.pid)
        actual = cmd("query-balloon").get("return", {}).get("actual", 0) >> 20
        print(f"{name:8} -m {m:5} -smp {smp}: RSS {rss:4} MiB PSS {pss:4} MiB, guest RAM {actual} MiB, idle CPU {100 * (c1 - c0) / 10:.1f} %", flush=True)
    finally:
        p.kill(); p.wait()

run("base", 256, 1)
run("mem-x2", 512, 1, balloon=256)
run("mem-x4", 1024, 1, balloon=256)
run("cpu-x2", 256, 2, "maxcpus=1")
run("cpu-x4", 256, 4, "maxcpus=1")
