#!/bin/sh
# Boots one testbed machine: systemd as PID 1 of new namespaces (see ../testbed.rs).
#
#   boot.sh host DIR NETNS HOSTNAME CGROUP_PROCS...   (run on the host by the testbed)
#   boot.sh machine DIR HOSTNAME                      (run by stage "host" in the new namespaces)
#
# DIR is the machine's directory on the host: machine-id, hostname, etc-flotilla/,
# var-lib-flotilla/, log/, units/ (unit files and masks copied to /run/systemd/system) and, with
# an agent, dbus-system.d/ (bus policies added to the machine's /etc/dbus-1/system.d).
set -eu
stage=$1
shift
case "$stage" in
host)
	dir=$1 netns=$2 name=$3
	shift 3
	# Join the machine's own cgroup in every hierarchy first: the cgroup namespace made below is
	# rooted there, so each machine's systemd manages its own subtree and no other.
	for procs in "$@"; do
		echo $$ >"$procs"
	done
	exec ip netns exec "$netns" \
		unshare --pid --mount --uts --ipc --cgroup --fork --mount-proc --kill-child \
		sh "$0" machine "$dir" "$name"
	;;
machine)
	dir=$1 name=$2
	# The mount namespace is a private copy of the host's: nothing mounted here reaches the host.
	# Drop the copies of the host's network namespace handles (they would pin other namespaces).
	umount -l /run/netns 2>/dev/null || true
	mount --bind "$dir/machine-id" /etc/machine-id
	mount --bind "$dir/hostname" /etc/hostname
	mount --bind "$dir/etc-flotilla" /etc/flotilla
	mount --bind "$dir/var-lib-flotilla" /var/lib/flotilla
	# The machine's own /var/log: its journal stays readable from the host after it stops.
	mount --bind "$dir/log" /var/log
	# A boot id of its own (the kernel's is the host's): journalctl -b tells its boots apart.
	cat /proc/sys/kernel/random/uuid >"$dir/boot_id"
	mount --bind "$dir/boot_id" /proc/sys/kernel/random/boot_id
	mkdir -p /var/log/journal
	# Host paths below /run, /tmp or /var/tmp the machine must still see (the build's target
	# directory when the checkout lives in /tmp; colon-separated in FLOTILLA_TESTBED_SHARE): held
	# aside in the machine's directory, bound back at the same path over the tmpfs mounts below.
	ifs=$IFS
	IFS=:
	i=0
	for p in ${FLOTILLA_TESTBED_SHARE:-}; do
		i=$((i + 1))
		mkdir -p "$dir/held/$i"
		mount --bind "$p" "$dir/held/$i"
	done
	IFS=$ifs
	mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
	# systemd-tmpfiles removes /var/tmp/systemd-private-*: each machine needs its own /var/tmp.
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
	IFS=:
	i=0
	for p in ${FLOTILLA_TESTBED_SHARE:-}; do
		i=$((i + 1))
		mkdir -p "$p"
		mount --bind "$dir/held/$i" "$p"
	done
	IFS=$ifs
	mkdir -p /run/systemd/system /run/systemd/journald.conf.d
	# Bus policies of its own (the agent's): the host's /etc/dbus-1/system.d plus the machine's
	# dbus-system.d/, copied into its /run and bind-mounted over /etc/dbus-1/system.d here only.
	if [ -d "$dir/dbus-system.d" ] && [ -d /etc/dbus-1/system.d ]; then
		mkdir -p /run/flotilla-testbed/dbus-system.d
		cp -a /etc/dbus-1/system.d/. /run/flotilla-testbed/dbus-system.d/
		cp -a "$dir/dbus-system.d/." /run/flotilla-testbed/dbus-system.d/
		mount --bind /run/flotilla-testbed/dbus-system.d /etc/dbus-1/system.d
	fi
	cp -a "$dir/units/." /run/systemd/system/
	cp "$dir/journald.conf" /run/systemd/journald.conf.d/flotilla-testbed.conf
	hostname "$name"
	# Tells systemd it runs in a container: no clock, kernel module or reboot(2) business.
	export container=flotilla-testbed
	exec /lib/systemd/systemd --system --unit=flotilla-testbed.target
	;;
*)
	echo "boot.sh: unknown stage $stage" >&2
	exit 2
	;;
esac
