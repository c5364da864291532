# enforcerd %preun. $1: how many enforcerd packages remain (0 erase, 1 upgrade).
# erase: stop and disable enforcerd.service, then `enforcerd detach`, so that no BPF programs
#   stay pinned and enforcing once their binary is gone. A daemon that still answers on its
#   socket (started by hand, or systemd is not running) makes detach refuse: the erase then
#   fails, with a message, rather than leave a daemon without its package.
# upgrade: nothing; the unit keeps running and the new package's %post restarts it.
if [ "$1" -eq 0 ]; then
	if [ -d /run/systemd/system ]; then
		systemctl stop enforcerd.service || :
	fi
	if command -v systemctl >/dev/null 2>&1; then
		systemctl --no-reload disable enforcerd.service >/dev/null 2>&1 || :
	fi
	rc=0
	/usr/bin/enforcerd detach || rc=$?
	case $rc in
	0) ;;
	1)
		echo "enforcerd: a daemon is still running; stop it, then erase the package again" >&2
		exit 1
		;;
	*)
		# No BPF filesystem or no permission (e.g. a container): nothing this script can do.
		echo "enforcerd: warning: could not unpin /sys/fs/bpf/enforcerd (exit $rc);" \
			"remove it by hand to stop enforcement: rm -r /sys/fs/bpf/enforcerd" >&2
		;;
	esac
fi
exit 0
