# enforcerd %post. $1: how many enforcerd packages are installed now (1 install, 2 upgrade).
# install: enable and start enforcerd.service. With no profile in profiles.d the daemon
#   enforces nothing, so installing changes nothing until a signed profile is added.
# upgrade: restart the unit now that the new files are in place. It was not stopped before
#   the upgrade: the new daemon adopts the pinned programs and attaches its own before the old
#   ones are released, so enforcement has no gap.
# Without a running systemd (chroot, container) the unit is only enabled.

# The profile and key directories, empty (cargo-generate-rpm cannot package an empty
# directory). Root-writable only, world-readable like /etc/apparmor.d: the integrity of
# profiles rests on their signatures and on who can write here. An existing directory keeps
# the mode its operator gave it.
for d in /etc/enforcerd/profiles.d /etc/enforcerd/trusted.d; do
	[ -d "$d" ] || install -d -m 0755 "$d"
done

if [ "$1" -eq 1 ]; then
	if command -v systemctl >/dev/null 2>&1; then
		systemctl enable enforcerd.service >/dev/null 2>&1 || :
	fi
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || :
		systemctl start enforcerd.service || :
	fi
elif [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	systemctl try-restart enforcerd.service || :
fi
exit 0
