package specconv

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/msb-dev/msb/mounts"
	"github.com/msb-dev/msb/mounts/bootenv"
)

// recursiveForms are runc's recursive mount options msb honours
// (mount_setattr's AT_RECURSIVE forms of the flags).
var recursiveForms = map[string]bool{
	"rro": true, "rrw": true, "rnosuid": true, "rsuid": true, "rnoexec": true, "rexec": true, "rnodev": true, "rdev": true,
}

// BindOptions are the mount options msb honours on binds, as runc's
// features report lists them: flags, their recursive forms, propagation.
func BindOptions() []string {
	out := []string{"bind", "rbind", "ro", "rw", "nosuid", "suid", "noexec", "exec", "nodev", "dev",
		"private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"}
	for o := range recursiveForms {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

// notForDisk are options runc or the bind handles; the rest (noatime,
// data=ordered, nouuid, ...) describe the filesystem and go to the agent.
var notForDisk = map[string]bool{
	"ro": true, "rw": true, "nosuid": true, "suid": true, "noexec": true, "exec": true, "nodev": true, "dev": true,
	"bind": true, "rbind": true, "private": true, "rprivate": true, "slave": true, "rslave": true,
	"shared": true, "rshared": true, "unbindable": true, "runbindable": true, "defaults": true,
	"rro": true, "rrw": true, "rnosuid": true, "rsuid": true, "rnoexec": true, "rexec": true, "rnodev": true, "rdev": true,
}

// tagger hands out tags and refuses two keys with one tag, which would
// otherwise mount one share where another was meant.
type tagger map[string]string

func (t tagger) tag(key string) (string, error) {
	tag := mounts.Tag(key)
	if prev, ok := t[tag]; ok && prev != key {
		return "", fmt.Errorf("guest tag %q is shared by %q and %q (hash collision); rename one of the paths", tag, prev, key)
	}
	t[tag] = key
	return tag, nil
}

// convertMounts builds shares, staged files, disks, tmpfs and the guest
// spec's root and mounts. A host directory or file used by several mounts
// is shared once, read-only only if every use is; each container mount
// still gets its own ro flag on its guest bind.
func convertMounts(sb *VM, in Input) error {
	sharesDir, filesDir, disksDir, tmpfsDir := GuestSharesDir, GuestFilesDir, GuestDisksDir, GuestTmpfsDir
	if in.podMode() {
		sharesDir, filesDir, tmpfsDir = path.Join(in.GuestDir, "shares"), path.Join(in.GuestDir, "files"), path.Join(in.GuestDir, "tmpfs")
	}
	tags := tagger{}
	rootTag, err := tags.tag("rootfs:" + in.ContainerID)
	if err != nil {
		return err
	}
	// The rootfs is shared read-write even when root.readonly is set: runc
	// in the guest must create mount points in it before it remounts the
	// container's root read-only, exactly as runc does on a host (ADR 004).
	rootGuest := path.Join(sharesDir, rootTag)
	sb.Shares = append(sb.Shares, mounts.Share{Tag: rootTag, HostPath: in.RootfsHostPath})
	sb.Boot.DirMounts = append(sb.Boot.DirMounts, bootenv.DirMount{Tag: rootTag, GuestPath: rootGuest})
	sb.GuestSpec.Root.Path = rootGuest

	shareIdx := map[string]int{} // tag -> index in sb.Shares
	dirIdx := map[string]int{}   // tag -> index in sb.Boot.DirMounts
	fileIdx := map[string]int{}  // tag -> index in sb.Files
	diskIdx := map[string]int{}  // tag -> index in sb.Disks
	diskFirst := map[string]int{}
	podTmpfs := map[string]bool{} // tag -> in sb.Boot.PodTmpfs
	var guestMounts []specs.Mount
	for _, m := range in.Mounts {
		field := fmt.Sprintf("mounts[%d]", m.Index)
		var src string
		// hostRO: the host bind's top mount carries "ro" (a pod member's
		// volume whose submounts keep their access), so the guest must not
		// remount it read-only: in the guest the pod share is one
		// filesystem, and that would cover the submounts too.
		hostRO := false
		switch m.Kind {
		case mounts.KindSpecial:
			guestMounts = append(guestMounts, sb.GuestSpec.Mounts[m.Index])
			continue
		case mounts.KindBindDir:
			if m.IDMap != nil && !in.podMode() {
				return fmt.Errorf("%s: an id-mapped directory bind is made only for a container that joins its pod's VM; a VM's own share is exported as it is: drop uidMappings/gidMappings", field)
			}
			tag, err := tags.tag("dir:" + m.Source + m.IDMap.Key())
			if err != nil {
				return fmt.Errorf("%s.source: %w", field, err)
			}
			// "ro" without "rro" on a recursive bind leaves the host
			// submounts as they are (runc); a pod member's bind can do so.
			top := m.ReadOnly && !slices.Contains(m.Options, "rro") && !slices.Contains(m.Options, "bind")
			propagated := slices.ContainsFunc(m.Options, mounts.IsPropagated)
			if i, ok := shareIdx[tag]; ok {
				sb.Shares[i].ReadOnly = sb.Shares[i].ReadOnly && m.ReadOnly
				sb.Shares[i].ReadOnlyTop = sb.Shares[i].ReadOnlyTop && top
				sb.Shares[i].Propagated = sb.Shares[i].Propagated || propagated
				sb.Boot.DirMounts[dirIdx[tag]].ReadOnly = sb.Shares[i].ReadOnly
			} else {
				shareIdx[tag] = len(sb.Shares)
				dirIdx[tag] = len(sb.Boot.DirMounts)
				sb.Shares = append(sb.Shares, mounts.Share{Tag: tag, HostPath: m.Source, ReadOnly: m.ReadOnly, ReadOnlyTop: top, IDMap: m.IDMap, Propagated: propagated})
				sb.Boot.DirMounts = append(sb.Boot.DirMounts, bootenv.DirMount{Tag: tag, GuestPath: path.Join(sharesDir, tag), ReadOnly: m.ReadOnly})
			}
			src = path.Join(sharesDir, tag)
			if hostRO = in.podMode() && sb.Shares[shareIdx[tag]].ReadOnlyTop; hostRO {
				sb.Boot.DirMounts[dirIdx[tag]].ReadOnly = false
			}
		case mounts.KindBindFile:
			if !filepath.IsAbs(in.StageDir) {
				return fmt.Errorf("%s: single-file bind needs an absolute stage dir, got %q", field, in.StageDir)
			}
			tag, err := tags.tag("file:" + m.Source + m.IDMap.Key())
			if err != nil {
				return fmt.Errorf("%s.source: %w", field, err)
			}
			name := filepath.Base(m.Source)
			if i, ok := fileIdx[tag]; ok {
				f := &sb.Files[i]
				f.ReadOnly = f.ReadOnly && m.ReadOnly
				sb.Shares[shareIdx[tag]].ReadOnly = f.ReadOnly
				sb.Boot.FileMounts[i].ReadOnly = f.ReadOnly
			} else {
				dir := filepath.Join(in.StageDir, tag)
				fileIdx[tag] = len(sb.Files)
				shareIdx[tag] = len(sb.Shares)
				sb.Files = append(sb.Files, mounts.FileStage{Source: m.Source, Dir: dir, Name: name, ReadOnly: m.ReadOnly, IDMap: m.IDMap})
				// MultiDevs: a read-write file is staged by a bind mount
				// from any filesystem (mounts.Prepare).
				sh := mounts.Share{Tag: tag, HostPath: dir, ReadOnly: m.ReadOnly, MultiDevs: true}
				if m.IDMap != nil {
					sh.IDMappedFile = name
				}
				sb.Shares = append(sb.Shares, sh)
				sb.Boot.FileMounts = append(sb.Boot.FileMounts, bootenv.FileMount{Tag: tag, Name: name, GuestPath: path.Join(filesDir, tag), ReadOnly: m.ReadOnly})
			}
			src = path.Join(filesDir, tag, name)
		case mounts.KindBlock:
			if in.podMode() {
				return fmt.Errorf("%s: disk %s: a container that joins its pod's VM cannot attach disks (nothing can be hot-plugged); give the disk to the pod's sandbox container", field, m.Source)
			}
			tag, err := tags.tag("disk:" + m.Source)
			if err != nil {
				return fmt.Errorf("%s.source: %w", field, err)
			}
			opts := diskOptions(m.Options)
			if i, ok := diskIdx[tag]; ok {
				d, dm := &sb.Disks[i], &sb.Boot.DiskMounts[i]
				if d.Format != m.Format || dm.FSType != m.FSType || !slices.Equal(dm.Options, opts) {
					return fmt.Errorf("%s: same disk %s as mounts[%d] but with another type, format or options; a disk is attached once, so use the same ones", field, m.Source, diskFirst[tag])
				}
				d.ReadOnly = d.ReadOnly && m.ReadOnly
				dm.ReadOnly = d.ReadOnly
			} else {
				diskIdx[tag] = len(sb.Disks)
				diskFirst[tag] = m.Index
				sb.Disks = append(sb.Disks, mounts.Disk{Tag: tag, Path: m.Source, Format: m.Format, ReadOnly: m.ReadOnly})
				sb.Boot.DiskMounts = append(sb.Boot.DiskMounts, bootenv.DiskMount{Tag: tag, GuestPath: path.Join(disksDir, tag), FSType: m.FSType, ReadOnly: m.ReadOnly, Options: opts})
			}
			src = path.Join(disksDir, tag)
		case mounts.KindTmpfs:
			// The index makes the key unique even for two tmpfs on one
			// destination: each is its own filesystem.
			tag, err := tags.tag("tmpfs:" + strconv.Itoa(m.Index) + ":" + m.Destination)
			if err != nil {
				return fmt.Errorf("%s.destination: %w", field, err)
			}
			src = path.Join(tmpfsDir, tag)
			sb.Boot.Tmpfs = append(sb.Boot.Tmpfs, bootenv.Tmpfs{GuestPath: src, SizeBytes: m.SizeBytes, Mode: m.Mode, Options: slices.Clone(m.Flags)})
		case mounts.KindPodTmpfs:
			if !in.podMode() {
				return fmt.Errorf("%s: %s: a pod tmpfs is made only for a container that joins its pod's VM", field, m.Source)
			}
			// Keyed by the emptyDir's host path (pod uid and volume name):
			// every container of the pod that mounts it gets the same one.
			tag, err := tags.tag("podtmpfs:" + m.Source)
			if err != nil {
				return fmt.Errorf("%s.source: %w", field, err)
			}
			src = path.Join(GuestPodTmpfsDir, tag)
			if !podTmpfs[tag] {
				podTmpfs[tag] = true
				sb.Boot.PodTmpfs = append(sb.Boot.PodTmpfs, bootenv.Tmpfs{GuestPath: src, SizeBytes: m.SizeBytes, Mode: m.Mode})
			}
		default:
			return fmt.Errorf("%s: unclassified mount kind %v; pass mounts.Classify's result", field, m.Kind)
		}
		opts := guestBindOptions(m)
		if hostRO {
			opts = slices.DeleteFunc(opts, func(o string) bool { return o == "ro" })
		}
		guestMounts = append(guestMounts, specs.Mount{
			Destination: m.Destination,
			Type:        "bind",
			Source:      src,
			Options:     opts,
		})
	}
	sb.GuestSpec.Mounts = guestMounts
	return nil
}

// guestBindOptions returns rbind plus the effective ro, noexec, nosuid and
// nodev of the mount (a later rw cancels an earlier ro, as with mount(8));
// runc applies them to the bind in the guest.
func guestBindOptions(m mounts.Mount) []string {
	opts := []string{"rbind"}
	if m.Kind == mounts.KindTmpfs {
		return append(opts, m.Flags...)
	}
	state := map[string]bool{}
	for _, o := range m.Options {
		// The recursive forms (rro, rnosuid, ...) mean the same for a bind
		// of a share, which has no submounts in the guest.
		if recursiveForms[o] {
			o = o[1:]
		}
		switch o {
		case "ro", "nosuid", "noexec", "nodev":
			state[o] = true
		case "rw":
			state["ro"] = false
		case "suid":
			state["nosuid"] = false
		case "exec":
			state["noexec"] = false
		case "dev":
			state["nodev"] = false
		}
	}
	for _, f := range bootenv.TmpfsFlags { // ro, noexec, nosuid, nodev
		if state[f] {
			opts = append(opts, f)
		}
	}
	return opts
}

func diskOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		if !notForDisk[o] {
			out = append(out, o)
		}
	}
	return out
}
