# hack/containerd-config.sh — sourced, not run: adds the msb runtime entry
# (CRI runtime handler "msb") to a containerd config without clobbering it.
# Shared by install.sh (this machine) and deploy/node-install.sh (a node, from
# the installer image, where busybox sh runs it): POSIX sh plus `local`.
#
# The caller defines:
#   die MSG...            print MSG and exit non-zero
#   ctdcfg_containerd ARG...  run the node's containerd binary (install.sh: the
#                         binary on PATH; node-install.sh: through the host)
#   ctdcfg_bin            that binary's name in messages
# and reads ctdcfg_changed (1 once a call changed the config).

ctdcfg_changed=0

# ctdcfg_version FILE: the config's version: the top-level version key
# (before the first table); 1 without one (containerd 1.x); for a missing
# file, the version `containerd config default` writes (2 if unknown).
ctdcfg_version() {
	local ver
	if [ ! -e "$1" ]; then
		ver=$(ctdcfg_containerd config default 2>/dev/null | awk -F' *= *' '/^version/ {print $2; exit}')
		case $ver in '' | *[!0-9]*) ver=2 ;; esac
	else
		ver=$(awk -F'=' '/^[[:space:]]*\[/ {exit} /^[[:space:]]*version[[:space:]]*=/ {gsub(/[^0-9]/, "", $2); print $2; exit}' "$1")
		ver=${ver:-1} # no version key: containerd 1.x's version 1
	fi
	echo "$ver"
}

# ctdcfg_table VER: the runtime's table in the plugin naming of VER.
ctdcfg_table() {
	case $1 in
	1) echo '[plugins.cri.containerd.runtimes.msb]' ;;
	2) echo '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.msb]' ;;
	*) echo "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.msb]" ;;
	esac
}

# ctdcfg_entry VER BY: the entry, with a comment naming BY (who added it).
# privileged_without_host_devices: containerd hands a privileged container
# every host device node, which mean nothing in a VM (msb refuses them);
# with it, privileged pods run in their VM without the host's devices.
ctdcfg_entry() {
	printf '# added by %s: CRI runtime handler "msb" (ctr uses --runtime io.containerd.msb.v2)\n%s\n  runtime_type = '"'"'io.containerd.msb.v2'"'"'\n  # a privileged container gets no host device nodes: they mean nothing in a VM\n  privileged_without_host_devices = true\n' "$2" "$(ctdcfg_table "$1")"
}

# ctdcfg_add FILE CTDFILE BACKUP BY: add the entry to FILE, the config
# containerd reads as CTDFILE (the same path, unless FILE is seen through a
# mount of the node's root): write a minimal config in the version this
# containerd writes by default when there is none; leave a config that
# already names the runtime as it is; else append the entry, keeping the
# previous file as BACKUP, and put that back if containerd rejects the result.
ctdcfg_add() {
	local file=$1 ctdfile=$2 backup=$3 by=$4 ver table entry valid err
	ver=$(ctdcfg_version "$file")
	table=$(ctdcfg_table "$ver")
	entry=$(ctdcfg_entry "$ver" "$by")
	if [ ! -e "$file" ]; then
		mkdir -p "$(dirname "$file")"
		printf '# containerd config written by %s (containerd config default shows all settings)\nversion = %s\n\n%s\n' "$by" "$ver" "$entry" >"$file"
		echo "wrote $ctdfile (config version $ver)"
		ctdcfg_changed=1
	elif grep -q 'io\.containerd\.msb\.v2' "$file"; then
		echo "$ctdfile (config version $ver) already has the msb runtime: left as it is"
	else
		valid=1
		ctdcfg_containerd --config "$ctdfile" config dump >/dev/null 2>&1 || valid=0
		[ "$valid" = 1 ] || echo "warning: $ctdcfg_bin already rejects $ctdfile: appending the msb entry anyway"
		cp -p "$file" "$backup"
		printf '\n%s\n' "$entry" >>"$file"
		if [ "$valid" = 1 ] && ! err=$(ctdcfg_containerd --config "$ctdfile" config dump 2>&1 >/dev/null); then
			mv "$backup" "$file"
			die "containerd rejects $ctdfile with the msb entry appended (${err##*msg=}); left the file as it was: add by hand $table with runtime_type = 'io.containerd.msb.v2'"
		fi
		echo "added $table to $ctdfile (config version $ver; previous file kept as $backup)"
		ctdcfg_changed=1
	fi
	if grep -Eq '^[[:space:]]*disabled_plugins[[:space:]]*=.*cri' "$file"; then
		echo "note: CRI is disabled in $ctdfile; the entry only matters to CRI (Kubernetes), ctr works without it"
	fi
}

# msbcfg_default LIBDIR: the /etc/msb/config.toml written where there is
# none, for a guest image in LIBDIR (docs/configuration.md).
msbcfg_default() {
	cat <<TOML
# msb configuration (see docs/configuration.md)
backend = "auto"
kernel = "$1/vmlinux"
initrd = "$1/initrd.cpio"
guest_root = "$1/krunroot"
qemu = "qemu-system-x86_64"
vcpus = 1
memory_mib = 256
overhead_mib = 128
boot_timeout = "2m"
TOML
}
